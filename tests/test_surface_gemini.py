"""End to end: the official ``google-genai`` SDK (and raw bytes) against the Gemini surface.

The upstream here is the OpenAI-typed emulator and the built-in mock: the surface must turn any
model's canonical answer into Gemini's exact shapes. tests/test_surface_matrix.py crosses the
surface with Anthropic- and Gemini-typed upstreams.
"""

from __future__ import annotations

import logging
import socket
import time
from collections.abc import AsyncIterator, Iterator
from typing import Any

import httpx
import orjson
import pytest
from google import genai
from google.genai import errors, types

from llmrelay.api.gemini_request import to_json_schema
from llmrelay.api.gemini_stream import GenerateEncoder
from llmrelay.core.errors import UpstreamUnavailable
from llmrelay.core.exchange import Exchange
from llmrelay.core.types import Usage
from llmrelay.testing.emulator import count_prompt_tokens
from llmrelay.testing.harness import RunningGateway, ThreadedEmulator

# google-genai subclasses aiohttp.ClientSession (its default async transport with aiohttp).
pytestmark = pytest.mark.filterwarnings(
    "ignore:Inheritance class AiohttpClientSession from ClientSession:DeprecationWarning"
)

SYSTEM = "Be brief."
PROMPT = "hello there gateway"
CONTENTS: Any = [{"role": "user", "parts": [{"text": PROMPT}]}]
CANONICAL = [{"role": "system", "content": SYSTEM}, {"role": "user", "content": PROMPT}]
ANSWER = "Echo: hello there gateway lorem ipsum dolor sit"
TOOLS = [
    types.Tool(
        function_declarations=[
            types.FunctionDeclaration(
                name="get_weather",
                description="Weather now",
                parameters=types.Schema(
                    type=types.Type.OBJECT,
                    properties={"city": types.Schema(type=types.Type.STRING, nullable=True)},
                    required=["city"],
                ),
            ),
            types.FunctionDeclaration(name="get_time"),
        ]
    )
]


@pytest.fixture
def key(gateway: RunningGateway) -> str:
    return gateway.create_key(name="user")


def make_client(gateway: RunningGateway, key: str) -> genai.Client:
    return genai.Client(api_key=key, http_options=types.HttpOptions(base_url=gateway.base_url))


@pytest.fixture
def client(gateway: RunningGateway, key: str) -> Iterator[genai.Client]:
    client = make_client(gateway, key)
    yield client
    client.close()


@pytest.fixture
async def aio(gateway: RunningGateway, key: str) -> AsyncIterator[genai.client.AsyncClient]:
    """The async client over its default transport (aiohttp; its line reader differs)."""
    sync_client = make_client(gateway, key)
    async with sync_client.aio as aio:
        yield aio
    sync_client.close()


def post(
    gateway: RunningGateway, key: str | None, path: str, body: Any = None, **kwargs: Any
) -> httpx.Response:
    headers = {"x-goog-api-key": key} if key else {}
    payload = {"contents": CONTENTS} if body is None else body
    if isinstance(payload, bytes):
        headers["content-type"] = "application/json"
        return httpx.post(gateway.base_url + path, content=payload, headers=headers, timeout=30)
    return httpx.post(gateway.base_url + path, json=payload, headers=headers, timeout=30, **kwargs)


def sse_frames(body: bytes) -> list[Any]:
    """Every event's JSON; asserts the framing is ``data: {json}\\r\\n\\r\\n`` and blank lines."""
    frames = []
    for line in body.split(b"\r\n"):
        if not line:
            continue
        assert line.startswith(b"data: {"), line
        frames.append(orjson.loads(line[len(b"data: ") :]))
    assert b"\n" not in body.replace(b"\r\n", b"")
    return frames


def text_of(responses: list[Any]) -> str:
    return "".join(
        part.get("text", "")
        for response in responses
        for candidate in response.get("candidates", ())
        for part in candidate["content"]["parts"]
        if not part.get("thought")
    )


# -- answers ------------------------------------------------------------------------------------


def test_generate_content(
    gateway: RunningGateway, client: genai.Client, emulator: ThreadedEmulator
) -> None:
    response = client.models.generate_content(
        model="emu/gpt",
        contents=PROMPT,
        config=types.GenerateContentConfig(system_instruction=SYSTEM),
    )
    assert response.text == ANSWER
    assert response.candidates is not None
    assert response.candidates[0].finish_reason == types.FinishReason.STOP
    assert response.model_version == "emu/gpt"
    assert response.sdk_http_response is not None
    headers = response.sdk_http_response.headers or {}
    assert response.response_id == headers["x-request-id"]
    assert headers["x-resolved-model"] == "emu/gpt"
    usage = response.usage_metadata
    assert usage is not None
    prompt = count_prompt_tokens(CANONICAL)
    assert (usage.prompt_token_count, usage.candidates_token_count) == (prompt, 8)
    assert usage.total_token_count == prompt + 8
    upstream = emulator.requests[-1]
    assert upstream.json["messages"] == CANONICAL
    assert upstream.headers["authorization"] == "Bearer sk-upstream-secret"
    assert response.response_id is not None
    row = gateway.ledger_row(response.response_id)
    assert (row.surface, row.status, row.prompt_tokens, row.completion_tokens) == (
        "gemini",
        "ok",
        prompt,
        8,
    )


def test_stream_matches_generate_and_ends_with_finish_and_usage(client: genai.Client) -> None:
    whole = client.models.generate_content(model="emu/gpt", contents=PROMPT)
    chunks = list(client.models.generate_content_stream(model="emu/gpt", contents=PROMPT))
    assert "".join(chunk.text or "" for chunk in chunks) == whole.text == ANSWER
    assert len({chunk.response_id for chunk in chunks}) == 1
    assert all(c.candidates and c.candidates[0].finish_reason is None for c in chunks[:-1])
    last = chunks[-1]
    assert last.candidates is not None
    assert last.candidates[0].finish_reason == types.FinishReason.STOP
    assert last.usage_metadata == whole.usage_metadata


async def test_async_stream_over_aiohttp(aio: genai.client.AsyncClient) -> None:
    stream = await aio.models.generate_content_stream(model="emu/gpt+chunks=3", contents=PROMPT)
    texts = [chunk.text async for chunk in stream]
    assert "".join(t or "" for t in texts) == "Echo: hello there"


def test_sse_framing_is_data_lines_only(gateway: RunningGateway, key: str) -> None:
    response = post(gateway, key, "/v1beta/models/emu/gpt:streamGenerateContent?alt=sse")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/event-stream")
    frames = sse_frames(response.content)
    assert response.content.endswith(b"}\r\n\r\n")
    assert text_of(frames) == ANSWER
    assert all("usageMetadata" not in frame for frame in frames[:-1])
    last = frames[-1]
    assert last["candidates"][0]["finishReason"] == "STOP"
    assert last["usageMetadata"]["candidatesTokenCount"] == 8
    assert {frame["responseId"] for frame in frames} == {response.headers["x-request-id"]}
    assert {frame["modelVersion"] for frame in frames} == {"emu/gpt"}


def test_without_alt_the_stream_is_one_json_array(gateway: RunningGateway, key: str) -> None:
    response = post(gateway, key, "/v1beta/models/emu/gpt:streamGenerateContent")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("application/json")
    elements = orjson.loads(response.content)
    assert isinstance(elements, list)
    assert len(elements) > 2
    assert text_of(elements) == ANSWER
    assert elements[-1]["candidates"][0]["finishReason"] == "STOP"


def test_function_calling_round_trip(client: genai.Client, emulator: ThreadedEmulator) -> None:
    config = types.GenerateContentConfig(tools=TOOLS)
    first = client.models.generate_content(model="emu/gpt+tools=2", contents=PROMPT, config=config)
    calls = first.function_calls or []
    assert [call.name for call in calls] == ["get_weather", "get_time"]
    assert [call.args for call in calls] == [
        {"query": "hello", "index": 0},
        {"query": "there", "index": 1},
    ]
    # The canonical tool-call ids travel in functionCall.id.
    assert all(call.id for call in calls)
    declared = emulator.requests[-1].json["tools"][0]["function"]
    assert declared == {
        "name": "get_weather",
        "description": "Weather now",
        "parameters": {
            "type": "object",
            "properties": {"city": {"type": ["string", "null"]}},
            "required": ["city"],
        },
    }
    streamed = list(
        client.models.generate_content_stream(
            model="emu/gpt+tools=2", contents=PROMPT, config=config
        )
    )
    streamed_calls = [c for chunk in streamed for c in chunk.function_calls or []]
    assert [(c.name, c.args) for c in streamed_calls] == [(c.name, c.args) for c in calls]
    assert first.candidates is not None
    history = [
        types.Content(role="user", parts=[types.Part(text=PROMPT)]),
        first.candidates[0].content,
        types.Content(
            role="user",
            parts=[
                # The second answer names its call; the first relies on name and order.
                types.Part.from_function_response(name="get_weather", response={"temp": 3}),
                types.Part(
                    function_response=types.FunctionResponse(
                        id=calls[1].id, name="get_time", response={"time": "noon"}
                    )
                ),
                types.Part(text="and now?"),
            ],
        ),
    ]
    answer = client.models.generate_content(model="emu/gpt", contents=history, config=config)
    assert (answer.text or "").startswith("Echo: and now?")
    sent = emulator.requests[-1].json["messages"]
    assert [c["id"] for c in sent[1]["tool_calls"]] == [calls[0].id, calls[1].id]
    assert sent[2] == {"role": "tool", "tool_call_id": calls[0].id, "content": '{"temp":3}'}
    assert sent[3] == {"role": "tool", "tool_call_id": calls[1].id, "content": '{"time":"noon"}'}
    assert sent[4] == {"role": "user", "content": "and now?"}


def test_function_calls_without_ids_get_stable_synthetic_ones(
    gateway: RunningGateway, key: str, emulator: ThreadedEmulator
) -> None:
    model_turn = {
        "role": "model",
        "parts": [
            {"functionCall": {"name": "get_time", "args": {}}},
            {"functionCall": {"name": "get_time", "args": {"tz": "UTC"}}},
        ],
    }
    answers = {
        "role": "user",
        "parts": [
            {"functionResponse": {"name": "get_time", "response": {"time": "1"}}},
            {"functionResponse": {"name": "get_time", "response": {"time": "2"}}},
        ],
    }
    body = {"contents": [*CONTENTS, model_turn, answers]}
    for _ in range(2):
        assert post(gateway, key, "/v1beta/models/emu/gpt:generateContent", body).status_code == 200
    first, second = (r.json["messages"] for r in emulator.requests[-2:])
    assert first == second  # the same history gives the same ids, turn after turn
    ids = [call["id"] for call in first[1]["tool_calls"]]
    assert len(set(ids)) == 2
    assert [m["tool_call_id"] for m in first[2:4]] == ids
    assert [m["content"] for m in first[2:4]] == ['{"time":"1"}', '{"time":"2"}']


def test_generation_config_maps_to_the_canonical_request(
    client: genai.Client, emulator: ThreadedEmulator
) -> None:
    image = b"\x89PNG\r\n"
    client.models.generate_content(
        model="emu/gpt",
        contents=[
            types.Content(
                role="user",
                parts=[
                    types.Part(text="what is this"),
                    types.Part.from_bytes(data=image, mime_type="image/png"),
                ],
            )
        ],
        config=types.GenerateContentConfig(
            max_output_tokens=50,
            temperature=0.5,
            top_p=0.9,
            top_k=5,
            seed=7,
            presence_penalty=0.1,
            stop_sequences=["END"],
            response_mime_type="application/json",
            response_schema=types.Schema(
                type=types.Type.OBJECT, properties={"a": types.Schema(type=types.Type.INTEGER)}
            ),
            tools=TOOLS,
            tool_config=types.ToolConfig(
                function_calling_config=types.FunctionCallingConfig(
                    mode=types.FunctionCallingConfigMode.ANY, allowed_function_names=["get_time"]
                )
            ),
            safety_settings=[
                types.SafetySetting(
                    category=types.HarmCategory.HARM_CATEGORY_HARASSMENT,
                    threshold=types.HarmBlockThreshold.BLOCK_NONE,
                )
            ],
        ),
    )
    sent = emulator.requests[-1].json
    assert sent["messages"] == [
        {
            "role": "user",
            "content": [
                {"type": "text", "text": "what is this"},
                {"type": "image_url", "image_url": {"url": "data:image/png;base64,iVBORw0K"}},
            ],
        }
    ]
    assert (sent["max_tokens"], sent["temperature"], sent["top_p"]) == (50, 0.5, 0.9)
    assert (sent["seed"], sent["presence_penalty"], sent["stop"]) == (7, 0.1, ["END"])
    assert sent["response_format"] == {
        "type": "json_schema",
        "json_schema": {
            "name": "response",
            "schema": {"type": "object", "properties": {"a": {"type": "integer"}}},
        },
    }
    # ANY with one allowed function names it; the other tool is not offered.
    assert sent["tool_choice"] == {"type": "function", "function": {"name": "get_time"}}
    assert [t["function"]["name"] for t in sent["tools"]] == ["get_time"]
    # Gemini's own knobs never reach a non-Gemini upstream.
    for name in ("top_k", "topK", "safetySettings", "generationConfig"):
        assert name not in sent


def test_json_mime_type_without_schema_is_json_object(
    client: genai.Client, emulator: ThreadedEmulator
) -> None:
    client.models.generate_content(
        model="emu/gpt",
        contents=PROMPT,
        config=types.GenerateContentConfig(
            response_mime_type="application/json", candidate_count=2
        ),
    )
    sent = emulator.requests[-1].json
    assert sent["response_format"] == {"type": "json_object"}
    assert sent["n"] == 2


def test_max_tokens_finish_reason(client: genai.Client) -> None:
    response = client.models.generate_content(
        model="mock/echo", contents=PROMPT, config=types.GenerateContentConfig(max_output_tokens=2)
    )
    assert response.candidates is not None
    assert response.candidates[0].finish_reason == types.FinishReason.MAX_TOKENS


@pytest.mark.parametrize(
    ("path", "resolved"),
    [
        ("/v1beta/models/emu/gpt:generateContent", "emu/gpt"),
        ("/v1beta/models/emu%2Fgpt:generateContent", "emu/gpt"),
        ("/v1/models/emu/gpt+chunks=3:generateContent", "emu/gpt+chunks=3"),
        ("/v1beta/models/echo:generateContent", "mock/echo"),
        ("/v1beta/models/auto:generateContent", "mock/echo"),
        ("/api/v1/models/emu/gpt:generateContent", "emu/gpt"),
        ("/v1beta/models/emu/gpt:generateContent?key={key}", "emu/gpt"),
    ],
)
def test_model_path_forms(gateway: RunningGateway, key: str, path: str, resolved: str) -> None:
    with_key = path.format(key=key)
    response = post(gateway, None if "key=" in with_key else key, with_key)
    assert response.status_code == 200, response.text
    assert response.headers["x-resolved-model"] == resolved
    assert response.json()["modelVersion"] == resolved


def test_models_list_and_get(gateway: RunningGateway, client: genai.Client) -> None:
    names = [model.name for model in client.models.list()]
    assert "models/emu/gpt" in names
    assert "models/mock/echo" in names
    beta = httpx.get(gateway.base_url + "/v1beta/models").json()["models"]
    echo = next(m for m in beta if m["name"] == "models/mock/echo")
    assert "generateContent" in echo["supportedGenerationMethods"]
    one = httpx.get(gateway.base_url + "/v1beta/models/mock/echo").json()
    assert one["name"] == "models/mock/echo"
    # Without a Google key, /v1/models stays the OpenAI list.
    assert httpx.get(gateway.base_url + "/v1/models").json()["object"] == "list"


# -- errors -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("body", "field"),
    [
        (b"{not json", "JSON"),
        ({}, "contents"),
        ({"contents": []}, "contents"),
        ({"contents": [{"role": "user", "parts": []}]}, "contents[0].parts"),
        ({"contents": [{"role": "system", "parts": [{"text": "x"}]}]}, "contents[0].role"),
        ({"contents": [{"role": "user", "parts": [{"video": 1}]}]}, "contents[0].parts[0]"),
        (
            {"contents": [{"role": "user", "parts": [{"inlineData": {"data": "AA=="}}]}]},
            "contents[0].parts[0].inlineData.mimeType",
        ),
        (
            {
                "contents": [
                    {"role": "user", "parts": [{"functionResponse": {"name": "x", "response": {}}}]}
                ]
            },
            "contents[0].parts[0].functionResponse",
        ),
        ({"contents": CONTENTS, "generationConfig": {"temperature": 3}}, "temperature"),
        ({"contents": CONTENTS, "generationConfig": {"maxOutputTokens": 0}}, "maxOutputTokens"),
        ({"contents": CONTENTS, "tools": [{"googleSearch": {}}]}, "tools[0].googleSearch"),
        (
            {
                "contents": CONTENTS,
                "tools": [{"functionDeclarations": [{"name": "f"}]}],
                "toolConfig": {"functionCallingConfig": {"mode": "SOMETIMES"}},
            },
            "mode",
        ),
    ],
)
def test_invalid_requests_are_400_naming_the_field(
    gateway: RunningGateway, key: str, body: Any, field: str
) -> None:
    response = post(
        gateway,
        key,
        "/v1beta/models/emu/gpt:generateContent",
        orjson.dumps(body) if isinstance(body, dict) else body,
    )
    assert response.status_code == 400, response.text
    error = response.json()["error"]
    assert list(response.json()) == ["error"]
    assert (error["code"], error["status"]) == (400, "INVALID_ARGUMENT")
    assert field in error["message"]
    row = gateway.ledger_row(response.headers["x-request-id"])
    assert (row.surface, row.status, row.http_status) == ("gemini", "error", 400)


def test_sdk_errors_carry_the_code(gateway: RunningGateway, key: str) -> None:
    def generate(client: genai.Client, model: str = "emu/gpt") -> Any:
        return client.models.generate_content(model=model, contents=PROMPT)

    bad = make_client(gateway, "wrong-key")
    with pytest.raises(errors.ClientError) as auth:
        generate(bad)
    assert (auth.value.code, auth.value.status) == (401, "UNAUTHENTICATED")
    client = make_client(gateway, key)
    with pytest.raises(errors.ClientError) as missing:
        generate(client, "emu/nope")
    assert (missing.value.code, missing.value.status) == (404, "NOT_FOUND")
    with pytest.raises(errors.ClientError) as limited:
        generate(client, "emu/gpt+status=429+retry_after=7")
    assert (limited.value.code, limited.value.status) == (429, "RESOURCE_EXHAUSTED")
    assert limited.value.details["error"]["details"][0]["retryDelay"] == "7s"
    with pytest.raises(errors.ServerError) as unavailable:
        generate(client, "emu/gpt+status=503")
    assert (unavailable.value.code, unavailable.value.status) == (503, "UNAVAILABLE")
    with pytest.raises(errors.ServerError) as first:
        list(client.models.generate_content_stream(model="emu/gpt+error_first", contents=PROMPT))
    assert first.value.code == 502
    denied = make_client(gateway, gateway.create_key(name="denied", models=("mock/*",)))
    with pytest.raises(errors.ClientError) as forbidden:
        generate(denied)
    assert (forbidden.value.code, forbidden.value.status) == (403, "PERMISSION_DENIED")
    raw = post(gateway, key, "/v1beta/models/emu/gpt+status=429+retry_after=7:generateContent")
    assert raw.headers["retry-after"] == "7"


def test_unknown_action_and_count_tokens_without_a_counter_are_404(
    gateway: RunningGateway, key: str, client: genai.Client
) -> None:
    response = post(gateway, key, "/v1beta/models/emu/gpt:embedContent")
    assert response.status_code == 404
    assert response.json()["error"]["status"] == "NOT_FOUND"
    with pytest.raises(errors.ClientError) as raised:
        client.models.count_tokens(model="emu/gpt", contents=PROMPT)
    assert raised.value.code == 404
    assert "no exact token count" in (raised.value.message or "")


def test_mid_stream_failure_is_a_final_error_object(
    gateway: RunningGateway, key: str, client: genai.Client
) -> None:
    response = post(
        gateway, key, "/v1beta/models/emu/gpt+error_mid=2:streamGenerateContent?alt=sse"
    )
    assert response.status_code == 200
    frames = sse_frames(response.content)
    last = response.content.rstrip(b"\r\n").rsplit(b"\r\n\r\n", 1)[-1]
    assert last.startswith(b'data: {"error":{"code":502,')
    assert frames[-1]["error"]["status"] == "UNAVAILABLE"
    assert text_of(frames[:-1]).startswith("Echo:")
    with pytest.raises(errors.ServerError) as raised:
        list(client.models.generate_content_stream(model="emu/gpt+error_mid=2", contents=PROMPT))
    assert raised.value.code == 502
    array = post(gateway, key, "/v1beta/models/emu/gpt+error_mid=2:streamGenerateContent")
    elements = orjson.loads(array.content)
    assert list(elements[-1]) == ["error"]


async def test_keepalive_is_a_bare_blank_line(
    gateway: RunningGateway, key: str, client: genai.Client, aio: genai.client.AsyncClient
) -> None:
    started = time.monotonic()
    response = post(gateway, key, "/v1beta/models/emu/gpt+first=3000:streamGenerateContent?alt=sse")
    assert time.monotonic() - started >= 2.9
    assert response.content.startswith(b"\r\n\r\n")  # keepalive_seconds is 1 in the test config
    assert text_of(sse_frames(response.content)).startswith("Echo:")
    # Both of the SDK's transports skip them.
    chunks = list(
        client.models.generate_content_stream(model="emu/gpt+first=3000", contents=PROMPT)
    )
    assert "".join(c.text or "" for c in chunks).startswith("Echo:")
    stream = await aio.models.generate_content_stream(model="emu/gpt+first=3000", contents=PROMPT)
    assert "".join([c.text or "" async for c in stream]).startswith("Echo:")


def test_client_disconnect_mid_stream_is_cancelled(
    gateway: RunningGateway, key: str, emulator: ThreadedEmulator
) -> None:
    body = orjson.dumps({"contents": CONTENTS})
    host, port = gateway.base_url.removeprefix("http://").split(":")
    before = len(emulator.requests)
    path = "/v1beta/models/emu/gpt+chunks=400+delay=10:streamGenerateContent?alt=sse"
    with socket.create_connection((host, int(port))) as sock:
        sock.sendall(
            f"POST {path} HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n".encode()
            + f"x-goog-api-key: {key}\r\nContent-Length: {len(body)}\r\n\r\n".encode()
            + body
        )
        sock.settimeout(10)
        head = b""
        while b"Echo:" not in head:
            head += sock.recv(65536)
    request_id = head.split(b"x-request-id: ")[1].split(b"\r\n")[0].decode()
    (upstream,) = emulator.wait_for_requests(before + 1, timeout=5)[before:]
    assert upstream.client_disconnected
    row = gateway.ledger_row(request_id)
    assert (row.status, row.surface) == ("cancelled", "gemini")


# -- keys never reach a log ---------------------------------------------------------------------


def test_a_query_key_never_appears_in_any_log_line(
    gateway: RunningGateway, key: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    wrong = "lr-wrong-" + "x" * 40
    for secret in (key, wrong):
        for path in (
            "/v1beta/models/emu/gpt:generateContent",
            "/v1beta/models/emu/gpt+status=500:generateContent",
            "/v1beta/models/emu/gpt+error_mid=2:streamGenerateContent",
            "/v1beta/models/emu/nope:generateContent",
        ):
            post(gateway, None, f"{path}?alt=sse&key={secret}")
    gateway.ledger_rows()  # let the background writer log whatever it logs
    # httpx and httpcore are this test's own client, which logs its URLs; the gateway uses
    # neither (its own HTTP client upstream, its own server inbound).
    records = [r for r in caplog.records if not r.name.startswith(("httpx", "httpcore"))]
    assert records
    for record in records:
        line = record.getMessage() + repr(record.args) + str(record.exc_info)
        assert key not in line
        assert wrong not in line


# -- the stream encoder and schema conversion, fed directly ---------------------------------------


def _encoder(*, sse: bool) -> GenerateEncoder:
    return GenerateEncoder(Exchange(key=None, surface="gemini"), sse=sse)  # type: ignore[arg-type]


def test_several_candidates_stream_side_by_side() -> None:
    encoder = _encoder(sse=False)
    body = encoder.encode(
        {
            "choices": [
                {"index": 0, "delta": {"content": "a"}},
                {"index": 1, "delta": {"content": "b"}},
            ]
        }
    )
    call = {"index": 0, "id": "call_1", "function": {"name": "f", "arguments": '{"x":'}}
    body += encoder.encode({"choices": [{"index": 1, "delta": {"tool_calls": [call]}}]})
    more = {"index": 0, "function": {"arguments": " 1}"}}
    body += encoder.encode({"choices": [{"index": 1, "delta": {"tool_calls": [more]}}]})
    body += encoder.encode({"choices": [{"index": 0, "delta": {}, "finish_reason": "length"}]})
    body += encoder.encode({"choices": [{"index": 1, "delta": {}, "finish_reason": "tool_calls"}]})
    body += encoder.close(Usage(prompt_tokens=3, completion_tokens=4))
    elements = orjson.loads(body)
    assert [c["index"] for c in elements[0]["candidates"]] == [0, 1]
    final = elements[-1]
    first, second = final["candidates"]
    assert first["finishReason"] == "MAX_TOKENS"
    assert second["finishReason"] == "STOP"
    assert second["content"]["parts"] == [
        {"functionCall": {"id": "call_1", "name": "f", "args": {"x": 1}}}
    ]
    assert final["usageMetadata"]["totalTokenCount"] == 7


def test_a_failure_before_any_frame_is_still_valid_json() -> None:
    encoder = _encoder(sse=False)
    body = encoder.fail(UpstreamUnavailable("down", retry_after=3))
    assert orjson.loads(body) == [
        {
            "error": {
                "code": 503,
                "message": "down",
                "status": "UNAVAILABLE",
                "details": [
                    {"@type": "type.googleapis.com/google.rpc.RetryInfo", "retryDelay": "3s"}
                ],
            }
        }
    ]


def test_openapi_schema_becomes_json_schema() -> None:
    schema = {
        "type": "OBJECT",
        "properties": {
            "tags": {"type": "ARRAY", "items": {"type": "STRING", "enum": ["a", "b"]}},
            "note": {"type": "STRING", "nullable": True, "description": "free text"},
            "either": {"anyOf": [{"type": "INTEGER"}, {"type": "BOOLEAN"}]},
        },
        "required": ["tags"],
        "propertyOrdering": ["tags", "note"],
    }
    assert to_json_schema(schema) == {
        "type": "object",
        "properties": {
            "tags": {"type": "array", "items": {"type": "string", "enum": ["a", "b"]}},
            "note": {"type": ["string", "null"], "description": "free text"},
            "either": {"anyOf": [{"type": "integer"}, {"type": "boolean"}]},
        },
        "required": ["tags"],
    }
