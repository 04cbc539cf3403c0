"""Azure OpenAI: deployment and v1 URLs, ``api-key``, api-version quirks, content-filter chunks.

The emulator speaks OpenAI's paths, so :class:`AzureFront` stands in front of it the way Azure
stands in front of OpenAI's models: Azure's URLs and auth header, the deployment from the path, a
prompt-filter chunk with no choices first and content-filter annotation chunks without ``delta``.
The contract matrix (test_provider_contract.py) uses it for its ``azure`` row.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import orjson
import pytest
from aiohttp import web

from llmrelay.config import ModelConfig, ProviderConfig
from llmrelay.core.catalogue import ModelEntry
from llmrelay.core.errors import UpstreamRateLimited, UpstreamStatusError
from llmrelay.core.types import JSONObject
from llmrelay.core.validate import validate_chat_request
from llmrelay.providers.base import UpstreamRequest
from llmrelay.providers.http import UpstreamClient
from llmrelay.providers.openai import AzureOpenAIProvider
from llmrelay.testing.emulator import EmulatorServer

FILTER_RESULTS = {
    "hate": {"filtered": False, "severity": "safe"},
    "violence": {"filtered": False, "severity": "safe"},
}
PROMPT_FILTER = {
    "id": "",
    "object": "",
    "created": 0,
    "model": "",
    "prompt_filter_results": [{"prompt_index": 0, "content_filter_results": FILTER_RESULTS}],
    "choices": [],
    "usage": None,
}
ANNOTATION = {
    "id": "",
    "object": "",
    "created": 0,
    "model": "",
    "choices": [
        {
            "index": 0,
            "finish_reason": None,
            "content_filter_results": FILTER_RESULTS,
            "content_filter_offsets": {"check_offset": 0, "start_offset": 0, "end_offset": 5},
        }
    ],
}
# A stream Azure cuts short with its asynchronous filter: the last choice has no delta.
FILTERED_STREAM = [
    PROMPT_FILTER,
    {
        "id": "chatcmpl-1",
        "object": "chat.completion.chunk",
        "created": 1,
        "model": "gpt-4o-2024-11-20",
        "choices": [
            {"index": 0, "delta": {"role": "assistant", "content": "Once"}, "finish_reason": None}
        ],
    },
    ANNOTATION,
    {
        **ANNOTATION,
        "choices": [{"index": 0, "finish_reason": "content_filter", "content_filter_results": {}}],
    },
    {
        "id": "chatcmpl-1",
        "object": "chat.completion.chunk",
        "created": 1,
        "model": "gpt-4o-2024-11-20",
        "choices": [],
        "usage": {"prompt_tokens": 5, "completion_tokens": 1, "total_tokens": 6},
    },
]
PROMPT_BLOCKED = {
    "error": {
        "message": (
            "The response was filtered due to the prompt triggering Azure OpenAI's content "
            "management policy."
        ),
        "type": None,
        "param": "prompt",
        "code": "content_filter",
        "status": 400,
        "innererror": {"code": "ResponsibleAIPolicyViolation"},
    }
}


def _sse(payload: Any) -> bytes:
    return b"data: " + orjson.dumps(payload) + b"\n\n"


class AzureFront:
    """Azure's surface over the emulator; records what it was sent in ``seen``."""

    def __init__(self, emulator_url: str) -> None:
        self._upstream = emulator_url + "/v1/chat/completions"
        self.seen: list[JSONObject] = []
        self._runner: web.AppRunner | None = None
        self._session: aiohttp.ClientSession | None = None
        self.base_url = ""

    async def __aenter__(self) -> AzureFront:
        app = web.Application()
        app.router.add_post("/openai/deployments/{deployment}/chat/completions", self._handle)
        app.router.add_post("/openai/v1/chat/completions", self._handle)
        # Handler cancellation: a client that goes away cancels the proxied call at once.
        self._runner = web.AppRunner(
            app, access_log=None, handler_cancellation=True, shutdown_timeout=0.5
        )
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        self.base_url = f"http://127.0.0.1:{self._runner.addresses[0][1]}"
        self._session = aiohttp.ClientSession(auto_decompress=False)
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self._session is not None
        assert self._runner is not None
        await self._session.close()
        await self._runner.cleanup()

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        body = await request.json()
        deployment = request.match_info.get("deployment")
        self.seen.append(
            {
                "path": request.path,
                "raw_path": request.raw_path,
                "query": dict(request.query),
                "headers": {k.lower(): v for k, v in request.headers.items()},
                "json": body,
            }
        )
        key = request.headers.get("api-key")
        if not key:
            error = {"error": {"code": "401", "message": "Access denied due to invalid key."}}
            return web.json_response(error, status=401)
        if deployment is not None:
            if "api-version" not in request.query:
                return web.json_response({"error": {"code": "404", "message": "no"}}, status=404)
            body["model"] = (
                deployment  # Azure serves the deployment in the path, whatever the body says
            )
        if body["model"] == "blocked":
            return web.json_response(PROMPT_BLOCKED, status=400)
        if body["model"] == "filtered":
            return await self._canned(request, FILTERED_STREAM)
        assert self._session is not None
        upstream = await self._session.post(
            self._upstream, json=body, headers={"Authorization": f"Bearer {key}"}
        )
        try:
            if upstream.status != 200 or not body.get("stream"):
                raw = await upstream.read()
                headers = {k: v for k, v in upstream.headers.items() if k.lower() == "retry-after"}
                if upstream.status == 200:
                    answer = orjson.loads(raw)
                    answer["prompt_filter_results"] = PROMPT_FILTER["prompt_filter_results"]
                    for choice in answer["choices"]:
                        choice["content_filter_results"] = FILTER_RESULTS
                    raw = orjson.dumps(answer)
                return web.Response(
                    status=upstream.status,
                    body=raw,
                    headers=headers,
                    content_type=upstream.content_type,
                )
            response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
            await response.prepare(request)
            await response.write(_sse(PROMPT_FILTER) + _sse(ANNOTATION))
            async for piece in upstream.content.iter_any():
                await response.write(piece)
            return response
        finally:
            upstream.close()

    async def _canned(self, request: web.Request, events: list[Any]) -> web.StreamResponse:
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await response.prepare(request)
        for event in events:
            await response.write(_sse(event))
        await response.write(b"data: [DONE]\n\n")
        return response


def model(deployment: str) -> ModelEntry:
    return ModelEntry.from_config(
        ModelConfig(id="azure/test", provider="azure", upstream=deployment)
    )


def chat(**fields: Any) -> Any:
    return validate_chat_request(
        {
            "model": "azure/test",
            "messages": [{"role": "user", "content": "hello there world"}],
            **fields,
        }
    )


@pytest.fixture
async def front() -> AsyncIterator[AzureFront]:
    async with EmulatorServer() as emu, AzureFront(emu.base_url) as azure:
        yield azure


@pytest.fixture
async def client() -> AsyncIterator[UpstreamClient]:
    upstream = UpstreamClient()
    upstream.start()
    yield upstream
    await upstream.close()


def azure(client: UpstreamClient, base_url: str, api_version: str | None) -> AzureOpenAIProvider:
    config = ProviderConfig(
        type="azure", base_url=base_url, api_key="az-key", api_version=api_version
    )
    return AzureOpenAIProvider("azure", config, client)


async def test_deployment_url_api_version_and_api_key(
    client: UpstreamClient, front: AzureFront
) -> None:
    provider = azure(client, front.base_url + "/", "2024-10-21")
    completion = await provider.complete(
        UpstreamRequest(chat(max_tokens=20), model("gpt+chunks=3"), "r")
    )
    assert completion.body["choices"][0]["message"]["content"] == "Echo: hello there"
    assert completion.usage is not None
    assert completion.usage.prompt_tokens == 7
    (seen,) = front.seen
    assert seen["path"] == "/openai/deployments/gpt+chunks=3/chat/completions"
    assert seen["raw_path"].startswith("/openai/deployments/gpt%2Bchunks")  # quoted, one segment
    assert seen["query"] == {"api-version": "2024-10-21"}
    assert seen["headers"]["api-key"] == "az-key"
    assert "authorization" not in seen["headers"]
    # 2024-09-01-preview and later read max_completion_tokens.
    assert seen["json"]["max_completion_tokens"] == 20
    assert "max_tokens" not in seen["json"]


@pytest.mark.parametrize(
    ("base", "version", "query"),
    [
        ("", None, {}),
        ("/openai/v1", "v1", {}),
        ("/openai", "preview", {"api-version": "preview"}),
    ],
)
async def test_v1_api_urls(
    client: UpstreamClient, front: AzureFront, base: str, version: str | None, query: JSONObject
) -> None:
    provider = azure(client, front.base_url + base, version)
    await provider.complete(UpstreamRequest(chat(), model("gpt+chunks=2"), "r"))
    (seen,) = front.seen
    assert seen["path"] == "/openai/v1/chat/completions"
    assert seen["query"] == query
    assert seen["json"]["model"] == "gpt+chunks=2"  # the v1 API takes the deployment in the body


async def test_an_old_api_version_gets_max_tokens_and_no_stream_options(
    client: UpstreamClient, front: AzureFront
) -> None:
    provider = azure(client, front.base_url, "2024-06-01")
    chunks = [
        c
        async for c in provider.stream(
            UpstreamRequest(chat(max_completion_tokens=20, stream=True), model("gpt+chunks=2"), "r")
        )
    ]
    (seen,) = front.seen
    assert seen["json"]["max_tokens"] == 20
    assert "max_completion_tokens" not in seen["json"]
    assert "stream_options" not in seen["json"]
    assert chunks[-1]["choices"][0]["finish_reason"] == "stop"


async def test_filter_chunks_are_not_relayed(client: UpstreamClient, front: AzureFront) -> None:
    provider = azure(client, front.base_url, "2024-10-21")
    call = UpstreamRequest(chat(), model("gpt+chunks=3"), "r")
    chunks = [c async for c in provider.stream(call)]
    with_choices = [c for c in chunks if c["choices"]]
    assert with_choices[0]["choices"][0]["delta"]["role"] == "assistant"
    assert all(c["id"] for c in chunks)  # Azure's id-less annotation chunks are gone
    assert all("delta" in choice for c in with_choices for choice in c["choices"])
    assert "".join(c["choices"][0]["delta"].get("content") or "" for c in with_choices) == (
        "Echo: hello there"
    )
    assert chunks[-1]["usage"]["prompt_tokens"] == 7
    assert front.seen[0]["json"]["stream_options"] == {"include_usage": True}


async def test_a_content_filter_stop_without_delta_still_ends_the_choice(
    client: UpstreamClient, front: AzureFront
) -> None:
    provider = azure(client, front.base_url, "2024-10-21")
    chunks = [c async for c in provider.stream(UpstreamRequest(chat(), model("filtered"), "r"))]
    choices = [c["choices"][0] for c in chunks if c["choices"]]
    assert [c["delta"] for c in choices] == [{"role": "assistant", "content": "Once"}, {}]
    assert choices[-1]["finish_reason"] == "content_filter"
    assert chunks[-1]["usage"]["completion_tokens"] == 1


async def test_a_blocked_prompt_stays_a_400(client: UpstreamClient, front: AzureFront) -> None:
    provider = azure(client, front.base_url, "2024-10-21")
    with pytest.raises(UpstreamStatusError) as caught:
        await provider.complete(UpstreamRequest(chat(), model("blocked"), "r"))
    assert caught.value.http_status == 400
    assert caught.value.param == "prompt"
    assert "content management policy" in caught.value.message


async def test_rate_limits_keep_retry_after(client: UpstreamClient, front: AzureFront) -> None:
    provider = azure(client, front.base_url, "2024-10-21")
    with pytest.raises(UpstreamRateLimited) as caught:
        await provider.complete(UpstreamRequest(chat(), model("gpt+status=429+retry_after=7"), "r"))
    assert caught.value.retry_after == 7
