"""Canonical (OpenAI Chat Completions) ⇄ Anthropic Messages: pure, typed conversions.

Request: system and developer messages, in order, become the top-level ``system`` blocks; runs of
one role are merged into one turn (tool results are user turns, their ``tool_result`` blocks first);
empty text is never sent; assistant tool calls become ``tool_use`` blocks whose ``input`` is the
parsed arguments (``""`` → ``{}``); thinking blocks come back first in their assistant turn,
verbatim. Answer: text blocks → ``content``, thinking → ``reasoning_content`` + ``thinking_blocks``,
``tool_use`` → ``tool_calls``; usage in OpenAI's terms (prompt = input + cache read + cache write).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from types import MappingProxyType
from typing import Any

from llmrelay.core.catalogue import ModelEntry
from llmrelay.core.errors import InvalidRequest, UnsupportedParameter
from llmrelay.core.types import ChatRequest, FinishReason, JSONObject, Usage
from llmrelay.providers.canonical import (
    DEFAULT_MAX_TOKENS,
    REASONING_CONTENT,
    THINKING_BLOCKS,
    arguments_text,
    audio_data,
    content_text,
    file_data,
    image_url,
    max_output_tokens,
    parse_arguments,
    parse_data_url,
    passthrough_fields,
    reasoning_budget,
    stop_sequences,
)

PROVIDER = "anthropic"
IMAGE_TYPES = frozenset({"image/jpeg", "image/png", "image/gif", "image/webp"})
MIN_THINKING_BUDGET = 1024
MAX_TEMPERATURE = 1.0

STOP_REASONS: Mapping[str, FinishReason] = MappingProxyType(
    {
        "end_turn": "stop",
        "stop_sequence": "stop",
        "pause_turn": "stop",
        "max_tokens": "length",
        "model_context_window_exceeded": "length",
        "tool_use": "tool_calls",
        "refusal": "content_filter",
    }
)
_TOOL_ID = re.compile(r"[^a-zA-Z0-9_-]")


# -- request ------------------------------------------------------------------------------------


def request_to_wire(request: ChatRequest, model: ModelEntry, *, stream: bool) -> JSONObject:
    """The Messages API body for ``request``; raises 400s for what cannot be expressed."""
    body = request.body
    system, messages = messages_to_wire(request.messages)
    wire: JSONObject = {"model": model.upstream, "messages": messages}
    if system:
        wire["system"] = system
    cap = max_output_tokens(body)
    budget = reasoning_budget(body)
    if cap is None:
        cap = model.max_output_tokens or max(DEFAULT_MAX_TOKENS, (budget or 0) + DEFAULT_MAX_TOKENS)
    wire["max_tokens"] = cap
    if budget:
        wire["thinking"] = {"type": "enabled", "budget_tokens": _thinking_budget(budget, cap)}
    stops = stop_sequences(body)
    if stops:
        if any(not s.strip() for s in stops):
            raise UnsupportedParameter(
                "a whitespace-only 'stop' sequence is not supported by provider type 'anthropic'",
                param="stop",
            )
        wire["stop_sequences"] = stops
    temperature = body.get("temperature")
    if isinstance(temperature, int | float):
        # OpenAI's scale runs to 2, Anthropic's to 1; both ends mean the same thing, so a hotter
        # request gets Anthropic's hottest rather than a 400 that would also defeat fallbacks.
        wire["temperature"] = min(float(temperature), MAX_TEMPERATURE)
    if isinstance(body.get("top_p"), int | float):
        wire["top_p"] = body["top_p"]
    tools = body.get("tools")
    if tools:
        wire["tools"] = [tool_to_wire(tool, f"tools[{i}]") for i, tool in enumerate(tools)]
        choice = tool_choice_to_wire(body.get("tool_choice"), body.get("parallel_tool_calls"))
        if choice is not None:
            wire["tool_choice"] = choice
    user = body.get("safety_identifier") or body.get("user")
    if isinstance(user, str) and user:
        wire["metadata"] = {"user_id": user}
    output_format = response_format_to_wire(body.get("response_format"))
    if output_format is not None:
        wire["output_config"] = {"format": output_format}
    if stream:
        wire["stream"] = True
    for name, value in passthrough_fields(body).items():
        if name == "output_config" and isinstance(value, dict):
            wire["output_config"] = {**value, **wire.get("output_config", {})}
        else:
            wire.setdefault(name, value)
    return wire


def _thinking_budget(budget: int, cap: int) -> int:
    # The budget counts inside max_tokens and must stay below it (OpenAI's cap includes reasoning).
    budget = min(budget, cap - 1)
    if budget < MIN_THINKING_BUDGET:
        raise UnsupportedParameter(
            f"'reasoning_effort' needs a token cap above {MIN_THINKING_BUDGET} on provider type "
            f"'anthropic' (its smallest thinking budget); raise max_completion_tokens",
            param="reasoning_effort",
        )
    return budget


def messages_to_wire(messages: list[JSONObject]) -> tuple[list[JSONObject], list[JSONObject]]:
    """``(system blocks, turns)``: roles alternate, each turn has at least one block."""
    system: list[JSONObject] = []
    turns: list[JSONObject] = []
    for i, message in enumerate(messages):
        role = message.get("role")
        param = f"messages[{i}]"
        content = message.get("content")
        if role in ("system", "developer"):
            system.extend(_system_blocks(content, param))
            continue
        if role == "user":
            wire_role, blocks = "user", _user_blocks(content, param)
        elif role == "tool":
            wire_role, blocks = "user", [_tool_result(message, param)]
        elif role == "assistant":
            wire_role, blocks = "assistant", _assistant_blocks(message, param)
        else:
            raise UnsupportedParameter(
                f"the legacy '{role}' role is not supported by provider type 'anthropic'; "
                "use tool_calls and tool messages",
                param=f"{param}.role",
            )
        if not blocks:
            continue
        if turns and turns[-1]["role"] == wire_role:
            turns[-1]["content"].extend(blocks)
        else:
            turns.append({"role": wire_role, "content": blocks})
    for turn in turns:
        if turn["role"] == "user":
            # Anthropic wants a turn's tool results before anything else in it.
            turn["content"].sort(key=lambda block: block["type"] != "tool_result")
    if turns and turns[-1]["role"] == "assistant":
        _trim_prefill(turns[-1]["content"])
    return system, turns


def _trim_prefill(blocks: list[JSONObject]) -> None:
    # A final assistant turn is a prefill, which Anthropic refuses when it ends in whitespace.
    last = blocks[-1]
    if last["type"] == "text":
        last["text"] = last["text"].rstrip()
        if not last["text"]:
            blocks.pop()


def _text_block(text: str, part: JSONObject | None = None) -> JSONObject:
    block: JSONObject = {"type": "text", "text": text}
    if part is not None and isinstance(part.get("cache_control"), dict):
        block["cache_control"] = part["cache_control"]
    return block


def _system_blocks(content: Any, param: str) -> list[JSONObject]:
    if isinstance(content, str):
        return [_text_block(content)] if content else []
    blocks = []
    for j, part in enumerate(content or ()):
        if part.get("type") != "text":
            raise UnsupportedParameter(
                f"'{param}.content[{j}]': only text parts are supported in system messages by "
                "provider type 'anthropic'",
                param=f"{param}.content[{j}]",
            )
        if part.get("text"):
            blocks.append(_text_block(part["text"], part))
    return blocks


def _user_blocks(content: Any, param: str) -> list[JSONObject]:
    if isinstance(content, str):
        return [_text_block(content)] if content else []
    blocks: list[JSONObject] = []
    for j, part in enumerate(content or ()):
        where = f"{param}.content[{j}]"
        kind = part.get("type")
        if kind in ("text", "refusal"):
            text = content_text([part])
            if text:
                blocks.append(_text_block(text, part))
        elif kind == "image_url":
            blocks.append(_image_block(part, where))
        elif kind == "file":
            blocks.append(_document_block(part, where))
        elif kind == "input_audio":
            audio_data(part, where)  # a malformed part is the client's 400 before anything else
            raise UnsupportedParameter(
                f"an audio part is not supported by provider type 'anthropic' ('{where}')",
                param=where,
            )
    return blocks


def _image_block(part: JSONObject, param: str) -> JSONObject:
    url = image_url(part, param)
    if url.startswith("data:"):
        mime, data = parse_data_url(url, f"{param}.image_url.url")
        if mime not in IMAGE_TYPES:
            raise UnsupportedParameter(
                f"image type {mime!r} is not supported by provider type 'anthropic' (send "
                f"{', '.join(sorted(IMAGE_TYPES))})",
                param=f"{param}.image_url.url",
            )
        source: JSONObject = {"type": "base64", "media_type": mime, "data": data}
    elif url.startswith(("https://", "http://")):
        source = {"type": "url", "url": url}
    else:
        raise InvalidRequest(
            f"'{param}.image_url.url' must be an http(s) or data: URL", param=f"{param}.image_url"
        )
    block: JSONObject = {"type": "image", "source": source}
    if isinstance(part.get("cache_control"), dict):
        block["cache_control"] = part["cache_control"]
    return block


def _document_block(part: JSONObject, param: str) -> JSONObject:
    mime, data = file_data(part, param)
    if mime == "application/pdf":
        source: JSONObject = {"type": "base64", "media_type": mime, "data": data}
    else:
        raise UnsupportedParameter(
            f"file type {mime!r} is not supported by provider type 'anthropic' (send a PDF)",
            param=f"{param}.file",
        )
    return {"type": "document", "source": source}


def _tool_id(call_id: str) -> str:
    # Anthropic ids match ^[a-zA-Z0-9_-]+$; ids minted elsewhere are made to, the same way in the
    # tool_use and in its tool_result so the two still pair.
    return _TOOL_ID.sub("_", call_id) or "call"


def _tool_result(message: JSONObject, param: str) -> JSONObject:
    block: JSONObject = {"type": "tool_result", "tool_use_id": _tool_id(message["tool_call_id"])}
    text = content_text(message.get("content"))
    if text:
        block["content"] = text
    return block


def _assistant_blocks(message: JSONObject, param: str) -> list[JSONObject]:
    blocks: list[JSONObject] = []
    for block in message.get(THINKING_BLOCKS) or ():
        if not isinstance(block, dict):
            continue
        if block.get("type") == "thinking" and block.get("signature"):
            blocks.append(
                {
                    "type": "thinking",
                    "thinking": block.get("thinking") or "",
                    "signature": block["signature"],
                }
            )
        elif block.get("type") == "redacted_thinking" and block.get("data"):
            blocks.append({"type": "redacted_thinking", "data": block["data"]})
    content = message.get("content")
    if isinstance(content, str):
        if content:
            blocks.append(_text_block(content))
    elif isinstance(content, list):
        for part in content:
            text = content_text([part])
            if text:
                blocks.append(_text_block(text, part))
    for j, call in enumerate(message.get("tool_calls") or ()):
        function = call.get("function") or {}
        where = f"{param}.tool_calls[{j}].function.arguments"
        blocks.append(
            {
                "type": "tool_use",
                "id": _tool_id(str(call.get("id") or f"call_{j}")),
                "name": function.get("name"),
                "input": parse_arguments(function.get("arguments"), where),
            }
        )
    return blocks


def tool_to_wire(tool: JSONObject, param: str) -> JSONObject:
    if tool.get("type") != "function":
        raise UnsupportedParameter(
            f"tools of type {tool.get('type')!r} are not supported by provider type 'anthropic'",
            param=param,
        )
    function = tool["function"]
    schema = function.get("parameters") or {"type": "object", "properties": {}}
    wire: JSONObject = {"name": function["name"], "input_schema": schema}
    if function.get("description"):
        wire["description"] = function["description"]
    if function.get("strict") is True:
        wire["strict"] = True
    cache_control = tool.get("cache_control") or function.get("cache_control")
    if isinstance(cache_control, dict):
        wire["cache_control"] = cache_control
    return wire


def tool_choice_to_wire(choice: Any, parallel: Any) -> JSONObject | None:
    if choice is None or choice == "auto":
        wire: JSONObject = {"type": "auto"}
    elif choice == "none":
        return {"type": "none"}
    elif choice == "required":
        wire = {"type": "any"}
    elif isinstance(choice, dict) and choice.get("type") == "function":
        wire = {"type": "tool", "name": (choice.get("function") or {}).get("name")}
    else:
        raise UnsupportedParameter(
            "this 'tool_choice' is not supported by provider type 'anthropic' (use auto, none, "
            "required or a named function)",
            param="tool_choice",
        )
    if parallel is False:
        wire["disable_parallel_tool_use"] = True
    elif choice is None:
        return None  # Anthropic's default is auto: send nothing the client did not ask for
    return wire


def response_format_to_wire(response_format: Any) -> JSONObject | None:
    """``json_schema`` → ``output_config.format`` (json_object was refused by the capabilities)."""
    if not isinstance(response_format, dict) or response_format.get("type") != "json_schema":
        return None
    spec = response_format.get("json_schema")
    schema = spec.get("schema") if isinstance(spec, dict) else None
    if not isinstance(schema, dict):
        raise InvalidRequest(
            "'response_format.json_schema.schema' must be an object",
            param="response_format.json_schema.schema",
        )
    return {"type": "json_schema", "schema": schema}


# -- answer -------------------------------------------------------------------------------------


def finish_reason(stop_reason: Any) -> FinishReason:
    return STOP_REASONS.get(stop_reason, "stop") if isinstance(stop_reason, str) else "stop"


def usage_from_wire(usage: JSONObject) -> Usage:
    """Anthropic's ``input_tokens`` excludes cache reads and writes; OpenAI's prompt has both."""
    read = int(usage.get("cache_read_input_tokens") or 0)
    written = int(usage.get("cache_creation_input_tokens") or 0)
    details = usage.get("output_tokens_details") or {}
    return Usage(
        prompt_tokens=int(usage.get("input_tokens") or 0) + read + written,
        completion_tokens=int(usage.get("output_tokens") or 0),
        cached_tokens=read,
        reasoning_tokens=int(details.get("thinking_tokens") or 0),
        cache_write_tokens=written,
    )


def message_from_wire(blocks: list[JSONObject]) -> JSONObject:
    """The content blocks of an answer as one canonical assistant message."""
    texts: list[str] = []
    reasoning: list[str] = []
    thinking: list[JSONObject] = []
    calls: list[JSONObject] = []
    for block in blocks:
        kind = block.get("type")
        if kind == "text":
            texts.append(block.get("text") or "")
        elif kind == "thinking":
            reasoning.append(block.get("thinking") or "")
            thinking.append(
                {
                    "type": "thinking",
                    "thinking": block.get("thinking") or "",
                    "signature": block.get("signature") or "",
                }
            )
        elif kind == "redacted_thinking":
            thinking.append({"type": "redacted_thinking", "data": block.get("data") or ""})
        elif kind == "tool_use":
            calls.append(
                {
                    "id": block.get("id"),
                    "type": "function",
                    "function": {
                        "name": block.get("name"),
                        "arguments": arguments_text(block.get("input")),
                    },
                }
            )
        # Server-tool blocks (web search results...) have no place in the canonical format.
    message: JSONObject = {
        "role": "assistant",
        "content": "".join(texts) if texts or not calls else None,
    }
    if calls:
        message["tool_calls"] = calls
    if reasoning:
        message[REASONING_CONTENT] = "".join(reasoning)
    if thinking:
        message[THINKING_BLOCKS] = thinking
    return message
