"""Any client SDK to any model: each inbound surface (OpenAI, Anthropic, Gemini — driven by its
official SDK) against each upstream type (OpenAI-, Anthropic- and Gemini-typed emulators).

Every cell runs the same scenarios: a text answer with its usage (cached tokens included), the same
answer streamed, parallel tool calls and their results sent back, reasoning, and an upstream error
before and after the stream is committed. The emulator counts tokens identically in the three wire
formats (docs/testing.md), so every cell expects the same numbers.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import anthropic
import openai
import pytest
from google import genai
from google.genai import errors as genai_errors
from google.genai import types

from conftest import make_settings
from llmrelay.config import ConfigError, Settings
from llmrelay.providers.http import UpstreamClient
from llmrelay.providers.registry import build_providers
from llmrelay.testing.emulator import count_prompt_tokens
from llmrelay.testing.harness import RunningGateway, ThreadedEmulator, start_gateway

pytestmark = pytest.mark.filterwarnings(
    "ignore:Inheritance class AiohttpClientSession from ClientSession:DeprecationWarning"
)

PROMPT = "hello there gateway"
ANSWER = "Echo: hello there gateway lorem ipsum dolor sit"
PROMPT_TOKENS = count_prompt_tokens([{"role": "user", "content": PROMPT}])
UPSTREAMS = {"openai": "oai", "anthropic": "ant", "gemini": "gem"}
VARIANTS = [
    "m",
    "m+cached=3",
    "m+tools=2",
    "m+reasoning",
    "m+reasoning+tools=1",
    "m+error_mid=2",
    "m+status=429",
]


def provider_type_available(kind: str) -> bool:
    settings = Settings.model_validate({"providers": {"p": {"type": kind, "api_key": "k"}}})
    try:
        build_providers(settings, UpstreamClient())
    except ConfigError:
        return False
    return True


@pytest.fixture(scope="module")
def matrix_gateway(
    tmp_path_factory: pytest.TempPathFactory, emulator: ThreadedEmulator
) -> Iterator[RunningGateway]:
    base = emulator.base_url
    providers: dict[str, Any] = {
        "oai": {"type": "openai", "base_url": base + "/v1", "api_key": "sk-oai-upstream"},
        "ant": {"type": "anthropic", "base_url": base, "api_key": "sk-ant-upstream"},
        "gem": {"type": "gemini", "base_url": base, "api_key": "g-gem-upstream"},
    }
    providers = {
        name: config
        for name, config in providers.items()
        if provider_type_available(str(config["type"]))
    }
    models = [
        {"id": f"{name}/{variant}", "provider": name, "price": {"input": 1.0, "output": 2.0}}
        for name in providers
        for variant in VARIANTS
    ]
    settings = make_settings(
        Path(tmp_path_factory.mktemp("matrix")),
        base,
        providers=providers,
        models=models,
        router={"baskets": {"chat": "oai/m"}, "default_basket": "chat"},
    )
    with start_gateway(settings) as gateway:
        yield gateway


@dataclass
class Answer:
    text: str
    reasoning: str
    prompt_tokens: int
    cached_tokens: int
    completion_tokens: int


class Inbound(Protocol):
    def ask(self, model: str, *, stream: bool) -> Answer: ...

    def call_tools(self, model: str) -> list[tuple[str, dict[str, Any]]]:
        """The first turn's calls; ``reply`` then answers them all and asks "and now?"."""

    def reply(self, model: str) -> str: ...

    def error_status(self, model: str, *, stream: bool) -> int: ...


TOOL_NAMES = ["get_weather", "get_time"]


class OpenAIInbound:
    def __init__(self, gateway: RunningGateway, key: str) -> None:
        self.client = openai.OpenAI(base_url=gateway.base_url + "/v1", api_key=key, max_retries=0)
        self.tools: Any = [
            {"type": "function", "function": {"name": n, "parameters": {"type": "object"}}}
            for n in TOOL_NAMES
        ]
        self.history: list[Any] = []

    def ask(self, model: str, *, stream: bool) -> Answer:
        messages: Any = [{"role": "user", "content": PROMPT}]
        if not stream:
            done = self.client.chat.completions.create(model=model, messages=messages)
            message = done.choices[0].message
            usage = done.usage
            text, reasoning = message.content or "", getattr(message, "reasoning_content", "")
        else:
            chunks = list(
                self.client.chat.completions.create(
                    model=model,
                    messages=messages,
                    stream=True,
                    stream_options={"include_usage": True},
                )
            )
            deltas = [c.choices[0].delta for c in chunks if c.choices]
            text = "".join(d.content or "" for d in deltas)
            reasoning = "".join(getattr(d, "reasoning_content", None) or "" for d in deltas)
            usage = chunks[-1].usage
        assert usage is not None
        details = usage.prompt_tokens_details
        return Answer(
            text,
            reasoning or "",
            usage.prompt_tokens,
            details.cached_tokens or 0 if details else 0,
            usage.completion_tokens,
        )

    def call_tools(self, model: str) -> list[tuple[str, dict[str, Any]]]:
        self.history = [{"role": "user", "content": PROMPT}]
        done = self.client.chat.completions.create(
            model=model, messages=self.history, tools=self.tools
        )
        message = done.choices[0].message
        assert done.choices[0].finish_reason == "tool_calls"
        calls = message.tool_calls or []
        self.history.append(message.model_dump(exclude_none=True))
        self.history += [
            {"role": "tool", "tool_call_id": c.id, "content": json.dumps({"ok": i})}
            for i, c in enumerate(calls)
        ]
        self.history.append({"role": "user", "content": "and now?"})
        return [(c.function.name, json.loads(c.function.arguments)) for c in calls]  # type: ignore[union-attr]

    def reply(self, model: str) -> str:
        done = self.client.chat.completions.create(
            model=model, messages=self.history, tools=self.tools
        )
        return done.choices[0].message.content or ""

    def _attempt(self, model: str, *, stream: bool) -> None:
        messages: Any = [{"role": "user", "content": PROMPT}]
        if stream:
            list(self.client.chat.completions.create(model=model, messages=messages, stream=True))
        else:
            self.client.chat.completions.create(model=model, messages=messages)

    def error_status(self, model: str, *, stream: bool) -> int:
        with pytest.raises(openai.APIError) as raised:
            self._attempt(model, stream=stream)
        if isinstance(raised.value, openai.APIStatusError):
            return raised.value.status_code
        body = raised.value.body  # in-stream: the chunk's error object
        assert isinstance(body, dict)
        return int(body["code"])


class AnthropicInbound:
    def __init__(self, gateway: RunningGateway, key: str) -> None:
        self.client = anthropic.Anthropic(base_url=gateway.base_url, api_key=key, max_retries=0)
        self.tools: Any = [{"name": n, "input_schema": {"type": "object"}} for n in TOOL_NAMES]
        self.history: list[Any] = []

    def ask(self, model: str, *, stream: bool) -> Answer:
        messages: Any = [{"role": "user", "content": PROMPT}]
        if stream:
            with self.client.messages.stream(model=model, max_tokens=500, messages=messages) as s:
                message: Any = s.get_final_message()
        else:
            message = self.client.messages.create(model=model, max_tokens=500, messages=messages)
        text = "".join(b.text for b in message.content if b.type == "text")
        reasoning = "".join(b.thinking for b in message.content if b.type == "thinking")
        usage = message.usage
        cached = usage.cache_read_input_tokens or 0
        prompt = usage.input_tokens + cached + (usage.cache_creation_input_tokens or 0)
        return Answer(text, reasoning, prompt, cached, usage.output_tokens)

    def call_tools(self, model: str) -> list[tuple[str, dict[str, Any]]]:
        self.history = [{"role": "user", "content": PROMPT}]
        message = self.client.messages.create(
            model=model, max_tokens=500, messages=self.history, tools=self.tools
        )
        assert message.stop_reason == "tool_use"
        calls = [b for b in message.content if b.type == "tool_use"]
        self.history.append({"role": "assistant", "content": message.content})
        results: list[Any] = [
            {"type": "tool_result", "tool_use_id": c.id, "content": json.dumps({"ok": i})}
            for i, c in enumerate(calls)
        ]
        self.history.append(
            {"role": "user", "content": [*results, {"type": "text", "text": "and now?"}]}
        )
        return [(c.name, dict(c.input)) for c in calls]  # type: ignore[arg-type]

    def reply(self, model: str) -> str:
        message = self.client.messages.create(
            model=model, max_tokens=500, messages=self.history, tools=self.tools
        )
        return "".join(b.text for b in message.content if b.type == "text")

    def _attempt(self, model: str, *, stream: bool) -> None:
        messages: Any = [{"role": "user", "content": PROMPT}]
        if stream:
            with self.client.messages.stream(model=model, max_tokens=50, messages=messages) as s:
                s.get_final_message()
        else:
            self.client.messages.create(model=model, max_tokens=50, messages=messages)

    def error_status(self, model: str, *, stream: bool) -> int:
        with pytest.raises(anthropic.APIStatusError) as raised:
            self._attempt(model, stream=stream)
        if raised.value.status_code != 200:
            return raised.value.status_code
        body = raised.value.body  # in-stream: the error event's type says what it was
        assert isinstance(body, dict)
        return {"api_error": 502, "overloaded_error": 503}[body["error"]["type"]]


class GeminiInbound:
    def __init__(self, gateway: RunningGateway, key: str) -> None:
        self.client = genai.Client(
            api_key=key, http_options=types.HttpOptions(base_url=gateway.base_url)
        )
        self.config = types.GenerateContentConfig(
            tools=[
                types.Tool(
                    function_declarations=[types.FunctionDeclaration(name=n) for n in TOOL_NAMES]
                )
            ]
        )
        self.history: list[Any] = []

    def ask(self, model: str, *, stream: bool) -> Answer:
        if stream:
            chunks = list(self.client.models.generate_content_stream(model=model, contents=PROMPT))
        else:
            chunks = [self.client.models.generate_content(model=model, contents=PROMPT)]
        parts = [
            part
            for chunk in chunks
            for candidate in chunk.candidates or ()
            for part in (candidate.content.parts if candidate.content else None) or ()
        ]
        usage = chunks[-1].usage_metadata
        assert usage is not None
        return Answer(
            "".join(p.text or "" for p in parts if not p.thought),
            "".join(p.text or "" for p in parts if p.thought),
            usage.prompt_token_count or 0,
            usage.cached_content_token_count or 0,
            (usage.candidates_token_count or 0) + (usage.thoughts_token_count or 0),
        )

    def call_tools(self, model: str) -> list[tuple[str, dict[str, Any]]]:
        first = self.client.models.generate_content(
            model=model, contents=PROMPT, config=self.config
        )
        calls = first.function_calls or []
        assert first.candidates is not None
        self.history = [
            types.Content(role="user", parts=[types.Part(text=PROMPT)]),
            first.candidates[0].content,
            types.Content(
                role="user",
                parts=[
                    *(
                        types.Part.from_function_response(name=c.name or "", response={"ok": i})
                        for i, c in enumerate(calls)
                    ),
                    types.Part(text="and now?"),
                ],
            ),
        ]
        return [(c.name or "", dict(c.args or {})) for c in calls]

    def reply(self, model: str) -> str:
        answer = self.client.models.generate_content(
            model=model, contents=self.history, config=self.config
        )
        return answer.text or ""

    def _attempt(self, model: str, *, stream: bool) -> None:
        if stream:
            list(self.client.models.generate_content_stream(model=model, contents=PROMPT))
        else:
            self.client.models.generate_content(model=model, contents=PROMPT)

    def error_status(self, model: str, *, stream: bool) -> int:
        with pytest.raises(genai_errors.APIError) as raised:
            self._attempt(model, stream=stream)
        return raised.value.code


INBOUND: dict[str, type[OpenAIInbound | AnthropicInbound | GeminiInbound]] = {
    "openai": OpenAIInbound,
    "anthropic": AnthropicInbound,
    "gemini": GeminiInbound,
}
CELLS = [(inbound, upstream) for inbound in INBOUND for upstream in UPSTREAMS]


@pytest.fixture(params=CELLS, ids=[f"{i}-client-to-{u}-upstream" for i, u in CELLS])
def cell(request: pytest.FixtureRequest, matrix_gateway: RunningGateway) -> tuple[Inbound, str]:
    inbound, upstream = request.param
    if not provider_type_available(upstream):
        pytest.skip(f"provider type {upstream!r} is not available in this build")
    key = matrix_gateway.create_key(name=f"{inbound}-{upstream}")
    return INBOUND[inbound](matrix_gateway, key), UPSTREAMS[upstream]


def test_text_and_usage(cell: tuple[Inbound, str]) -> None:
    client, provider = cell
    for stream in (False, True):
        answer = client.ask(f"{provider}/m+cached=3", stream=stream)
        assert answer.text == ANSWER
        assert answer.reasoning == ""
        assert (answer.prompt_tokens, answer.cached_tokens) == (PROMPT_TOKENS, 3)
        assert answer.completion_tokens == 8


def test_parallel_tool_calls_round_trip(
    cell: tuple[Inbound, str], emulator: ThreadedEmulator
) -> None:
    client, provider = cell
    calls = client.call_tools(f"{provider}/m+tools=2")
    assert calls == [
        ("get_weather", {"query": "hello", "index": 0}),
        ("get_time", {"query": "there", "index": 1}),
    ]
    text = client.reply(f"{provider}/m")
    assert text.startswith("Echo:")
    assert text.endswith("and now?") or "now?" in text
    upstream = emulator.requests[-1]
    assert _answered_calls(upstream.path, upstream.json) == ["get_weather", "get_time"]


def _answered_calls(path: str, body: Any) -> list[str]:
    """The tool names the upstream saw answered, in its own wire format."""
    if "/models/" in path:  # Gemini: functionResponse parts name the function
        return [
            part["functionResponse"]["name"]
            for content in body["contents"]
            for part in content["parts"]
            if "functionResponse" in part
        ]
    if path.endswith("/messages"):  # Anthropic: tool_result blocks answer tool_use ids
        blocks = [
            b for m in body["messages"] if isinstance(m["content"], list) for b in m["content"]
        ]
        names = {b["id"]: b["name"] for b in blocks if b["type"] == "tool_use"}
        return [names[b["tool_use_id"]] for b in blocks if b["type"] == "tool_result"]
    calls = [c for m in body["messages"] for c in m.get("tool_calls") or ()]
    names = {c["id"]: c["function"]["name"] for c in calls}  # OpenAI: tool messages answer ids
    return [names[m["tool_call_id"]] for m in body["messages"] if m["role"] == "tool"]


def test_reasoning_surfaces_in_each_dialect(cell: tuple[Inbound, str]) -> None:
    client, provider = cell
    whole = client.ask(f"{provider}/m+reasoning", stream=False)
    streamed = client.ask(f"{provider}/m+reasoning", stream=True)
    assert whole.reasoning
    assert streamed.reasoning == whole.reasoning
    assert streamed.text == whole.text
    assert whole.completion_tokens == 8 + 4


def test_errors_before_and_after_the_commit(cell: tuple[Inbound, str]) -> None:
    client, provider = cell
    assert client.error_status(f"{provider}/m+status=429", stream=False) == 429
    assert client.error_status(f"{provider}/m+status=429", stream=True) == 429
    # Each emulator's in-stream error: OpenAI's server_error, Anthropic's overloaded_error,
    # Gemini's 503 UNAVAILABLE; every surface keeps its meaning.
    expected = {"oai": 502, "ant": 503, "gem": 503}[provider]
    assert client.error_status(f"{provider}/m+error_mid=2", stream=True) == expected


# -- same dialect in and out: what only that provider understands passes untouched -------------


def test_anthropic_client_to_anthropic_upstream_keeps_signed_thinking_and_cache_control(
    matrix_gateway: RunningGateway, emulator: ThreadedEmulator
) -> None:
    key = matrix_gateway.create_key(name="native-anthropic")
    tools: Any = [
        {
            "name": "get_weather",
            "input_schema": {"type": "object"},
            "cache_control": {"type": "ephemeral"},
        }
    ]
    system: Any = [{"type": "text", "text": "Be brief.", "cache_control": {"type": "ephemeral"}}]
    thinking: Any = {"type": "enabled", "budget_tokens": 2048}
    with anthropic.Anthropic(base_url=matrix_gateway.base_url, api_key=key, max_retries=0) as c:
        with c.messages.stream(
            model="ant/m+reasoning",
            max_tokens=4096,
            system=system,
            thinking=thinking,
            messages=[{"role": "user", "content": PROMPT}],
            tools=tools,
            extra_body={"top_k": 5},
        ) as stream:
            first = stream.get_final_message()
        sent = emulator.requests[-1].json
        assert sent["system"] == system
        assert sent["tools"] == tools
        assert (sent["thinking"], sent["top_k"]) == (thinking, 5)
        block = first.content[0]
        assert block.type == "thinking"
        assert block.signature == "RW11bGF0b3Igc2lnbmF0dXJl"  # the emulator's, verbatim
        whole = c.messages.create(
            model="ant/m+reasoning",
            max_tokens=4096,
            thinking=thinking,
            messages=[{"role": "user", "content": PROMPT}],
        )
        assert whole.content[0].type == "thinking"
        assert whole.content[0].signature == block.signature
        c.messages.create(
            model="ant/m",
            max_tokens=4096,
            thinking=thinking,
            messages=[
                {"role": "user", "content": PROMPT},
                {"role": "assistant", "content": first.content},  # type: ignore[typeddict-item]
                {"role": "user", "content": "and now?"},
            ],
        )
    replayed = emulator.requests[-1].json["messages"][1]["content"][0]
    assert replayed == {
        "type": "thinking",
        "thinking": block.thinking,
        "signature": "RW11bGF0b3Igc2lnbmF0dXJl",
    }


def test_gemini_client_to_gemini_upstream_keeps_thought_signatures_and_own_config(
    matrix_gateway: RunningGateway, emulator: ThreadedEmulator
) -> None:
    key = matrix_gateway.create_key(name="native-gemini")
    client = genai.Client(
        api_key=key, http_options=types.HttpOptions(base_url=matrix_gateway.base_url)
    )
    config = types.GenerateContentConfig(
        tools=[types.Tool(function_declarations=[types.FunctionDeclaration(name="get_weather")])],
        thinking_config=types.ThinkingConfig(include_thoughts=True, thinking_budget=1024),
        top_k=5,
        safety_settings=[
            types.SafetySetting(
                category=types.HarmCategory.HARM_CATEGORY_HARASSMENT,
                threshold=types.HarmBlockThreshold.BLOCK_NONE,
            )
        ],
    )
    first = client.models.generate_content(
        model="gem/m+reasoning+tools=1", contents=PROMPT, config=config
    )
    sent = emulator.requests[-1].json
    # Verbatim: this SDK writes the inner fields in snake_case, which Google's parser accepts.
    assert sent["generationConfig"]["thinkingConfig"] == {
        "include_thoughts": True,
        "thinking_budget": 1024,
    }
    assert sent["generationConfig"]["topK"] == 5
    assert sent["safetySettings"] == [
        {"category": "HARM_CATEGORY_HARASSMENT", "threshold": "BLOCK_NONE"}
    ]
    assert first.candidates is not None
    content = first.candidates[0].content
    assert content is not None
    parts = content.parts or []
    assert parts[0].thought
    call = next(p for p in parts if p.function_call)
    assert call.thought_signature  # Gemini 3 wants it back on the call
    client.models.generate_content(
        model="gem/m",
        contents=[
            types.Content(role="user", parts=[types.Part(text=PROMPT)]),
            content,
            types.Content(
                role="user",
                parts=[types.Part.from_function_response(name="get_weather", response={"t": 3})],
            ),
        ],
        config=config,
    )
    model_turn = emulator.requests[-1].json["contents"][1]
    (sent_call,) = [p for p in model_turn["parts"] if "functionCall" in p]
    assert sent_call["thoughtSignature"].rstrip("=") == (
        "RW11bGF0b3IgdGhvdWdodCBzaWduYXR1cmU"  # the emulator's, as the SDK re-encodes it
    )
    client.close()


def test_auto_routed_to_a_native_upstream_keeps_its_extras(
    gateway_factory: Any, emulator: ThreadedEmulator
) -> None:
    base = emulator.base_url
    gateway = gateway_factory(
        providers={
            "mock": {"type": "mock"},
            "emu": {"type": "openai", "base_url": base + "/v1", "api_key": "k"},
            "ant": {"type": "anthropic", "base_url": base, "api_key": "k"},
        },
        models=[
            {"id": "ant/m", "provider": "ant"},
            {"id": "mock/echo", "provider": "mock"},
            {"id": "mock/lorem", "provider": "mock"},
            {"id": "emu/gpt", "provider": "emu"},
        ],
        router={"baskets": {"chat": "ant/m"}, "default_basket": "chat"},
    )
    key = gateway.create_key(name="auto")
    system: Any = [{"type": "text", "text": "Be brief.", "cache_control": {"type": "ephemeral"}}]
    with anthropic.Anthropic(base_url=gateway.base_url, api_key=key, max_retries=0) as client:
        message = client.messages.create(
            model="auto",
            max_tokens=100,
            system=system,
            messages=[{"role": "user", "content": PROMPT}],
        )
    assert message.model == "ant/m"
    assert emulator.requests[-1].json["system"] == system


# -- across dialects: each provider's signatures survive the other dialect's client -------------

GEMINI_SIGNATURE = "RW11bGF0b3IgdGhvdWdodCBzaWduYXR1cmU="
ANTHROPIC_SIGNATURE = "RW11bGF0b3Igc2lnbmF0dXJl"


@pytest.mark.parametrize("stream", [False, True], ids=["whole", "stream"])
def test_gemini_signatures_round_trip_through_an_anthropic_client(
    matrix_gateway: RunningGateway, emulator: ThreadedEmulator, stream: bool
) -> None:
    key = matrix_gateway.create_key(name="anthropic-to-gemini")
    tools: Any = [{"name": "get_weather", "input_schema": {"type": "object"}}]
    question: Any = {"role": "user", "content": PROMPT}
    with anthropic.Anthropic(base_url=matrix_gateway.base_url, api_key=key, max_retries=0) as c:
        if stream:
            with c.messages.stream(
                model="gem/m+reasoning+tools=1", max_tokens=500, messages=[question], tools=tools
            ) as events:
                first: Any = events.get_final_message()
        else:
            first = c.messages.create(
                model="gem/m+reasoning+tools=1", max_tokens=500, messages=[question], tools=tools
            )
        kinds = [block.type for block in first.content]
        assert kinds == ["thinking", "thinking", "tool_use"]
        assert first.content[0].thinking  # the thoughts, signed with the answer's signature
        assert first.content[0].signature == "llmrelay.gemini:" + GEMINI_SIGNATURE
        assert first.content[1].signature == "llmrelay.gemini.call:" + GEMINI_SIGNATURE
        call = first.content[2]
        c.messages.create(
            model="gem/m",
            max_tokens=500,
            tools=tools,
            messages=[
                question,
                {"role": "assistant", "content": first.content},
                {
                    "role": "user",
                    "content": [{"type": "tool_result", "tool_use_id": call.id, "content": "4C"}],
                },
            ],
        )
        model_turn = emulator.requests[-1].json["contents"][1]
        (sent_call,) = [p for p in model_turn["parts"] if "functionCall" in p]
        assert sent_call["thoughtSignature"] == GEMINI_SIGNATURE  # Gemini 3 wants it back
        assert sent_call["functionCall"]["name"] == "get_weather"
        # Marked blocks mean nothing to other providers and never reach them.
        c.messages.create(
            model="oai/m",
            max_tokens=500,
            tools=tools,
            messages=[
                question,
                {"role": "assistant", "content": first.content},
                {
                    "role": "user",
                    "content": [{"type": "tool_result", "tool_use_id": call.id, "content": "4C"}],
                },
            ],
        )
        assert "llmrelay.gemini" not in json.dumps(emulator.requests[-1].json)
        c.messages.create(
            model="ant/m",
            max_tokens=500,
            messages=[question, {"role": "assistant", "content": first.content[:2]}, question],
        )
        assert "llmrelay.gemini" not in json.dumps(emulator.requests[-1].json)


@pytest.mark.parametrize("stream", [False, True], ids=["whole", "stream"])
def test_anthropic_thinking_round_trips_through_a_gemini_client(
    matrix_gateway: RunningGateway, emulator: ThreadedEmulator, stream: bool
) -> None:
    key = matrix_gateway.create_key(name="gemini-to-anthropic")
    client = genai.Client(
        api_key=key, http_options=types.HttpOptions(base_url=matrix_gateway.base_url)
    )
    config = types.GenerateContentConfig(
        tools=[types.Tool(function_declarations=[types.FunctionDeclaration(name="get_weather")])]
    )
    model = "ant/m+reasoning+tools=1"
    if stream:
        chunks = list(
            client.models.generate_content_stream(model=model, contents=PROMPT, config=config)
        )
        parts = [
            part
            for chunk in chunks
            for candidate in chunk.candidates or ()
            for part in (candidate.content.parts if candidate.content else None) or ()
        ]
    else:
        answer = client.models.generate_content(model=model, contents=PROMPT, config=config)
        assert answer.candidates is not None
        assert answer.candidates[0].content is not None
        parts = answer.candidates[0].content.parts or []
    thoughts = "".join(p.text or "" for p in parts if p.thought)
    assert thoughts
    assert any(p.thought and p.thought_signature for p in parts)
    calls = [p for p in parts if p.function_call]
    assert len(calls) == 1
    client.models.generate_content(
        model="ant/m",
        contents=[
            types.Content(role="user", parts=[types.Part(text=PROMPT)]),
            types.Content(role="model", parts=parts),
            types.Content(
                role="user",
                parts=[types.Part.from_function_response(name="get_weather", response={"t": 4})],
            ),
        ],
        config=config,
    )
    assistant = emulator.requests[-1].json["messages"][1]
    assert assistant["content"][0] == {
        "type": "thinking",
        "thinking": thoughts,
        "signature": ANTHROPIC_SIGNATURE,  # verbatim, whatever the SDK did to the bytes' text
    }
    assert assistant["content"][1]["type"] == "tool_use"
    client.close()


def test_count_tokens_asks_the_providers_own_counter(
    matrix_gateway: RunningGateway, emulator: ThreadedEmulator
) -> None:
    key = matrix_gateway.create_key(name="count")
    question: Any = [{"role": "user", "content": PROMPT}]
    with anthropic.Anthropic(base_url=matrix_gateway.base_url, api_key=key, max_retries=0) as c:
        counted = c.messages.count_tokens(model="ant/m", system="Be brief.", messages=question)
        assert counted.input_tokens == count_prompt_tokens(question, "Be brief.")
        sent = emulator.requests[-1]
        assert sent.path == "/v1/messages/count_tokens"
        assert "max_tokens" not in sent.json
        assert sent.headers["x-api-key"] == "sk-ant-upstream"
        # Any surface can ask: the Gemini client's countTokens reaches the same counter.
        gemini = genai.Client(
            api_key=key, http_options=types.HttpOptions(base_url=matrix_gateway.base_url)
        )
        assert gemini.models.count_tokens(model="ant/m", contents=PROMPT).total_tokens == (
            PROMPT_TOKENS
        )
        gemini.close()
        # Never an estimate posing as a count: no counter, no number.
        with pytest.raises(anthropic.NotFoundError):
            c.messages.count_tokens(model="oai/m", messages=question)
    denied = matrix_gateway.create_key(name="count-denied", models=("oai/*",))
    with (
        anthropic.Anthropic(base_url=matrix_gateway.base_url, api_key=denied, max_retries=0) as c,
        pytest.raises(anthropic.PermissionDeniedError),
    ):
        c.messages.count_tokens(model="ant/m", messages=question)
