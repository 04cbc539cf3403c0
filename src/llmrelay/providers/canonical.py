"""Reading and writing the canonical (OpenAI-shaped) side, for providers that translate.

Anthropic and Gemini read the same request fields and write the same completion and chunk shapes;
this module holds those shared, pure pieces so each provider module keeps only its own wire format.

Extension fields (documented in docs/providers.md) carry what OpenAI's format has no place for, so
it survives a round trip through a client:

- ``message.reasoning_content`` / ``delta.reasoning_content``: reasoning text (never in content).
- ``message.thinking_blocks``: Anthropic thinking blocks, ``{"type": "thinking", "thinking",
  "signature"}`` or ``{"type": "redacted_thinking", "data"}``, replayed verbatim on the next turn;
  streamed as whole blocks in ``delta.thinking_blocks`` with an ``index`` (the OpenAI SDK's
  accumulator merges list entries by index).
- ``tool_calls[].extra_content.google.thought_signature`` and
  ``message.extra_content.google.thought_signature``: Gemini thought signatures (the names Google's
  own OpenAI-compatible endpoint uses).
"""

from __future__ import annotations

import base64
import binascii
from collections.abc import Mapping
from types import MappingProxyType
from typing import Any
from urllib.parse import unquote_to_bytes

import orjson

from llmrelay.core.errors import InvalidRequest
from llmrelay.core.types import FinishReason, JSONObject, Usage

REASONING_CONTENT = "reasoning_content"
THINKING_BLOCKS = "thinking_blocks"
EXTRA_CONTENT = "extra_content"
DEFAULT_MAX_TOKENS = 4096

# OpenAI's reasoning_effort as a thinking budget in tokens, for providers that take a budget.
# Anthropic's minimum budget is 1024; "none" means no thinking at all.
REASONING_BUDGETS: Mapping[str, int] = MappingProxyType(
    {
        "none": 0,
        "minimal": 1024,
        "low": 1024,
        "medium": 4096,
        "high": 16384,
        "xhigh": 24576,
        "max": 32768,
    }
)


# -- reading the request ------------------------------------------------------------------------


def max_output_tokens(body: JSONObject) -> int | None:
    """``max_completion_tokens``, else ``max_tokens`` (both cap the whole output, reasoning too)."""
    for name in ("max_completion_tokens", "max_tokens"):
        value = body.get(name)
        if isinstance(value, int) and not isinstance(value, bool):
            return value
    return None


def stop_sequences(body: JSONObject) -> list[str]:
    stop = body.get("stop")
    if isinstance(stop, str):
        return [stop]
    if isinstance(stop, list):
        return [s for s in stop if isinstance(s, str)]
    return []


def reasoning_budget(body: JSONObject) -> int | None:
    """The thinking budget ``reasoning_effort`` asks for; None when the client did not ask."""
    effort = body.get("reasoning_effort")
    if effort is None:
        return None
    if effort not in REASONING_BUDGETS:
        raise InvalidRequest(
            f"'reasoning_effort' must be one of {', '.join(REASONING_BUDGETS)}",
            param="reasoning_effort",
        )
    return REASONING_BUDGETS[effort]


def content_text(content: Any) -> str:
    """The text of a content value: a string, or the ``text`` (and ``refusal``) parts of a list."""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "".join(
            str(part.get("text") or part.get("refusal") or "")
            for part in content
            if isinstance(part, dict) and part.get("type") in ("text", "refusal")
        )
    return ""


def parse_arguments(arguments: Any, param: str) -> JSONObject:
    """A tool call's ``function.arguments`` (a JSON string) as an object; ``""`` is ``{}``."""
    if isinstance(arguments, dict):
        return arguments
    if arguments is None or (isinstance(arguments, str) and not arguments.strip()):
        return {}
    if isinstance(arguments, str):
        try:
            parsed = orjson.loads(arguments)
        except orjson.JSONDecodeError:
            parsed = None
        if isinstance(parsed, dict):
            return parsed
    raise InvalidRequest(f"'{param}' must be a JSON object encoded as a string", param=param)


def tool_call_names(messages: list[JSONObject]) -> dict[str, tuple[str, int]]:
    """Each assistant tool call id → (function name, position within its assistant message)."""
    names: dict[str, tuple[str, int]] = {}
    for message in messages:
        if message.get("role") != "assistant":
            continue
        for position, call in enumerate(message.get("tool_calls") or ()):
            function = call.get("function") if isinstance(call, dict) else None
            if isinstance(function, dict) and isinstance(call.get("id"), str):
                names[call["id"]] = (str(function.get("name") or ""), position)
    return names


def parse_data_url(url: str, param: str) -> tuple[str, str]:
    """``data:<mime>[;base64],<payload>`` → ``(mime, base64 payload)``."""
    header, comma, payload = url.partition(",")
    if not comma or not header.startswith("data:"):
        raise InvalidRequest(f"'{param}' is not a valid data: URL", param=param)
    fields = header[5:].split(";")
    mime = fields[0].strip().lower() or "text/plain"
    if "base64" in (f.strip().lower() for f in fields[1:]):
        try:
            base64.b64decode(payload, validate=True)
        except (binascii.Error, ValueError):
            raise InvalidRequest(f"'{param}' has invalid base64 data", param=param) from None
        return mime, payload
    return mime, base64.b64encode(unquote_to_bytes(payload)).decode("ascii")


def image_url(part: JSONObject, param: str) -> str:
    source = part.get("image_url")
    url = source.get("url") if isinstance(source, dict) else source
    if not isinstance(url, str) or not url:
        raise InvalidRequest(f"'{param}.image_url.url' is required", param=f"{param}.image_url")
    return url


def audio_data(part: JSONObject, param: str) -> tuple[str, str]:
    """An ``input_audio`` part → ``(mime, base64 data)``."""
    audio = part.get("input_audio")
    data = audio.get("data") if isinstance(audio, dict) else None
    audio_format = audio.get("format") if isinstance(audio, dict) else None
    if not isinstance(data, str) or not isinstance(audio_format, str):
        raise InvalidRequest(
            f"'{param}.input_audio' needs 'data' and 'format'", param=f"{param}.input_audio"
        )
    return f"audio/{'mpeg' if audio_format == 'mp3' else audio_format}", data


def file_data(part: JSONObject, param: str) -> tuple[str, str]:
    """A ``file`` part sent inline (``file_data`` as a data: URL) → ``(mime, base64 data)``."""
    file = part.get("file")
    data = file.get("file_data") if isinstance(file, dict) else None
    if not isinstance(data, str):
        raise InvalidRequest(
            f"'{param}.file.file_data' is required (uploaded file ids cannot be forwarded)",
            param=f"{param}.file",
        )
    if data.startswith("data:"):
        return parse_data_url(data, f"{param}.file.file_data")
    return "application/pdf", data  # the OpenAI SDK's examples send bare base64 PDFs


# -- writing the answer -------------------------------------------------------------------------


def arguments_text(arguments: Any) -> str:
    """Tool input as OpenAI's JSON string; ``"{}"`` rather than ``""`` for no arguments."""
    if not arguments:
        return "{}"
    return orjson.dumps(arguments).decode()


def usage_payload(usage: Usage) -> JSONObject:
    """OpenAI's usage object, with ``cache_write_tokens`` when there were any (as OpenRouter)."""
    payload = usage.to_openai()
    if usage.cache_write_tokens:
        payload["prompt_tokens_details"]["cache_write_tokens"] = usage.cache_write_tokens
    return payload


def completion_body(
    response_id: str, model: str, created: int, choices: list[JSONObject], usage: Usage | None
) -> JSONObject:
    body: JSONObject = {
        "id": response_id,
        "object": "chat.completion",
        "created": created,
        "model": model,
        "choices": choices,
    }
    if usage is not None:
        body["usage"] = usage_payload(usage)
    return body


def choice(index: int, message: JSONObject, finish_reason: FinishReason) -> JSONObject:
    return {"index": index, "message": message, "finish_reason": finish_reason, "logprobs": None}


class ChunkFactory:
    """Builds the ``chat.completion.chunk`` dicts of one stream (one id, created and model)."""

    __slots__ = ("_base",)

    def __init__(self, response_id: str, model: str, created: int) -> None:
        self._base: JSONObject = {
            "id": response_id,
            "object": "chat.completion.chunk",
            "created": created,
            "model": model,
        }

    def delta(
        self, delta: JSONObject, *, index: int = 0, finish_reason: FinishReason | None = None
    ) -> JSONObject:
        return {
            **self._base,
            "choices": [{"index": index, "delta": delta, "finish_reason": finish_reason}],
        }

    def usage(self, usage: Usage) -> JSONObject:
        return {**self._base, "choices": [], "usage": usage_payload(usage)}


# Every field of OpenAI's Chat Completions request. A translating provider maps each one, ignores
# it (a hint with no effect on the answer) or refuses it; any other field is the client speaking
# the target provider's own dialect, and is passed through unchanged, as the contract says.
OPENAI_FIELDS = frozenset(
    {
        "audio",
        "frequency_penalty",
        "function_call",
        "functions",
        "logit_bias",
        "logprobs",
        "max_completion_tokens",
        "max_tokens",
        "messages",
        "metadata",
        "modalities",
        "model",
        "n",
        "parallel_tool_calls",
        "prediction",
        "presence_penalty",
        "prompt_cache_key",
        "prompt_cache_retention",
        "reasoning_effort",
        "response_format",
        "safety_identifier",
        "seed",
        "service_tier",
        "stop",
        "store",
        "stream",
        "stream_options",
        "temperature",
        "tool_choice",
        "tools",
        "top_logprobs",
        "top_p",
        "user",
        "verbosity",
        "web_search_options",
    }
)


def passthrough_fields(body: JSONObject) -> JSONObject:
    """The request's fields that are not OpenAI's: the target provider's own, sent unchanged."""
    return {name: value for name, value in body.items() if name not in OPENAI_FIELDS}
