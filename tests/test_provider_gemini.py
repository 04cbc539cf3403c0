"""The Gemini provider: conversions, schema rewriting, the stream state machine, the guarded image
fetcher, and the provider against the emulator (and a scripted upstream for what it cannot do)."""

from __future__ import annotations

import asyncio
import ipaddress
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import orjson
import pytest
from aiohttp import web

from llmrelay.config import ModelConfig, ProviderConfig
from llmrelay.core.catalogue import ModelEntry
from llmrelay.core.errors import (
    InvalidRequest,
    UnsupportedParameter,
    UpstreamProtocolError,
    UpstreamRateLimited,
    UpstreamStatusError,
)
from llmrelay.core.types import ChatRequest, JSONObject, Usage
from llmrelay.core.validate import validate_chat_request
from llmrelay.providers.base import UpstreamRequest
from llmrelay.providers.capabilities import base_capabilities, check_request
from llmrelay.providers.gemini import GeminiProvider
from llmrelay.providers.gemini.convert import (
    CandidateReader,
    merge_deltas,
    messages_to_wire,
    request_to_wire,
    synthetic_call_id,
    usage_from_wire,
)
from llmrelay.providers.gemini.schema import to_gemini_schema
from llmrelay.providers.gemini.stream import GenerateStream
from llmrelay.providers.http import UpstreamClient
from llmrelay.providers.media import FetchLimits, ImageFetcher, is_public_address
from llmrelay.testing.emulator import EmulatorServer

PNG_BYTES = b"\x89PNG\r\n\x1a\n" + b"\0" * 16
PNG = "data:image/png;base64,iVBORw0KGgo="
WEATHER = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Current weather",
        "parameters": {
            "type": "object",
            "properties": {"city": {"type": "string"}},
            "required": ["city"],
            "additionalProperties": False,
        },
    },
}


def model(upstream: str = "gemini", **config: Any) -> ModelEntry:
    return ModelEntry.from_config(
        ModelConfig(id="google/test", provider="google", upstream=upstream, **config)
    )


def chat(messages: list[JSONObject] | None = None, **fields: Any) -> ChatRequest:
    messages = messages or [{"role": "user", "content": "hello there world"}]
    return validate_chat_request({"model": "google/test", "messages": messages, **fields})


def wire(request: ChatRequest, images: dict[str, tuple[str, str]] | None = None) -> JSONObject:
    return request_to_wire(request, model(), images or {})


def call(name: str, arguments: str, call_id: str, signature: str | None = None) -> JSONObject:
    tool_call: JSONObject = {
        "id": call_id,
        "type": "function",
        "function": {"name": name, "arguments": arguments},
    }
    if signature:
        tool_call["extra_content"] = {"google": {"thought_signature": signature}}
    return tool_call


# -- request conversion -------------------------------------------------------------------------


def test_system_and_developer_messages_become_system_instruction_in_order() -> None:
    body = wire(
        chat(
            [
                {"role": "developer", "content": "one"},
                {"role": "user", "content": "hi"},
                {"role": "system", "content": [{"type": "text", "text": "two"}]},
            ]
        )
    )
    assert body["systemInstruction"] == {"parts": [{"text": "one"}, {"text": "two"}]}
    assert body["contents"] == [{"role": "user", "parts": [{"text": "hi"}]}]


def test_roles_merge_and_empty_text_is_never_sent() -> None:
    _, contents = messages_to_wire(
        [
            {"role": "user", "content": "a"},
            {"role": "user", "content": [{"type": "text", "text": ""}]},
            {"role": "user", "content": "b"},
            {"role": "assistant", "content": ""},
            {"role": "assistant", "content": "c"},
        ],
        {},
    )
    assert contents == [
        {"role": "user", "parts": [{"text": "a"}, {"text": "b"}]},
        {"role": "model", "parts": [{"text": "c"}]},
    ]


def test_tool_calls_and_results_with_names_order_and_signatures() -> None:
    _, contents = messages_to_wire(
        [
            {"role": "user", "content": "weather in two places"},
            {
                "role": "assistant",
                "content": None,
                "tool_calls": [
                    call("get_weather", '{"city": "Oslo"}', "call_a", signature="sig-1"),
                    call("get_time", "", "call_b"),
                ],
            },
            {"role": "tool", "tool_call_id": "call_b", "content": "noon"},
            {"role": "tool", "tool_call_id": "call_a", "content": '{"temp_c": 4}'},
        ],
        {},
    )
    assert contents[1] == {
        "role": "model",
        "parts": [
            {
                "functionCall": {"name": "get_weather", "args": {"city": "Oslo"}},
                "thoughtSignature": "sig-1",
            },
            {"functionCall": {"name": "get_time", "args": {}}},
        ],
    }
    # One user turn, in the order of the calls (not of the tool messages), named after them.
    assert contents[2] == {
        "role": "user",
        "parts": [
            {"functionResponse": {"name": "get_weather", "response": {"temp_c": 4}}},
            {"functionResponse": {"name": "get_time", "response": {"result": "noon"}}},
        ],
    }


def test_a_tool_result_for_an_unknown_call_is_a_400() -> None:
    with pytest.raises(InvalidRequest) as caught:
        messages_to_wire([{"role": "tool", "tool_call_id": "nope", "content": "x"}], {})
    assert caught.value.param == "messages[0].tool_call_id"


def test_message_level_signature_rides_on_the_text_part() -> None:
    message = {
        "role": "assistant",
        "content": "Hi",
        "extra_content": {"google": {"thought_signature": "s"}},
    }
    _, contents = messages_to_wire([{"role": "user", "content": "q"}, message], {})
    assert contents[1]["parts"] == [{"text": "Hi", "thoughtSignature": "s"}]


def test_media_parts_become_inline_data() -> None:
    url = "https://example.com/cat.png"
    content = [
        {"type": "image_url", "image_url": {"url": PNG}},
        {"type": "image_url", "image_url": {"url": url}},
        {"type": "input_audio", "input_audio": {"data": "UklGRg==", "format": "wav"}},
        {"type": "file", "file": {"file_data": "data:application/pdf;base64,JVBERi0="}},
    ]
    _, contents = messages_to_wire(
        [{"role": "user", "content": content}], {url: ("image/jpeg", "/9j/")}
    )
    assert contents[0]["parts"] == [
        {"inlineData": {"mimeType": "image/png", "data": "iVBORw0KGgo="}},
        {"inlineData": {"mimeType": "image/jpeg", "data": "/9j/"}},
        {"inlineData": {"mimeType": "audio/wav", "data": "UklGRg=="}},
        {"inlineData": {"mimeType": "application/pdf", "data": "JVBERi0="}},
    ]


def test_tools_tool_choice_and_generation_config() -> None:
    schema = {"type": "object", "properties": {"a": {"type": "integer"}}}
    body = wire(
        chat(
            tools=[WEATHER, {"type": "function", "function": {"name": "now"}}],
            tool_choice={"type": "function", "function": {"name": "now"}},
            max_tokens=100,
            temperature=1.5,
            top_p=0.9,
            seed=7,
            stop=["END", "STOP"],
            n=2,
            presence_penalty=0.5,
            frequency_penalty=0.25,
            response_format={"type": "json_schema", "json_schema": {"name": "x", "schema": schema}},
            reasoning_effort="low",
            safetySettings=[{"category": "HARM_CATEGORY_HARASSMENT", "threshold": "BLOCK_NONE"}],
        )
    )
    assert body["tools"] == [
        {
            "functionDeclarations": [
                {
                    "name": "get_weather",
                    "description": "Current weather",
                    "parameters": {
                        "type": "OBJECT",
                        "properties": {"city": {"type": "STRING"}},
                        "required": ["city"],
                    },
                },
                {"name": "now"},  # no parameters at all: Gemini refuses an empty OBJECT
            ]
        }
    ]
    assert body["toolConfig"] == {
        "functionCallingConfig": {"mode": "ANY", "allowedFunctionNames": ["now"]}
    }
    assert body["generationConfig"] == {
        "maxOutputTokens": 100,
        "temperature": 1.5,
        "topP": 0.9,
        "seed": 7,
        "presencePenalty": 0.5,
        "frequencyPenalty": 0.25,
        "stopSequences": ["END", "STOP"],
        "candidateCount": 2,
        "responseMimeType": "application/json",
        "responseSchema": {"type": "OBJECT", "properties": {"a": {"type": "INTEGER"}}},
        "thinkingConfig": {"thinkingBudget": 1024, "includeThoughts": True},
    }
    assert body["safetySettings"][0]["threshold"] == "BLOCK_NONE"  # Gemini's own field passes


@pytest.mark.parametrize(
    ("choice", "expected"),
    [("auto", {"mode": "AUTO"}), ("none", {"mode": "NONE"}), ("required", {"mode": "ANY"})],
)
def test_tool_choice_modes(choice: str, expected: JSONObject) -> None:
    body = wire(chat(tools=[WEATHER], tool_choice=choice))
    assert body["toolConfig"] == {"functionCallingConfig": expected}


def test_json_object_asks_for_json_without_a_schema() -> None:
    config = wire(chat(response_format={"type": "json_object"}))["generationConfig"]
    assert config == {"responseMimeType": "application/json"}


@pytest.mark.parametrize(
    ("fields", "param"),
    [
        ({"logprobs": True}, "logprobs"),
        ({"stop": ["a", "b", "c", "d"], "logit_bias": {"1": 2}}, "logit_bias"),
        ({"audio": {"voice": "x"}}, "audio"),
    ],
)
def test_what_gemini_cannot_honour_is_refused(fields: dict[str, Any], param: str) -> None:
    with pytest.raises(UnsupportedParameter) as caught:
        check_request(chat(**fields), model(), base_capabilities("gemini"), "google")
    assert caught.value.param == param
    assert "'google'" in caught.value.message


def test_audio_only_goes_to_models_that_take_it() -> None:
    audio = {"type": "input_audio", "input_audio": {"data": "AAAA", "format": "mp3"}}
    request = chat([{"role": "user", "content": [audio]}])
    caps = base_capabilities("gemini")
    check_request(request, model(), caps, "google")  # nothing declared: allowed
    check_request(request, model(capabilities=["audio", "vision"]), caps, "google")
    with pytest.raises(UnsupportedParameter) as caught:
        check_request(request, model(capabilities=["tools", "vision"]), caps, "google")
    assert caught.value.param == "messages[0].content[0]"


# -- schema rewriting ---------------------------------------------------------------------------


def test_schema_refs_are_inlined_and_unknown_keywords_dropped() -> None:
    schema = {
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "type": "object",
        "additionalProperties": False,
        "$defs": {
            "Point": {
                "type": "object",
                "properties": {"x": {"type": "number", "format": "double"}},
                "required": ["x", "ghost"],
            },
            "Node": {
                "type": "object",
                "properties": {"next": {"$ref": "#/$defs/Node"}, "v": {"type": "string"}},
            },
        },
        "properties": {
            "at": {"$ref": "#/$defs/Point", "description": "where"},
            "node": {"$ref": "#/$defs/Node"},
            "email": {"type": "string", "format": "email", "examples": ["a@b"]},
        },
    }
    assert to_gemini_schema(schema) == {
        "type": "OBJECT",
        "properties": {
            "at": {
                "type": "OBJECT",
                "description": "where",
                "properties": {"x": {"type": "NUMBER", "format": "double"}},
                "required": ["x"],
            },
            "node": {
                "type": "OBJECT",
                "properties": {"next": {"type": "OBJECT"}, "v": {"type": "STRING"}},
            },
            "email": {"type": "STRING"},
        },
    }


@pytest.mark.parametrize(
    ("schema", "expected"),
    [
        ({"type": ["string", "null"]}, {"type": "STRING", "nullable": True}),
        (
            {"anyOf": [{"type": "integer"}, {"type": "null"}], "description": "d"},
            {"type": "INTEGER", "nullable": True, "description": "d"},
        ),
        (
            {"oneOf": [{"type": "integer"}, {"type": "string"}]},
            {"anyOf": [{"type": "INTEGER"}, {"type": "STRING"}]},
        ),
        (
            {"type": ["integer", "string"]},
            {"anyOf": [{"type": "INTEGER"}, {"type": "STRING"}]},
        ),
        ({"const": "only"}, {"enum": ["only"], "type": "STRING"}),
        ({"type": "integer", "enum": [1, 2]}, {"type": "INTEGER"}),
        ({"enum": ["a", None]}, {"enum": ["a"], "type": "STRING", "nullable": True}),
        (
            {
                "allOf": [
                    {"properties": {"a": {"type": "string"}}, "required": ["a"]},
                    {"properties": {"b": {"type": "boolean"}}},
                ]
            },
            {
                "type": "OBJECT",
                "properties": {"a": {"type": "STRING"}, "b": {"type": "BOOLEAN"}},
                "required": ["a"],
            },
        ),
        (
            {"type": "array", "items": {"type": "string"}, "maxItems": 3},
            {"type": "ARRAY", "items": {"type": "STRING"}, "maxItems": 3},
        ),
        ("not a schema", {}),
    ],
)
def test_schema_keyword_rewrites(schema: Any, expected: JSONObject) -> None:
    assert to_gemini_schema(schema) == expected


# -- answer conversion --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("reason", "called", "expected"),
    [
        ("STOP", False, "stop"),
        ("STOP", True, "tool_calls"),
        ("MAX_TOKENS", True, "length"),
        ("SAFETY", False, "content_filter"),
        ("RECITATION", False, "content_filter"),
        ("BLOCKLIST", False, "content_filter"),
        ("PROHIBITED_CONTENT", False, "content_filter"),
        ("SPII", False, "content_filter"),
        ("IMAGE_SAFETY", False, "content_filter"),
        ("MALFORMED_FUNCTION_CALL", False, "stop"),
        ("SOMETHING_NEW", False, "stop"),
    ],
)
def test_finish_reasons(reason: str, called: bool, expected: str) -> None:
    reader = CandidateReader("req", 0)
    reader.called = called
    assert reader.finish_reason(reason) == expected


def test_usage_adds_thoughts_to_completion_and_tool_prompt_to_prompt() -> None:
    usage = usage_from_wire(
        {
            "promptTokenCount": 310,
            "toolUsePromptTokenCount": 20,
            "candidatesTokenCount": 7,
            "thoughtsTokenCount": 52,
            "cachedContentTokenCount": 256,
            "totalTokenCount": 389,
        }
    )
    assert usage == Usage(
        prompt_tokens=330, completion_tokens=59, cached_tokens=256, reasoning_tokens=52
    )


def test_parts_become_one_message_with_stable_tool_ids() -> None:
    parts: list[JSONObject] = [
        {"text": "plan", "thought": True, "thoughtSignature": "t-sig"},
        {"text": "Calling."},
        {
            "functionCall": {"name": "get_weather", "args": {"city": "Oslo"}},
            "thoughtSignature": "f-sig",
        },
        {"functionCall": {"name": "now"}},
        {"functionCall": {"name": "x", "args": {}, "id": "gemini-own-id"}},
    ]
    message = merge_deltas(CandidateReader("req-1", 0).deltas(parts))
    again = merge_deltas(CandidateReader("req-1", 0).deltas(parts))
    assert message == again
    assert message["content"] == "Calling."
    assert message["reasoning_content"] == "plan"
    assert message["extra_content"] == {"google": {"thought_signature": "t-sig"}}
    first, second, third = message["tool_calls"]
    assert first["id"] == synthetic_call_id("req-1", 0, 0, "get_weather")
    assert first["extra_content"] == {"google": {"thought_signature": "f-sig"}}
    assert second["function"] == {"name": "now", "arguments": "{}"}
    assert third["id"] == "gemini-own-id"
    assert len({first["id"], second["id"]}) == 2
    assert synthetic_call_id("req-2", 0, 0, "get_weather") != first["id"]


def test_stream_takes_the_last_usage_never_the_sum_and_keeps_candidates_apart() -> None:
    state = GenerateStream("google", "req")
    usage = {"promptTokenCount": 5, "candidatesTokenCount": 1, "totalTokenCount": 6}
    final = {"promptTokenCount": 5, "candidatesTokenCount": 3, "totalTokenCount": 8}
    chunks = state.feed(
        {
            "candidates": [
                {"index": 0, "content": {"parts": [{"text": "a"}]}},
                {"index": 1, "content": {"parts": [{"functionCall": {"name": "f"}}]}},
            ],
            "usageMetadata": usage,
        }
    )
    chunks += state.feed(
        {
            "candidates": [
                {"index": 0, "content": {"parts": [{"text": "b"}]}, "finishReason": "STOP"},
                {"index": 1, "content": {"parts": []}, "finishReason": "STOP"},
            ],
            "usageMetadata": final,
        }
    )
    chunks += state.finish()
    finishes = {
        c["choices"][0]["index"]: c["choices"][0]["finish_reason"]
        for c in chunks[:-1]
        if c["choices"][0]["finish_reason"]
    }
    assert finishes == {0: "stop", 1: "tool_calls"}
    assert chunks[-1]["usage"]["completion_tokens"] == 3
    assert chunks[-1]["choices"] == []


def test_a_stream_that_never_finishes_is_a_protocol_error() -> None:
    state = GenerateStream("google", "req")
    state.feed({"candidates": [{"index": 0, "content": {"parts": [{"text": "a"}]}}]})
    with pytest.raises(UpstreamProtocolError):
        state.finish()


# -- the guarded image fetcher ------------------------------------------------------------------


@pytest.mark.parametrize(
    ("address", "public"),
    [
        ("127.0.0.1", False),
        ("10.1.2.3", False),
        ("172.16.0.1", False),
        ("192.168.1.1", False),
        ("169.254.169.254", False),
        ("100.64.0.1", False),
        ("0.0.0.0", False),
        ("::1", False),
        ("fe80::1", False),
        ("fd00::1", False),
        ("::ffff:127.0.0.1", False),
        ("224.0.0.1", False),
        ("8.8.8.8", True),
        ("2606:4700:4700::1111", True),
    ],
)
def test_public_addresses(address: str, public: bool) -> None:
    assert is_public_address(ipaddress.ip_address(address)) is public


ImageServer = Callable[[web.Application], Awaitable[str]]


@pytest.fixture
async def image_server() -> AsyncIterator[ImageServer]:
    runners: list[web.AppRunner] = []

    async def start(app: web.Application) -> str:
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        runners.append(runner)
        return f"{runner.addresses[0][1]}"

    yield start
    for runner in runners:
        await runner.cleanup()


def image_app() -> web.Application:
    async def png(request: web.Request) -> web.Response:
        return web.Response(body=PNG_BYTES, content_type="application/octet-stream")

    async def big(request: web.Request) -> web.Response:
        return web.Response(body=b"\0" * 5000, content_type="image/png")

    async def html(request: web.Request) -> web.Response:
        return web.Response(text="<html></html>", content_type="text/html")

    async def slow(request: web.Request) -> web.Response:
        await asyncio.sleep(0.5)
        return web.Response(body=PNG_BYTES, content_type="image/png")

    async def redirect(request: web.Request) -> web.Response:
        raise web.HTTPFound(request.query["to"])

    app = web.Application()
    for path, handler in (("/png", png), ("/big", big), ("/html", html), ("/slow", slow)):
        app.router.add_get(path, handler)
    app.router.add_get("/redirect", redirect)
    return app


def loopback_fetcher(**limits: Any) -> ImageFetcher:
    """Resolves names as the test says and treats only 127.0.0.1 as public."""
    names = {"images.test": ["127.0.0.1"], "mixed.test": ["127.0.0.1", "10.1.2.3"]}

    async def resolve(host: str, port: int) -> list[str]:
        return names.get(host, [])

    return ImageFetcher(
        FetchLimits(**limits),
        resolve=resolve,
        allow=lambda ip: ip == ipaddress.ip_address("127.0.0.1"),
    )


async def test_fetcher_fetches_sniffs_and_refuses(image_server: ImageServer) -> None:
    port = await image_server(image_app())
    fetcher = loopback_fetcher(max_bytes=1000, timeout_seconds=0.2)
    base = f"http://images.test:{port}"
    try:
        mime, data = await fetcher.fetch(f"{base}/png", "p")
        assert mime == "image/png"
        assert data.startswith("iVBORw0KGgo")
        for path, words in (
            ("/big", "larger than 1000 bytes"),
            ("/html", "not an image"),
            ("/slow", "longer than 0.2s"),
            (f"/redirect?to=http://mixed.test:{port}/png", "non-public address (10.1.2.3)"),
            ("/missing", "HTTP 404"),
        ):
            with pytest.raises(InvalidRequest) as caught:
                await fetcher.fetch(base + path, "messages[0].content[0].image_url.url")
            assert words in caught.value.message
            assert caught.value.param == "messages[0].content[0].image_url.url"
        with pytest.raises(InvalidRequest, match="non-public"):
            await fetcher.fetch(f"http://mixed.test:{port}/png", "p")
        with pytest.raises(InvalidRequest, match="only http and https"):
            await fetcher.fetch("file:///etc/passwd", "p")
    finally:
        await fetcher.close()


async def test_default_fetcher_refuses_loopback(image_server: ImageServer) -> None:
    port = await image_server(image_app())
    fetcher = ImageFetcher()
    try:
        for url in (f"http://127.0.0.1:{port}/png", f"http://localhost:{port}/png"):
            with pytest.raises(InvalidRequest, match="public address"):
                await fetcher.fetch(url, "p")
    finally:
        await fetcher.close()


# -- against the emulator -----------------------------------------------------------------------


@pytest.fixture
async def emu() -> AsyncIterator[EmulatorServer]:
    async with EmulatorServer() as server:
        yield server


@pytest.fixture
async def client() -> AsyncIterator[UpstreamClient]:
    upstream = UpstreamClient()
    upstream.start()
    yield upstream
    await upstream.close()


def gemini(
    client: UpstreamClient, base_url: str, fetcher: ImageFetcher | None = None
) -> GeminiProvider:
    config = ProviderConfig(type="gemini", base_url=base_url, api_key="g-key")
    return GeminiProvider("google", config, client, fetcher)


async def test_complete_and_stream_urls_auth_and_system_instruction(
    client: UpstreamClient, emu: EmulatorServer
) -> None:
    provider = gemini(client, emu.base_url)
    request = chat(
        [
            {"role": "system", "content": "be brief"},
            {"role": "user", "content": "hello there world"},
        ]
    )
    entry = model("gemini-2.5-flash+chunks=4")
    completion = await provider.complete(UpstreamRequest(request, entry, "r"))
    chunks = [c async for c in provider.stream(UpstreamRequest(request, entry, "r"))]
    whole, streamed = await emu.wait_for_requests(2)
    assert whole.path == "/v1beta/models/gemini-2.5-flash+chunks=4:generateContent"
    assert streamed.path == "/v1beta/models/gemini-2.5-flash+chunks=4:streamGenerateContent"
    assert streamed.query == {"alt": "sse"}
    assert whole.headers["x-goog-api-key"] == "g-key"
    assert "key" not in whole.query
    assert whole.json["systemInstruction"] == {"parts": [{"text": "be brief"}]}
    text = "".join(c["choices"][0]["delta"].get("content") or "" for c in chunks if c["choices"])
    assert text == completion.body["choices"][0]["message"]["content"] == "Echo: hello there world"
    await provider.close()


async def test_signatures_and_synthetic_ids_survive_the_next_turn(
    client: UpstreamClient, emu: EmulatorServer
) -> None:
    provider = gemini(client, emu.base_url)
    entry = model("gemini-3+tools=2+reasoning=2")
    request = chat(tools=[WEATHER])
    message = (await provider.complete(UpstreamRequest(request, entry, "req-7"))).body["choices"][
        0
    ]["message"]
    chunks = [c async for c in provider.stream(UpstreamRequest(request, entry, "req-7"))]
    streamed = [
        t for c in chunks if c["choices"] for t in c["choices"][0]["delta"].get("tool_calls", ())
    ]
    assert [t["id"] for t in streamed] == [t["id"] for t in message["tool_calls"]]
    assert [t["index"] for t in streamed] == [0, 1]
    assert message["tool_calls"][0]["extra_content"]["google"]["thought_signature"]
    follow_up = chat(
        [
            {"role": "user", "content": "hello there world"},
            message,
            {"role": "tool", "tool_call_id": message["tool_calls"][1]["id"], "content": "2"},
            {"role": "tool", "tool_call_id": message["tool_calls"][0]["id"], "content": "1"},
        ],
        tools=[WEATHER],
    )
    await provider.complete(UpstreamRequest(follow_up, model("gemini-3"), "req-8"))
    seen = (await emu.wait_for_requests(3))[2]
    model_turn, responses = seen.json["contents"][1], seen.json["contents"][2]
    assert (
        model_turn["parts"][0]["thoughtSignature"]
        == message["tool_calls"][0]["extra_content"]["google"]["thought_signature"]
    )
    answers = [p["functionResponse"]["response"] for p in responses["parts"]]
    assert answers == [{"result": 1}, {"result": 2}]  # in call order, not message order
    await provider.close()


async def test_remote_images_are_fetched_by_the_gateway_and_inlined(
    client: UpstreamClient, emu: EmulatorServer, image_server: ImageServer
) -> None:
    port = await image_server(image_app())
    provider = gemini(client, emu.base_url, loopback_fetcher())
    url = f"http://images.test:{port}/png"
    request = chat(
        [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": url}}]}]
    )
    await provider.complete(UpstreamRequest(request, model("gemini"), "r"))
    (seen,) = await emu.wait_for_requests(1)
    assert seen.json["contents"][0]["parts"][0]["inlineData"]["mimeType"] == "image/png"
    await provider.close()


async def test_an_image_on_a_private_address_is_refused_before_any_upstream_call(
    client: UpstreamClient, emu: EmulatorServer
) -> None:
    provider = gemini(client, emu.base_url)
    url = emu.base_url + "/v1beta/models"
    request = chat(
        [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": url}}]}]
    )
    with pytest.raises(InvalidRequest) as caught:
        await anext(provider.stream(UpstreamRequest(request, model("gemini"), "r")))
    assert caught.value.param == "messages[0].content[0].image_url.url"
    assert emu.requests == []
    await provider.close()


# -- what the emulator cannot do: a scripted upstream ------------------------------------------


@pytest.fixture
async def scripted(
    image_server: ImageServer,
) -> Callable[[int, Any, dict[str, str]], Awaitable[str]]:
    async def start(status: int, payload: Any, headers: dict[str, str]) -> str:
        body = orjson.dumps(payload)

        async def answer(request: web.Request) -> web.StreamResponse:
            if request.query.get("alt") == "sse" and status == 200:
                response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
                await response.prepare(request)
                await response.write(b"data: " + body + b"\r\n\r\n")
                return response
            return web.Response(
                status=status, body=body, content_type="application/json", headers=headers
            )

        app = web.Application()
        app.router.add_post("/v1beta/models/{target:.+}", answer)
        return "http://127.0.0.1:" + await image_server(app)

    return start


async def test_a_blocked_prompt_is_a_400(
    client: UpstreamClient, scripted: Callable[[int, Any, dict[str, str]], Awaitable[str]]
) -> None:
    base = await scripted(
        200,
        {"promptFeedback": {"blockReason": "SAFETY"}, "usageMetadata": {"promptTokenCount": 3}},
        {},
    )
    provider = gemini(client, base)
    call_ = UpstreamRequest(chat(), model("gemini"), "r")
    for attempt in (provider.complete(call_), anext(provider.stream(call_))):
        with pytest.raises(UpstreamStatusError) as caught:
            await attempt
        assert caught.value.http_status == 400
        assert caught.value.error_type == "content_filter"
        assert "SAFETY" in caught.value.message
    await provider.close()


async def test_retry_delay_from_the_status_details(
    client: UpstreamClient, scripted: Callable[[int, Any, dict[str, str]], Awaitable[str]]
) -> None:
    error = {
        "error": {
            "code": 429,
            "message": "Resource has been exhausted",
            "status": "RESOURCE_EXHAUSTED",
            "details": [{"@type": "type.googleapis.com/google.rpc.RetryInfo", "retryDelay": "31s"}],
        }
    }
    provider = gemini(client, await scripted(429, error, {}))
    with pytest.raises(UpstreamRateLimited) as caught:
        await provider.complete(UpstreamRequest(chat(), model("gemini"), "r"))
    assert caught.value.retry_after == 31
    assert "RESOURCE_EXHAUSTED" in caught.value.message
    await provider.close()


async def test_an_invalid_api_key_is_the_gateways_problem_not_the_clients(
    client: UpstreamClient, scripted: Callable[[int, Any, dict[str, str]], Awaitable[str]]
) -> None:
    error = {
        "error": {
            "code": 400,
            "message": "API key not valid. Please pass a valid API key.",
            "status": "INVALID_ARGUMENT",
            "details": [
                {"@type": "type.googleapis.com/google.rpc.ErrorInfo", "reason": "API_KEY_INVALID"}
            ],
        }
    }
    provider = gemini(client, await scripted(400, error, {}))
    with pytest.raises(UpstreamStatusError) as caught:
        await provider.complete(UpstreamRequest(chat(), model("gemini"), "r"))
    assert caught.value.http_status == 502
    assert caught.value.error_type == "upstream_auth_error"
    await provider.close()


async def test_an_answer_without_candidates_is_a_protocol_error(
    client: UpstreamClient, scripted: Callable[[int, Any, dict[str, str]], Awaitable[str]]
) -> None:
    provider = gemini(client, await scripted(200, {"usageMetadata": {"promptTokenCount": 3}}, {}))
    call_ = UpstreamRequest(chat(), model("gemini"), "r")
    with pytest.raises(UpstreamProtocolError):
        await provider.complete(call_)
    with pytest.raises(UpstreamProtocolError):
        await anext(provider.stream(call_))  # the body ends without a finish reason
    await provider.close()
