"""The built-in ``mock`` provider: answers in-process, so the gateway runs with no setup at all.

``mock/echo`` answers with the last user message (and calls a tool when the request requires one);
``mock/lorem`` streams filler text at a realistic pace. Usage is counted with the gateway's own
estimator and reported like a real provider would, so the ledger, credits and limits all work.
"""

from __future__ import annotations

import asyncio
import os
import re
import time
from collections.abc import AsyncIterator

import orjson

from llmrelay.config import ProviderConfig
from llmrelay.core.tokens import estimate_prompt_tokens, message_text
from llmrelay.core.types import Completion, JSONObject, Usage
from llmrelay.providers.base import Provider, UpstreamRequest
from llmrelay.providers.capabilities import capabilities_for

LOREM = (
    "Lorem ipsum dolor sit amet, consectetur adipiscing elit, sed do eiusmod tempor incididunt ut "
    "labore et dolore magna aliqua. Ut enim ad minim veniam, quis nostrud exercitation ullamco "
    "laboris nisi ut aliquip ex ea commodo consequat. Duis aute irure dolor in reprehenderit in "
    "voluptate velit esse cillum dolore eu fugiat nulla pariatur."
).split(" ")
LOREM_TOKENS = 60
LOREM_SECONDS_PER_TOKEN = 0.015
_TOKEN = re.compile(r"\S+\s*|\s+")


class MockProvider(Provider):
    def __init__(self, name: str, config: ProviderConfig) -> None:
        super().__init__(name, capabilities_for(config))

    async def complete(self, call: UpstreamRequest) -> Completion:
        pieces, finish, tool_calls = self._answer(call)
        if call.model.upstream == "lorem":
            await asyncio.sleep(LOREM_SECONDS_PER_TOKEN * len(pieces))
        usage = self._usage(call, len(pieces) + _tool_tokens(tool_calls))
        message: JSONObject = {"role": "assistant", "content": "".join(pieces) or None}
        if tool_calls:
            message["tool_calls"] = tool_calls
        body: JSONObject = {
            "id": "mock-" + os.urandom(6).hex(),
            "object": "chat.completion",
            "created": int(time.time()),
            "model": call.model.upstream,
            "choices": [
                {"index": 0, "message": message, "finish_reason": finish, "logprobs": None}
            ],
            "usage": usage.to_openai(),
        }
        return Completion(body, usage)

    async def stream_batches(self, call: UpstreamRequest) -> AsyncIterator[list[JSONObject]]:
        # One chunk per batch: the mock paces its tokens as a model's separate reads would come.
        pieces, finish, tool_calls = self._answer(call)
        pace = LOREM_SECONDS_PER_TOKEN if call.model.upstream == "lorem" else 0.0
        base: JSONObject = {
            "id": "mock-" + os.urandom(6).hex(),
            "object": "chat.completion.chunk",
            "created": int(time.time()),
            "model": call.model.upstream,
        }
        first = True
        for piece in pieces:
            if pace:
                await asyncio.sleep(pace)
            delta: JSONObject = {"content": piece}
            if first:
                delta["role"] = "assistant"
                first = False
            yield [{**base, "choices": [{"index": 0, "delta": delta, "finish_reason": None}]}]
        for index, tool_call in enumerate(tool_calls):
            delta = {"tool_calls": [{"index": index, **tool_call}]}
            if first:
                delta["role"] = "assistant"
                first = False
            yield [{**base, "choices": [{"index": 0, "delta": delta, "finish_reason": None}]}]
        yield [{**base, "choices": [{"index": 0, "delta": {}, "finish_reason": finish}]}]
        usage = self._usage(call, len(pieces) + _tool_tokens(tool_calls))
        yield [{**base, "choices": [], "usage": usage.to_openai()}]

    def _answer(self, call: UpstreamRequest) -> tuple[list[str], str, list[JSONObject]]:
        limit = call.request.max_output_tokens
        if call.model.upstream == "lorem":
            words = [LOREM[i % len(LOREM)] for i in range(LOREM_TOKENS)]
            pieces = [w + " " for w in words[:-1]] + [words[-1]]
        else:
            tool_calls = _forced_tool_call(call.request.body)
            if tool_calls:
                return [], "tool_calls", tool_calls
            pieces = _TOKEN.findall(_last_user_text(call.request.messages)) or ["(empty message)"]
        if limit is not None and len(pieces) > limit:
            return pieces[:limit], "length", []
        return pieces, "stop", []

    def _usage(self, call: UpstreamRequest, completion_tokens: int) -> Usage:
        return Usage(
            prompt_tokens=estimate_prompt_tokens(call.request.messages),
            completion_tokens=completion_tokens,
        )


def _last_user_text(messages: list[JSONObject]) -> str:
    for message in reversed(messages):
        if message.get("role") == "user":
            return message_text(message)
    return ""


def _forced_tool_call(body: JSONObject) -> list[JSONObject]:
    """With tools and ``tool_choice`` required or named, echo calls that tool with ``{}``."""
    tools = body.get("tools")
    choice = body.get("tool_choice")
    if not isinstance(tools, list) or not tools:
        return []
    name: str | None = None
    if isinstance(choice, dict):
        function = choice.get("function")
        name = function.get("name") if isinstance(function, dict) else None
    elif choice == "required":
        first = tools[0].get("function", {}) if isinstance(tools[0], dict) else {}
        name = first.get("name")
    if not name:
        return []
    arguments = orjson.dumps({"echo": _last_user_text(body.get("messages") or [])}).decode()
    return [
        {
            "id": "call_" + os.urandom(8).hex(),
            "type": "function",
            "function": {"name": name, "arguments": arguments},
        }
    ]


def _tool_tokens(tool_calls: list[JSONObject]) -> int:
    return sum(len(str(call["function"]["arguments"])) // 4 + 1 for call in tool_calls)
