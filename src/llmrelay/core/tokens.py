"""Token estimates for when an upstream reports no usage (the ledger row is then ``estimated``).

No exact tokenizer for every provider's models can be shipped offline, so the estimate is the
widely used ~4 characters per token for English prose, counted on UTF-8 bytes so that non-Latin
scripts (several bytes per character, usually more tokens per character) are not undercounted, plus
OpenAI's per-message framing overhead.
"""

from __future__ import annotations

from llmrelay.core.types import JSONObject

_BYTES_PER_TOKEN = 4
_PER_MESSAGE = 4
_PER_IMAGE = 765  # what OpenAI bills a high-detail 512px tile set; a fair middle for estimates


def estimate_text_tokens(text: str) -> int:
    if not text:
        return 0
    # Every request's prompt is counted (its credit reservation): an ASCII string (a flag
    # CPython keeps, so no scan) has as many UTF-8 bytes as characters, without encoding a copy.
    size = len(text) if text.isascii() else len(text.encode("utf-8"))
    return max(1, -(-size // _BYTES_PER_TOKEN))


def message_text(message: JSONObject) -> str:
    """The text of one message (string content, text parts, tool-call arguments)."""
    content = message.get("content")
    if isinstance(content, str):
        text = content
    elif isinstance(content, list):
        text = "".join(
            part.get("text", "") for part in content if isinstance(part, dict) and "text" in part
        )
    else:
        text = ""
    calls = message.get("tool_calls")
    if isinstance(calls, list):
        for call in calls:
            function = call.get("function") if isinstance(call, dict) else None
            if isinstance(function, dict):
                text += str(function.get("name", "")) + str(function.get("arguments", ""))
    return text


def estimate_prompt_tokens(messages: list[JSONObject]) -> int:
    total = 3
    for message in messages:
        total += _PER_MESSAGE + estimate_text_tokens(message_text(message))
        content = message.get("content")
        if isinstance(content, list):
            total += _PER_IMAGE * sum(
                1 for part in content if isinstance(part, dict) and part.get("type") == "image_url"
            )
    return total
