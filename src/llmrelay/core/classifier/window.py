"""Pick the text a request is classified on, within a character budget."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

# Roles whose text says what work is being asked for. System/developer prompts are
# written once by the operator ("You are a helpful assistant") and would pull every
# request of an application towards the same basket; tool output is data, not a request.
_CONTEXT_ROLES = frozenset({"user", "assistant"})
_SEPARATOR = "\n\n"


def clip(text: str, max_chars: int) -> str:
    """Keep the head and the tail of ``text`` so that the result fits in ``max_chars``.

    The instruction is usually at the start ("Fix this function:") and the question often at
    the end ("... what does it print?"), with pasted material in between, so the middle is
    what gets dropped.
    """
    if max_chars <= 0:
        return ""
    if len(text) <= max_chars:
        return text
    if max_chars < 8:
        return text[:max_chars]
    head = (max_chars * 3) // 4
    tail = max_chars - head - 1
    return text[:head] + "\n" + text[len(text) - tail :]


def message_text(message: Mapping[str, object]) -> str:
    """Text of one OpenAI-format message; non-text parts (images, audio) are ignored."""
    content = message.get("content")
    if isinstance(content, str):
        return content
    if isinstance(content, Sequence) and not isinstance(content, (bytes, bytearray)):
        texts: list[str] = []
        for part in content:
            if isinstance(part, Mapping) and part.get("type") == "text":
                text = part.get("text")
                if isinstance(text, str):
                    texts.append(text)
        return "\n".join(texts)
    return ""


def conversation_window(messages: Sequence[Mapping[str, object]], max_chars: int) -> str:
    """Text used to classify a chat request, at most ``max_chars`` characters long.

    The latest user turn comes first and gets the budget before anything else: it is what
    the model is being asked to do now. Whatever budget is left goes to earlier user and
    assistant turns, newest first, each clipped to half of what remains, so a follow-up
    like "now make it faster" still carries the code it refers to without one long old
    turn crowding out the rest. Cost is linear in the turns looked at, and the walk stops as
    soon as the budget is spent.
    """
    if max_chars <= 0 or not messages:
        return ""
    latest = None
    for position in range(len(messages) - 1, -1, -1):
        if messages[position].get("role") == "user":
            latest = position
            break
    if latest is None:
        # No user turn at all (e.g. assistant prefill only): fall back to the last turn.
        latest = len(messages) - 1
    parts = [clip(message_text(messages[latest]), max_chars)]
    remaining = max_chars - len(parts[0])
    for position in range(latest - 1, -1, -1):
        if remaining <= len(_SEPARATOR):
            break
        message = messages[position]
        if message.get("role") not in _CONTEXT_ROLES:
            continue
        text = message_text(message)
        if not text.strip():
            continue
        budget = remaining - len(_SEPARATOR)
        share = budget if budget < 64 else max(64, budget // 2)
        piece = clip(text, share)
        parts.append(piece)
        remaining -= len(piece) + len(_SEPARATOR)
    # An image-only latest turn leaves an empty first part; drop it rather than lead with
    # a separator.
    return _SEPARATOR.join(part for part in parts if part)
