"""Canonical answers → Anthropic's ``Message``: pure conversions shared by the whole answer and
the event stream.

Content: an Anthropic upstream's signed ``thinking_blocks`` verbatim, else ``reasoning_content`` as
a thinking block (signed with the upstream's Gemini signature when there is one, see
``signatures``; else with an empty signature); the text; each tool call as a ``tool_use`` block
whose ``input`` is the parsed arguments (``""`` → ``{}``), after a signature-only thinking block
when a Gemini upstream signed the call. ``finish_reason`` stop → end_turn (``stop_sequence`` when
the upstream named the sequence it hit), length → max_tokens, tool_calls → tool_use,
content_filter → refusal. Usage as Anthropic counts it: ``input_tokens`` excludes cache reads and
writes.
"""

from __future__ import annotations

from typing import Any

import orjson

from llmrelay.api.signatures import gemini_for_anthropic
from llmrelay.core.types import JSONObject, Usage
from llmrelay.providers.canonical import EXTRA_CONTENT, REASONING_CONTENT, THINKING_BLOCKS

STOP_REASONS = {
    "stop": "end_turn",
    "length": "max_tokens",
    "tool_calls": "tool_use",
    "function_call": "tool_use",
    "content_filter": "refusal",
}


def usage_payload(usage: Usage) -> JSONObject:
    """Anthropic's usage: ``input_tokens`` excludes what was read from or written to the cache."""
    return {
        "input_tokens": max(
            0, usage.prompt_tokens - usage.cached_tokens - usage.cache_write_tokens
        ),
        "output_tokens": usage.completion_tokens,
        "cache_creation_input_tokens": usage.cache_write_tokens,
        "cache_read_input_tokens": usage.cached_tokens,
    }


def stop_reason(
    finish_reason: Any, called: bool, matched: Any, stops: list[str]
) -> tuple[str, str | None]:
    """``(stop_reason, stop_sequence)``; ``matched`` is the stop string the upstream reported
    hitting (vLLM's ``stop_reason``), the only way a canonical answer can name it."""
    if finish_reason in ("stop", None) and isinstance(matched, str) and matched in stops:
        return "stop_sequence", matched
    reason = STOP_REASONS.get(finish_reason, "end_turn") if finish_reason else "end_turn"
    if reason == "end_turn" and called:
        reason = "tool_use"  # OpenAI answers a named tool_choice with "stop"
    return reason, None


def tool_input(arguments: Any) -> JSONObject:
    """A tool call's arguments as an object: ``""`` (no arguments) is ``{}``; so is a string cut
    short by the token cap, which Anthropic's ``input`` (always an object) cannot carry."""
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


def gemini_signature(holder: JSONObject) -> str | None:
    """A Gemini thought signature on the canonical ``extra_content.google`` extension."""
    extra = holder.get(EXTRA_CONTENT)
    google = extra.get("google") if isinstance(extra, dict) else None
    signature = google.get("thought_signature") if isinstance(google, dict) else None
    return signature if isinstance(signature, str) and signature else None


def signature_block(signature: str, *, call: bool) -> JSONObject:
    """A thinking block that only carries a Gemini signature back and forth."""
    marked = gemini_for_anthropic(signature, call=call)
    return {"type": "thinking", "thinking": "", "signature": marked}


def thinking_blocks(message: JSONObject) -> list[JSONObject]:
    """An answer's thinking: Anthropic's signed blocks verbatim, else its reasoning text."""
    blocks = message.get(THINKING_BLOCKS)
    if isinstance(blocks, list) and blocks:
        out = []
        for block in blocks:
            if not isinstance(block, dict):
                continue
            if block.get("type") == "redacted_thinking":
                out.append({"type": "redacted_thinking", "data": block.get("data") or ""})
            else:
                out.append(
                    {
                        "type": "thinking",
                        "thinking": block.get("thinking") or "",
                        "signature": block.get("signature") or "",
                    }
                )
        return out
    reasoning = message.get(REASONING_CONTENT)
    signature = gemini_signature(message)
    if signature is not None:
        block = signature_block(signature, call=False)
        block["thinking"] = reasoning if isinstance(reasoning, str) else ""
        return [block]
    if isinstance(reasoning, str) and reasoning:
        return [{"type": "thinking", "thinking": reasoning, "signature": ""}]
    return []


def message_text(content: Any) -> str:
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "".join(
            str(part.get("text") or "")
            for part in content
            if isinstance(part, dict) and part.get("type") == "text"
        )
    return ""


def to_message(
    completion: JSONObject, request_id: str, model: str, usage: Usage, stops: list[str]
) -> JSONObject:
    """A ``chat.completion`` as Anthropic's ``Message`` (its first choice: Anthropic has one)."""
    choices = completion.get("choices") or [{}]
    choice = choices[0]
    message = choice.get("message") or {}
    content = thinking_blocks(message)
    text = message_text(message.get("content")) or message.get("refusal") or ""
    if text:
        content.append({"type": "text", "text": text})
    calls = message.get("tool_calls") or []
    for position, call in enumerate(calls):
        function = call.get("function") or {}
        signature = gemini_signature(call)
        if signature is not None:
            content.append(signature_block(signature, call=True))
        content.append(
            {
                "type": "tool_use",
                "id": call.get("id") or f"toolu_{request_id}_{position}",
                "name": function.get("name") or "",
                "input": tool_input(function.get("arguments")),
            }
        )
    reason, sequence = stop_reason(
        choice.get("finish_reason"), bool(calls), choice.get("stop_reason"), stops
    )
    return {
        "id": request_id,
        "type": "message",
        "role": "assistant",
        "model": model,
        "content": content,
        "stop_reason": reason,
        "stop_sequence": sequence,
        "usage": usage_payload(usage),
    }
