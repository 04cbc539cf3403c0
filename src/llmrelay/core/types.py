"""Canonical types: what flows between the inbound surfaces, the pipeline and the providers.

The canonical format is OpenAI Chat Completions. Requests, completions and chunks stay plain JSON
dicts in that shape (so unknown provider-specific fields pass through untouched and the hot path
does not copy them into objects); the typed views below name the parts the gateway reads.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal, TypeAlias

JSONObject: TypeAlias = dict[str, Any]
"""A decoded JSON object in the OpenAI Chat Completions shape (request, completion or chunk)."""

FinishReason: TypeAlias = Literal["stop", "length", "tool_calls", "content_filter", "function_call"]
LedgerStatus: TypeAlias = Literal["ok", "error", "cancelled"]


@dataclass(slots=True)
class Usage:
    """Token counts in OpenAI's semantics: prompt includes cached, completion includes reasoning."""

    prompt_tokens: int = 0
    completion_tokens: int = 0
    cached_tokens: int = 0
    reasoning_tokens: int = 0
    cache_write_tokens: int = 0

    @property
    def total_tokens(self) -> int:
        return self.prompt_tokens + self.completion_tokens

    @classmethod
    def from_openai(cls, usage: JSONObject) -> Usage:
        prompt_details = usage.get("prompt_tokens_details") or {}
        completion_details = usage.get("completion_tokens_details") or {}
        return cls(
            prompt_tokens=int(usage.get("prompt_tokens") or 0),
            completion_tokens=int(usage.get("completion_tokens") or 0),
            cached_tokens=int(prompt_details.get("cached_tokens") or 0),
            reasoning_tokens=int(completion_details.get("reasoning_tokens") or 0),
            cache_write_tokens=int(prompt_details.get("cache_write_tokens") or 0),
        )

    def to_openai(self) -> JSONObject:
        prompt_details: JSONObject = {"cached_tokens": self.cached_tokens}
        if self.cache_write_tokens:
            prompt_details["cache_write_tokens"] = self.cache_write_tokens  # as OpenRouter does
        return {
            "prompt_tokens": self.prompt_tokens,
            "completion_tokens": self.completion_tokens,
            "total_tokens": self.total_tokens,
            "prompt_tokens_details": prompt_details,
            "completion_tokens_details": {"reasoning_tokens": self.reasoning_tokens},
        }


@dataclass(slots=True)
class ChatRequest:
    """A validated Chat Completions request.

    ``body`` is the client's JSON object, kept whole so provider-specific fields pass through; the
    attributes are the fields the pipeline itself acts on.
    """

    body: JSONObject
    model: str
    stream: bool
    include_usage: bool
    max_output_tokens: int | None

    @property
    def messages(self) -> list[JSONObject]:
        messages: list[JSONObject] = self.body["messages"]
        return messages


@dataclass(slots=True)
class Completion:
    """A whole (non-streamed) answer in the ``chat.completion`` shape, with its parsed usage."""

    body: JSONObject
    usage: Usage | None
