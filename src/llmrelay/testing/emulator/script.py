"""The deterministic answer to one request, independent of any wire format.

Every provider module renders the same :class:`Script`, so tests can compute what to expect.

Token counting rules (identical for the three formats):

- **Words** of a value: a string counts its whitespace-separated words; a list counts the sum of
  its items; an object counts only its ``content``, ``text`` and ``parts`` members (recursively).
  Everything else (roles, tool definitions, images, tool-call arguments) counts zero.
- **Prompt tokens** = for each message (OpenAI ``messages``; Anthropic ``messages``; Gemini
  ``contents``): ``4 + words(message)``; plus ``4 + words(system)`` when a top-level system prompt
  is given (Anthropic ``system``, Gemini ``systemInstruction``). OpenAI system messages are
  ordinary messages.
- **Cached tokens** = ``min(cached, prompt tokens)`` (option ``cached=N``), part of the prompt.
- **Completion tokens** = reasoning chunks + content chunks + tool-call fragments: one token per
  chunk. A text answer has exactly ``chunks`` content chunks; a tool answer (``tools=N``) has no
  text and :data:`TOOL_FRAGMENTS` argument fragments per call; ``reasoning`` adds its chunks.

The text answer is ``"Echo:"`` followed by the words of the last user message, padded with filler
words up to ``chunks`` chunks (each chunk after the first starts with a space). With ``utf8`` the
first chunk is :data:`UTF8_PREFIX` and the filler words are multi-byte.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass

import orjson

from llmrelay.testing.emulator.behaviour import Behaviour

MESSAGE_OVERHEAD = 4
TOOL_FRAGMENTS = 3
ASCII_PREFIX = "Echo:"
UTF8_PREFIX = "Écho 日本 🚀:"
DEFAULT_TOOL_NAME = "lookup"
_ASCII_FILLER = ("lorem", "ipsum", "dolor", "sit", "amet", "consectetur", "adipiscing", "elit")
_UTF8_FILLER = ("café", "日本語", "emoji🎉", "naïve", "Ωμέγα", "über", "😀", "中文")
_REASONING_WORDS = ("Let", "me", "think", "about", "this", "request", "carefully", "first")
_TEXT_KEYS = ("content", "text", "parts")


@dataclass(frozen=True, slots=True)
class ToolCall:
    """One tool call of the answer; ``fragments`` concatenate to ``arguments``."""

    index: int
    name: str
    arguments: str
    fragments: tuple[str, ...]

    @property
    def args(self) -> dict[str, object]:
        """The arguments as an object (Anthropic ``input``, Gemini ``args``)."""
        parsed: dict[str, object] = orjson.loads(self.arguments)
        return parsed


@dataclass(frozen=True, slots=True)
class Script:
    """What to answer: reasoning chunks, content chunks or tool calls, and the usage numbers."""

    prompt_tokens: int
    cached_tokens: int
    reasoning: tuple[str, ...]
    content: tuple[str, ...]
    tool_calls: tuple[ToolCall, ...]

    @property
    def text(self) -> str:
        """The whole text answer."""
        return "".join(self.content)

    @property
    def reasoning_text(self) -> str:
        """The whole reasoning text."""
        return "".join(self.reasoning)

    @property
    def tool_tokens(self) -> int:
        """Completion tokens spent on tool-call arguments."""
        return sum(len(call.fragments) for call in self.tool_calls)

    @property
    def completion_tokens(self) -> int:
        """All output tokens, reasoning included."""
        return len(self.reasoning) + len(self.content) + self.tool_tokens

    @property
    def token_count(self) -> int:
        """How many token chunks a stream of this script carries (= completion tokens)."""
        return self.completion_tokens


def count_words(value: object) -> int:
    """Count the words of ``value`` as the module docstring defines them."""
    if isinstance(value, str):
        return len(value.split())
    if isinstance(value, list):
        return sum(count_words(item) for item in value)
    if isinstance(value, dict):
        return sum(count_words(value[key]) for key in _TEXT_KEYS if key in value)
    return 0


def count_prompt_tokens(messages: Sequence[object], system: object = None) -> int:
    """Prompt tokens for ``messages`` plus an optional top-level system prompt."""
    total = sum(MESSAGE_OVERHEAD + count_words(message) for message in messages)
    if system is not None:
        total += MESSAGE_OVERHEAD + count_words(system)
    return total


def _words(value: object) -> Iterator[str]:
    if isinstance(value, str):
        yield from value.split()
    elif isinstance(value, list):
        for item in value:
            yield from _words(item)
    elif isinstance(value, dict):
        for key in _TEXT_KEYS:
            if key in value:
                yield from _words(value[key])


def last_user_words(messages: Sequence[object], user_roles: Iterable[str] = ("user",)) -> list[str]:
    """The words of the last message whose role is one of ``user_roles`` (a missing role counts)."""
    roles = set(user_roles)
    for message in reversed(messages):
        if isinstance(message, dict) and message.get("role", "user") in roles:
            return list(_words(message))
    return []


def _split(text: str, parts: int) -> tuple[str, ...]:
    size = max(1, -(-len(text) // parts))
    pieces = [text[i * size : (i + 1) * size] for i in range(parts - 1)]
    pieces.append(text[(parts - 1) * size :])
    return tuple(pieces)


def build_script(
    behaviour: Behaviour,
    *,
    prompt_tokens: int,
    user_words: Sequence[str],
    tool_names: Sequence[str] = (),
) -> Script:
    """Plan the answer to a request whose prompt has ``prompt_tokens`` tokens."""
    reasoning = tuple(
        (" " if i else "") + _REASONING_WORDS[i % len(_REASONING_WORDS)]
        for i in range(behaviour.reasoning)
    )
    tool_calls: tuple[ToolCall, ...] = ()
    content: tuple[str, ...] = ()
    if behaviour.tools:
        names = list(tool_names) or [DEFAULT_TOOL_NAME]
        calls = []
        for index in range(behaviour.tools):
            query = user_words[index] if index < len(user_words) else "emulator"
            if behaviour.utf8:
                query += " 日本 é"
            arguments = orjson.dumps({"query": query, "index": index}).decode()
            name = names[index % len(names)]
            calls.append(ToolCall(index, name, arguments, _split(arguments, TOOL_FRAGMENTS)))
        tool_calls = tuple(calls)
    elif behaviour.chunks:
        filler = _UTF8_FILLER if behaviour.utf8 else _ASCII_FILLER
        words = list(user_words[: behaviour.chunks - 1])
        words.extend(filler[i % len(filler)] for i in range(behaviour.chunks - 1 - len(words)))
        prefix = UTF8_PREFIX if behaviour.utf8 else ASCII_PREFIX
        content = (prefix, *(" " + word for word in words))
    return Script(
        prompt_tokens=prompt_tokens,
        cached_tokens=min(behaviour.cached, prompt_tokens),
        reasoning=reasoning,
        content=content,
        tool_calls=tool_calls,
    )
