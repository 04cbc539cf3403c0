"""Canonical answers → Gemini's ``GenerateContentResponse``: pure conversions shared by the whole
answer and the stream.

Parts: thoughts (``reasoning_content``, or an Anthropic upstream's signed ``thinking_blocks``, each
a thought part whose ``thoughtSignature`` carries its signature, see ``signatures``), the text,
then one ``functionCall`` part per tool call carrying the canonical tool-call id in ``id`` (so the
next turn's ``functionResponse`` maps back) and ``args`` parsed from the arguments (``""`` →
``{}``). A Gemini upstream's thought signatures go back on the parts they came with.
``finishReason`` STOP / MAX_TOKENS / SAFETY; ``usageMetadata`` with ``promptTokenCount`` including
cached tokens and ``candidatesTokenCount`` excluding thoughts, as Gemini counts.
"""

from __future__ import annotations

from typing import Any

import orjson

from llmrelay.api.signatures import anthropic_for_gemini
from llmrelay.core.types import JSONObject, Usage
from llmrelay.providers.canonical import EXTRA_CONTENT, REASONING_CONTENT, THINKING_BLOCKS

FINISH_REASONS = {
    "stop": "STOP",
    "tool_calls": "STOP",
    "function_call": "STOP",
    "length": "MAX_TOKENS",
    "content_filter": "SAFETY",
}


def usage_metadata(usage: Usage) -> JSONObject:
    """Gemini's counts: the prompt includes cached tokens, the candidates exclude thoughts."""
    metadata: JSONObject = {
        "promptTokenCount": usage.prompt_tokens,
        "candidatesTokenCount": max(0, usage.completion_tokens - usage.reasoning_tokens),
        "totalTokenCount": usage.prompt_tokens + usage.completion_tokens,
    }
    if usage.reasoning_tokens:
        metadata["thoughtsTokenCount"] = usage.reasoning_tokens
    if usage.cached_tokens:
        metadata["cachedContentTokenCount"] = usage.cached_tokens
    return metadata


def finish_reason(reason: Any) -> str:
    return FINISH_REASONS.get(reason, "STOP") if isinstance(reason, str) else "STOP"


def signature_of(holder: JSONObject) -> str | None:
    """A thought signature on the canonical ``extra_content.google`` extension."""
    extra = holder.get(EXTRA_CONTENT)
    google = extra.get("google") if isinstance(extra, dict) else None
    signature = google.get("thought_signature") if isinstance(google, dict) else None
    return signature if isinstance(signature, str) and signature else None


def thought_parts(blocks: Any) -> list[JSONObject]:
    """An Anthropic upstream's signed thinking blocks as signed thought parts."""
    parts = []
    for block in blocks if isinstance(blocks, list) else ():
        if isinstance(block, dict):
            text = block.get("thinking") if block.get("type") == "thinking" else ""
            signature = anthropic_for_gemini(block)
            parts.append({"text": text or "", "thought": True, "thoughtSignature": signature})
    return parts


def call_part(call_id: str, name: str, arguments: Any, signature: str | None) -> JSONObject:
    part: JSONObject = {"functionCall": {"id": call_id, "name": name, "args": _args(arguments)}}
    if signature is not None:
        part["thoughtSignature"] = signature
    return part


def _args(arguments: Any) -> JSONObject:
    # Gemini's args are an object; "" (no arguments) and a string cut short by the cap are {}.
    if isinstance(arguments, dict):
        return arguments
    if isinstance(arguments, str) and arguments.strip():
        try:
            parsed = orjson.loads(arguments)
        except orjson.JSONDecodeError:
            return {}
        if isinstance(parsed, dict):
            return parsed
    return {}


def _text(message: JSONObject) -> str:
    content = message.get("content")
    if isinstance(content, list):
        content = "".join(
            str(p.get("text") or "") for p in content if isinstance(p, dict) and "text" in p
        )
    return (content if isinstance(content, str) else "") or message.get("refusal") or ""


def message_parts(message: JSONObject, request_id: str, index: int) -> list[JSONObject]:
    parts = thought_parts(message.get(THINKING_BLOCKS))
    reasoning = message.get(REASONING_CONTENT)
    if not parts and isinstance(reasoning, str) and reasoning:
        parts.append({"text": reasoning, "thought": True})
    signature = signature_of(message)
    thoughts = bool(parts)
    if signature and thoughts:
        parts[-1]["thoughtSignature"] = signature  # where Gemini puts it: on the last thought
    text = _text(message)
    if text or (signature and not thoughts):
        part: JSONObject = {"text": text}
        if signature and not thoughts:
            part["thoughtSignature"] = signature
        parts.append(part)
    for position, call in enumerate(message.get("tool_calls") or ()):
        function = call.get("function") or {}
        call_id = call.get("id") or f"call_{request_id}_{index}_{position}"
        name = function.get("name") or ""
        parts.append(call_part(call_id, name, function.get("arguments"), signature_of(call)))
    return parts or [{"text": ""}]


def to_response(completion: JSONObject, request_id: str, model: str, usage: Usage) -> JSONObject:
    """A ``chat.completion`` as Gemini's ``GenerateContentResponse``."""
    candidates = []
    for choice in completion.get("choices") or ():
        index = int(choice.get("index") or 0)
        candidates.append(
            {
                "content": {
                    "role": "model",
                    "parts": message_parts(choice.get("message") or {}, request_id, index),
                },
                "finishReason": finish_reason(choice.get("finish_reason")),
                "index": index,
            }
        )
    return {
        "candidates": candidates,
        "usageMetadata": usage_metadata(usage),
        "modelVersion": model,
        "responseId": request_id,
    }
