"""The Anthropic provider: its pure conversions, its stream state machine, and the emulator."""

from __future__ import annotations

from collections.abc import AsyncGenerator, AsyncIterator
from typing import Any

import pytest

from llmrelay.config import ModelConfig, ProviderConfig
from llmrelay.core.catalogue import ModelEntry
from llmrelay.core.errors import (
    InvalidRequest,
    UnsupportedParameter,
    UpstreamProtocolError,
    UpstreamStatusError,
    UpstreamUnavailable,
)
from llmrelay.core.types import ChatRequest, JSONObject, Usage
from llmrelay.core.validate import validate_chat_request
from llmrelay.providers.anthropic import AnthropicProvider
from llmrelay.providers.anthropic.convert import (
    finish_reason,
    message_from_wire,
    messages_to_wire,
    request_to_wire,
    usage_from_wire,
)
from llmrelay.providers.anthropic.stream import MessageStream
from llmrelay.providers.base import UpstreamRequest
from llmrelay.providers.capabilities import base_capabilities, check_request
from llmrelay.providers.http import UpstreamClient
from llmrelay.testing.emulator import EmulatorServer

PNG = "data:image/png;base64,iVBORw0KGgo="
WEATHER = {
    "type": "function",
    "function": {"name": "get_weather", "parameters": {"type": "object"}},
}


def model(upstream: str = "claude", **config: Any) -> ModelEntry:
    return ModelEntry.from_config(
        ModelConfig(id="anthropic/test", provider="anthropic", upstream=upstream, **config)
    )


def chat(messages: list[JSONObject] | None = None, **fields: Any) -> ChatRequest:
    messages = messages or [{"role": "user", "content": "hello there world"}]
    return validate_chat_request({"model": "anthropic/test", "messages": messages, **fields})


def wire(request: ChatRequest, entry: ModelEntry | None = None) -> JSONObject:
    return request_to_wire(request, entry or model(), stream=False)


# -- request conversion -------------------------------------------------------------------------


def test_system_and_developer_messages_go_to_system_in_order() -> None:
    system, turns = messages_to_wire(
        [
            {"role": "system", "content": "one"},
            {"role": "user", "content": "hi"},
            {"role": "developer", "content": [{"type": "text", "text": "two"}]},
            {"role": "system", "content": ""},
        ]
    )
    assert system == [{"type": "text", "text": "one"}, {"type": "text", "text": "two"}]
    assert turns == [{"role": "user", "content": [{"type": "text", "text": "hi"}]}]


def test_same_role_runs_merge_and_empty_text_is_never_sent() -> None:
    _, turns = messages_to_wire(
        [
            {"role": "user", "content": "a"},
            {
                "role": "user",
                "content": [{"type": "text", "text": ""}, {"type": "text", "text": "b"}],
            },
            {"role": "assistant", "content": ""},
            {"role": "user", "content": ""},
            {"role": "assistant", "content": "c"},
            {"role": "assistant", "content": [{"type": "text", "text": "d"}]},
            {"role": "user", "content": "e"},
        ]
    )
    assert [t["role"] for t in turns] == ["user", "assistant", "user"]
    assert [b["text"] for b in turns[0]["content"]] == ["a", "b"]
    assert [b["text"] for b in turns[1]["content"]] == ["c", "d"]


def test_tool_calls_and_results_pair_up_in_the_next_user_turn() -> None:
    _, turns = messages_to_wire(
        [
            {"role": "user", "content": "weather?"},
            {
                "role": "assistant",
                "content": None,
                "tool_calls": [
                    {
                        "id": "call.1",
                        "type": "function",
                        "function": {"name": "a", "arguments": ""},
                    },
                    {
                        "id": "call_2",
                        "type": "function",
                        "function": {"name": "b", "arguments": '{"x": 1}'},
                    },
                ],
            },
            {"role": "tool", "tool_call_id": "call_2", "content": "two"},
            {"role": "user", "content": "and also"},
            {
                "role": "tool",
                "tool_call_id": "call.1",
                "content": [{"type": "text", "text": "one"}],
            },
        ]
    )
    assistant, results = turns[1], turns[2]
    assert assistant["content"] == [
        {"type": "tool_use", "id": "call_1", "name": "a", "input": {}},
        {"type": "tool_use", "id": "call_2", "name": "b", "input": {"x": 1}},
    ]
    # Every tool_result before the user's text, ids rewritten the same way as in the tool_use.
    assert [b["type"] for b in results["content"]] == ["tool_result", "tool_result", "text"]
    assert {b["tool_use_id"] for b in results["content"][:2]} == {"call_1", "call_2"}
    assert len(turns) == 3


def test_invalid_tool_arguments_are_a_400_naming_the_field() -> None:
    messages = [
        {
            "role": "assistant",
            "content": None,
            "tool_calls": [
                {"id": "c", "type": "function", "function": {"name": "a", "arguments": "[1"}}
            ],
        }
    ]
    with pytest.raises(InvalidRequest) as caught:
        messages_to_wire(messages)
    assert caught.value.param == "messages[0].tool_calls[0].function.arguments"


def test_thinking_blocks_are_replayed_first_and_verbatim() -> None:
    thinking = [
        {"type": "thinking", "thinking": "hmm", "signature": "sig", "index": 0},
        {"type": "redacted_thinking", "data": "opaque"},
    ]
    _, turns = messages_to_wire(
        [
            {"role": "user", "content": "q"},
            {
                "role": "assistant",
                "content": "answer",
                "reasoning_content": "hmm",
                "thinking_blocks": thinking,
            },
            {"role": "user", "content": "more"},
        ]
    )
    assert turns[1]["content"] == [
        {"type": "thinking", "thinking": "hmm", "signature": "sig"},
        {"type": "redacted_thinking", "data": "opaque"},
        {"type": "text", "text": "answer"},
    ]


def test_reasoning_without_a_signature_is_not_sent_back() -> None:
    _, turns = messages_to_wire(
        [
            {"role": "user", "content": "q"},
            {"role": "assistant", "content": "a", "reasoning_content": "x"},
        ]
    )
    assert turns[1]["content"] == [{"type": "text", "text": "a"}]


def test_images_data_urls_inline_and_https_by_url() -> None:
    _, turns = messages_to_wire(
        [
            {
                "role": "user",
                "content": [
                    {"type": "image_url", "image_url": {"url": PNG}},
                    {"type": "image_url", "image_url": {"url": "https://example.com/cat.jpg"}},
                    {
                        "type": "text",
                        "text": "what is this",
                        "cache_control": {"type": "ephemeral"},
                    },
                ],
            }
        ]
    )
    assert turns[0]["content"] == [
        {
            "type": "image",
            "source": {"type": "base64", "media_type": "image/png", "data": "iVBORw0KGgo="},
        },
        {"type": "image", "source": {"type": "url", "url": "https://example.com/cat.jpg"}},
        {"type": "text", "text": "what is this", "cache_control": {"type": "ephemeral"}},
    ]


@pytest.mark.parametrize(
    ("url", "error"),
    [
        ("data:image/tiff;base64,AAAA", UnsupportedParameter),
        ("data:image/png;base64,@@@", InvalidRequest),
        ("ftp://example.com/cat.png", InvalidRequest),
    ],
)
def test_unusable_images_are_400s(url: str, error: type[Exception]) -> None:
    content = [{"type": "image_url", "image_url": {"url": url}}]
    with pytest.raises(error) as caught:
        messages_to_wire([{"role": "user", "content": content}])
    assert "messages[0].content[0]" in str(caught.value.param)  # type: ignore[attr-defined]


def test_pdf_file_parts_become_documents() -> None:
    part = {
        "type": "file",
        "file": {"file_data": "data:application/pdf;base64,JVBERi0=", "filename": "a"},
    }
    _, turns = messages_to_wire([{"role": "user", "content": [part]}])
    assert turns[0]["content"] == [
        {
            "type": "document",
            "source": {"type": "base64", "media_type": "application/pdf", "data": "JVBERi0="},
        }
    ]


def test_a_final_assistant_prefill_loses_trailing_whitespace() -> None:
    _, turns = messages_to_wire(
        [{"role": "user", "content": "q"}, {"role": "assistant", "content": "The answer is "}]
    )
    assert turns[-1]["content"] == [{"type": "text", "text": "The answer is"}]


@pytest.mark.parametrize(
    ("choice", "parallel", "expected"),
    [
        (None, None, None),
        ("auto", None, {"type": "auto"}),
        ("none", None, {"type": "none"}),
        ("required", None, {"type": "any"}),
        (
            {"type": "function", "function": {"name": "get_weather"}},
            None,
            {"type": "tool", "name": "get_weather"},
        ),
        (None, False, {"type": "auto", "disable_parallel_tool_use": True}),
        ("required", False, {"type": "any", "disable_parallel_tool_use": True}),
    ],
)
def test_tool_choice(choice: Any, parallel: Any, expected: Any) -> None:
    fields: dict[str, Any] = {"tools": [WEATHER]}
    if choice is not None:
        fields["tool_choice"] = choice
    if parallel is not None:
        fields["parallel_tool_calls"] = parallel
    body = wire(chat(**fields))
    assert body["tools"] == [{"name": "get_weather", "input_schema": {"type": "object"}}]
    assert body.get("tool_choice") == expected


def test_unknown_tool_types_and_choices_are_refused() -> None:
    with pytest.raises(UnsupportedParameter):
        wire(chat(tools=[{"type": "custom", "custom": {"name": "x"}}]))
    with pytest.raises(UnsupportedParameter):
        wire(chat(tools=[WEATHER], tool_choice={"type": "allowed_tools", "allowed_tools": {}}))


def test_max_tokens_defaults_from_the_catalogue_then_4096() -> None:
    assert wire(chat())["max_tokens"] == 4096
    assert wire(chat(), model(max_output_tokens=64000))["max_tokens"] == 64000
    assert wire(chat(max_tokens=10, max_completion_tokens=20))["max_tokens"] == 20


def test_reasoning_effort_becomes_a_thinking_budget_below_max_tokens() -> None:
    body = wire(chat(reasoning_effort="high", max_completion_tokens=8000))
    assert body["thinking"] == {"type": "enabled", "budget_tokens": 7999}
    assert wire(chat(reasoning_effort="low"))["thinking"]["budget_tokens"] == 1024
    assert "thinking" not in wire(chat(reasoning_effort="none"))
    with pytest.raises(UnsupportedParameter) as caught:
        wire(chat(reasoning_effort="low", max_tokens=500))
    assert caught.value.param == "reasoning_effort"


def test_sampling_fields() -> None:
    body = wire(chat(temperature=1.7, top_p=0.5, stop="END", user="u-1"))
    assert body["temperature"] == 1.0  # clamped to Anthropic's range, documented
    assert body["top_p"] == 0.5
    assert body["stop_sequences"] == ["END"]
    assert body["metadata"] == {"user_id": "u-1"}
    with pytest.raises(UnsupportedParameter):
        wire(chat(stop=["  "]))


def test_json_schema_maps_to_output_config_and_native_fields_pass_through() -> None:
    schema = {"type": "object", "properties": {"a": {"type": "string"}}}
    body = wire(
        chat(
            response_format={"type": "json_schema", "json_schema": {"name": "x", "schema": schema}},
            top_k=5,
            metadata={"openai": "only"},
            store=True,
        )
    )
    assert body["output_config"] == {"format": {"type": "json_schema", "schema": schema}}
    assert body["top_k"] == 5
    assert "store" not in body
    assert "metadata" not in body


@pytest.mark.parametrize(
    ("fields", "param"),
    [
        ({"n": 3}, "n"),
        ({"seed": 1}, "seed"),
        ({"logprobs": True}, "logprobs"),
        ({"presence_penalty": 0.5}, "presence_penalty"),
        ({"response_format": {"type": "json_object"}}, "response_format"),
        ({"modalities": ["text", "audio"]}, "modalities"),
    ],
)
def test_what_anthropic_cannot_honour_is_refused_naming_field_and_provider(
    fields: dict[str, Any], param: str
) -> None:
    with pytest.raises(UnsupportedParameter) as caught:
        check_request(chat(**fields), model(), base_capabilities("anthropic"), "claude-prod")
    assert caught.value.param == param
    assert caught.value.http_status == 400
    assert "claude-prod" in caught.value.message


def test_neutral_values_are_not_refused() -> None:
    request = chat(n=1, presence_penalty=0, logprobs=False, parallel_tool_calls=True)
    check_request(request, model(), base_capabilities("anthropic"), "anthropic")


def test_audio_parts_are_refused() -> None:
    audio = {"type": "input_audio", "input_audio": {"data": "AAAA", "format": "wav"}}
    with pytest.raises(UnsupportedParameter) as caught:
        check_request(
            chat([{"role": "user", "content": [audio]}]),
            model(),
            base_capabilities("anthropic"),
            "anthropic",
        )
    assert caught.value.param == "messages[0].content[0]"


# -- answer conversion --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("reason", "expected"),
    [
        ("end_turn", "stop"),
        ("stop_sequence", "stop"),
        ("pause_turn", "stop"),
        ("max_tokens", "length"),
        ("tool_use", "tool_calls"),
        ("refusal", "content_filter"),
        ("model_context_window_exceeded", "length"),
        ("something_new", "stop"),
        (None, "stop"),
    ],
)
def test_stop_reasons(reason: Any, expected: str) -> None:
    assert finish_reason(reason) == expected


def test_usage_counts_cache_reads_and_writes_in_the_prompt_once() -> None:
    usage = usage_from_wire(
        {
            "input_tokens": 10,
            "cache_read_input_tokens": 300,
            "cache_creation_input_tokens": 50,
            "output_tokens": 40,
            "output_tokens_details": {"thinking_tokens": 12},
        }
    )
    assert usage == Usage(
        prompt_tokens=360,
        completion_tokens=40,
        cached_tokens=300,
        reasoning_tokens=12,
        cache_write_tokens=50,
    )


def test_message_from_wire() -> None:
    message = message_from_wire(
        [
            {"type": "thinking", "thinking": "plan", "signature": "s1"},
            {"type": "redacted_thinking", "data": "r"},
            {"type": "text", "text": "Checking."},
            {"type": "tool_use", "id": "toolu_1", "name": "now", "input": {}},
            {"type": "web_search_tool_result", "content": []},
        ]
    )
    assert message == {
        "role": "assistant",
        "content": "Checking.",
        "tool_calls": [
            {"id": "toolu_1", "type": "function", "function": {"name": "now", "arguments": "{}"}}
        ],
        "reasoning_content": "plan",
        "thinking_blocks": [
            {"type": "thinking", "thinking": "plan", "signature": "s1"},
            {"type": "redacted_thinking", "data": "r"},
        ],
    }
    assert (
        message_from_wire([{"type": "tool_use", "id": "t", "name": "x", "input": {"a": 1}}])[
            "content"
        ]
        is None
    )


def _feed(events: list[JSONObject]) -> list[JSONObject]:
    state = MessageStream("anthropic")
    chunks = [chunk for event in events for chunk in state.feed(event)]
    assert state.done
    return chunks


def test_stream_state_machine_handles_redacted_thinking_and_argument_less_calls() -> None:
    chunks = _feed(
        [
            {"type": "ping"},
            {
                "type": "message_start",
                "message": {
                    "id": "m",
                    "model": "c",
                    "usage": {"input_tokens": 5, "output_tokens": 1},
                },
            },
            {
                "type": "content_block_start",
                "index": 0,
                "content_block": {"type": "redacted_thinking", "data": "x"},
            },
            {"type": "content_block_stop", "index": 0},
            {
                "type": "content_block_start",
                "index": 1,
                "content_block": {"type": "tool_use", "id": "t", "name": "now", "input": {}},
            },
            {
                "type": "content_block_delta",
                "index": 1,
                "delta": {"type": "input_json_delta", "partial_json": ""},
            },
            {"type": "content_block_stop", "index": 1},
            {"type": "some_future_event"},
            {
                "type": "message_delta",
                "delta": {"stop_reason": "tool_use"},
                "usage": {"output_tokens": 9, "input_tokens": 6},
            },
            {"type": "message_stop"},
        ]
    )
    deltas = [c["choices"][0]["delta"] for c in chunks if c["choices"]]
    assert deltas[0] == {"role": "assistant", "content": ""}
    assert deltas[1] == {
        "thinking_blocks": [{"index": 0, "type": "redacted_thinking", "data": "x"}]
    }
    assert deltas[2]["tool_calls"][0]["id"] == "t"
    assert deltas[3] == {"tool_calls": [{"index": 0, "function": {"arguments": "{}"}}]}
    assert chunks[-2]["choices"][0]["finish_reason"] == "tool_calls"
    assert chunks[-1]["usage"]["prompt_tokens"] == 6  # message_delta's cumulative fields win
    assert chunks[-1]["usage"]["completion_tokens"] == 9


def test_stream_events_before_message_start_are_a_protocol_error() -> None:
    with pytest.raises(UpstreamProtocolError):
        MessageStream("anthropic").feed({"type": "content_block_stop", "index": 0})


# -- against the emulator -----------------------------------------------------------------------


async def collect(stream: AsyncIterator[JSONObject], into: list[JSONObject]) -> None:
    async for chunk in stream:
        into.append(chunk)


@pytest.fixture
async def emu() -> AsyncIterator[EmulatorServer]:
    async with EmulatorServer() as server:
        yield server


@pytest.fixture
async def provider(emu: EmulatorServer) -> AsyncIterator[AnthropicProvider]:
    client = UpstreamClient()
    client.start()
    config = ProviderConfig(
        type="anthropic",
        base_url=emu.base_url,
        api_key="sk-ant-test",
        headers={"anthropic-beta": "prompt-caching-2024-07-31"},
    )
    yield AnthropicProvider("anthropic", config, client)
    await client.close()


async def test_complete_sends_the_messages_api_shape(
    provider: AnthropicProvider, emu: EmulatorServer
) -> None:
    request = chat(
        [
            {"role": "system", "content": "be brief"},
            {"role": "user", "content": "hello there world"},
        ],
        max_completion_tokens=50,
    )
    completion = await provider.complete(UpstreamRequest(request, model("claude+chunks=4"), "r"))
    assert completion.body["choices"][0]["message"]["content"] == "Echo: hello there world"
    (seen,) = await emu.wait_for_requests(1)
    assert seen.path == "/v1/messages"
    assert seen.headers["x-api-key"] == "sk-ant-test"
    assert seen.headers["anthropic-version"] == "2023-06-01"
    assert seen.headers["anthropic-beta"] == "prompt-caching-2024-07-31"
    assert "authorization" not in seen.headers
    assert seen.json["system"] == [{"type": "text", "text": "be brief"}]
    assert seen.json["max_tokens"] == 50
    assert "stream" not in seen.json


async def test_thinking_round_trip_through_the_extension_fields(
    provider: AnthropicProvider,
) -> None:
    call = UpstreamRequest(chat(), model("claude+reasoning=3+chunks=2"), "r")
    message = (await provider.complete(call)).body["choices"][0]["message"]
    chunks = [chunk async for chunk in provider.stream(call)]
    deltas = [c["choices"][0]["delta"] for c in chunks if c["choices"]]
    streamed_reasoning = "".join(d.get("reasoning_content", "") for d in deltas)
    (block,) = [b for d in deltas for b in d.get("thinking_blocks", ())]
    assert streamed_reasoning == message["reasoning_content"] == "Let me think"
    assert "".join(d.get("content") or "" for d in deltas) == message["content"]
    assert {k: v for k, v in block.items() if k != "index"} == message["thinking_blocks"][0]
    assert message["thinking_blocks"][0]["signature"]
    # The next turn carries the signed block back, first in the assistant turn.
    _, turns = messages_to_wire(
        [{"role": "user", "content": "q"}, message, {"role": "user", "content": "go on"}]
    )
    assert turns[1]["content"][0] == message["thinking_blocks"][0]


async def test_in_stream_overloaded_error_carries_type_and_message(
    provider: AnthropicProvider,
) -> None:
    call = UpstreamRequest(chat(), model("claude+error_mid=2"), "r")
    received: list[JSONObject] = []
    with pytest.raises(UpstreamUnavailable) as caught:
        await collect(provider.stream(call), received)
    assert len(received) == 3  # role, two tokens
    assert "overloaded_error" in caught.value.message
    assert "Overloaded" in caught.value.message


async def test_upstream_400_keeps_anthropics_type(provider: AnthropicProvider) -> None:
    with pytest.raises(UpstreamStatusError) as caught:
        await provider.complete(UpstreamRequest(chat(), model("claude+status=400"), "r"))
    assert caught.value.http_status == 400
    assert caught.value.error_type == "invalid_request_error"
    assert not caught.value.is_retryable


async def test_refusals_happen_before_any_upstream_call(
    provider: AnthropicProvider, emu: EmulatorServer
) -> None:
    call = UpstreamRequest(chat(n=3), model("claude"), "r")
    with pytest.raises(UnsupportedParameter):
        await provider.complete(call)
    stream = provider.stream(call)
    with pytest.raises(UnsupportedParameter):
        await anext(stream)
    assert emu.requests == []


async def test_aclose_drops_the_upstream_connection(
    provider: AnthropicProvider, emu: EmulatorServer
) -> None:
    stream = provider.stream(UpstreamRequest(chat(), model("claude+chunks=200+delay=20"), "r"))
    assert isinstance(stream, AsyncGenerator)
    await anext(stream)
    await anext(stream)
    await stream.aclose()
    (seen,) = await emu.wait_for_requests(1)
    assert seen.client_disconnected
    assert not seen.completed
