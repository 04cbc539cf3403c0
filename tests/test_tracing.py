"""OpenTelemetry traces: one GenAI span per request, a child per upstream attempt."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind, StatusCode

from conftest import GatewayFactory
from llmrelay.config import Settings
from llmrelay.observability.tracing import TracingObserver
from llmrelay.observability.wiring import optional_tracing, tracing_requested
from llmrelay.testing.harness import RunningGateway

PROMPT = "a very private prompt about tracing"
MESSAGES = [{"role": "user", "content": PROMPT}]


@pytest.fixture
def exporter() -> Iterator[InMemorySpanExporter]:
    exporter = InMemorySpanExporter()
    yield exporter
    exporter.shutdown()


def traced(gateway: RunningGateway, exporter: InMemorySpanExporter) -> RunningGateway:
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    types = {name: p.type for name, p in gateway.app.settings.providers.items()}
    gateway.app.observability.add(TracingObserver(provider.get_tracer("test"), types))
    return gateway


def chat(gateway: RunningGateway, key: str, **body: Any) -> httpx.Response:
    response = httpx.post(
        gateway.base_url + "/v1/chat/completions",
        json={"messages": MESSAGES, **body},
        headers={"Authorization": f"Bearer {key}"},
        timeout=30,
    )
    gateway.ledger_row(response.headers["x-request-id"])  # written in the same step as the spans
    return response


def split(spans: tuple[ReadableSpan, ...]) -> tuple[ReadableSpan, list[ReadableSpan]]:
    servers = [s for s in spans if s.kind is SpanKind.SERVER]
    assert len(servers) == 1
    server = servers[0]
    children = [s for s in spans if s.kind is SpanKind.CLIENT]
    for child in children:
        assert child.parent is not None
        assert child.parent.span_id == server.context.span_id
        assert child.context.trace_id == server.context.trace_id
    assert server.start_time is not None
    assert server.end_time is not None
    assert server.start_time < server.end_time
    return server, sorted(children, key=lambda s: s.start_time or 0)


def test_one_span_per_request_with_genai_attributes(
    gateway: RunningGateway, exporter: InMemorySpanExporter
) -> None:
    traced(gateway, exporter)
    key = gateway.create_key(name="traced")
    response = chat(gateway, key, model="mock/echo")
    row = gateway.ledger_row(response.headers["x-request-id"])
    server, children = split(exporter.get_finished_spans())
    assert server.name == "chat mock/echo"
    attributes = dict(server.attributes or {})
    assert attributes["gen_ai.operation.name"] == "chat"
    assert attributes["gen_ai.request.model"] == "mock/echo"
    assert attributes["gen_ai.response.model"] == "mock/echo"
    assert attributes["gen_ai.provider.name"] == "llmrelay.mock"
    assert attributes["gen_ai.response.id"] == row.id
    assert attributes["gen_ai.usage.input_tokens"] == row.prompt_tokens > 0
    assert attributes["gen_ai.usage.output_tokens"] == row.completion_tokens > 0
    assert attributes["http.response.status_code"] == 200
    assert server.status.status_code is StatusCode.UNSET
    [attempt] = children
    assert attempt.name == "chat echo"
    assert dict(attempt.attributes or {})["gen_ai.request.model"] == "echo"
    assert dict(attempt.attributes or {})["llmrelay.model"] == "mock/echo"
    # No prompt or answer text ever goes into a span.
    everything = repr([dict(s.attributes or {}) for s in exporter.get_finished_spans()])
    assert PROMPT not in everything


def test_retries_and_fallbacks_are_child_spans(
    gateway_factory: GatewayFactory, exporter: InMemorySpanExporter
) -> None:
    gateway = traced(gateway_factory(fallbacks={"emu/gpt+status=500": ["emu/gpt"]}), exporter)
    key = gateway.create_key(name="traced")
    response = chat(gateway, key, model="emu/gpt+status=500", stream=True)
    assert response.status_code == 200
    server, children = split(exporter.get_finished_spans())
    attributes = dict(server.attributes or {})
    assert attributes["gen_ai.request.model"] == "emu/gpt+status=500"
    assert attributes["gen_ai.response.model"] == "emu/gpt"
    assert attributes["gen_ai.provider.name"] == "openai"
    assert attributes["llmrelay.provider"] == "emu"
    assert attributes["llmrelay.stream"] is True
    assert "llmrelay.ttft_ms" in attributes
    assert [dict(c.attributes or {})["llmrelay.model"] for c in children] == [
        "emu/gpt+status=500",
        "emu/gpt+status=500",
        "emu/gpt",
    ]
    for failed in children[:2]:
        assert failed.status.status_code is StatusCode.ERROR
        assert dict(failed.attributes or {})["error.type"] == "upstream_error"
    ok = children[2]
    assert ok.status.status_code is StatusCode.UNSET
    assert dict(ok.attributes or {})["gen_ai.usage.output_tokens"] > 0


def test_failed_request_span(gateway: RunningGateway, exporter: InMemorySpanExporter) -> None:
    traced(gateway, exporter)
    key = gateway.create_key(name="traced")
    assert chat(gateway, key, model="emu/gpt+status=400").status_code == 400
    server, children = split(exporter.get_finished_spans())
    assert server.status.status_code is StatusCode.ERROR
    assert dict(server.attributes or {})["http.response.status_code"] == 400
    [attempt] = children  # a deterministic 400 is never retried
    assert attempt.status.status_code is StatusCode.ERROR


def test_auto_routing_records_the_basket(
    gateway: RunningGateway, exporter: InMemorySpanExporter
) -> None:
    traced(gateway, exporter)
    key = gateway.create_key(name="traced")
    response = chat(gateway, key, model="auto")
    server, _ = split(exporter.get_finished_spans())
    attributes = dict(server.attributes or {})
    assert attributes["gen_ai.request.model"] == "auto"
    assert attributes["gen_ai.response.model"] == response.headers["x-resolved-model"]
    assert attributes["llmrelay.basket"] == response.headers["x-route-basket"]


def test_tracing_is_off_unless_the_environment_asks() -> None:
    assert not tracing_requested({})
    assert tracing_requested({"OTEL_EXPORTER_OTLP_ENDPOINT": "http://127.0.0.1:4318"})
    assert tracing_requested({"OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": "http://127.0.0.1:4318/t"})
    assert not tracing_requested(
        {"OTEL_EXPORTER_OTLP_ENDPOINT": "http://127.0.0.1:4318", "OTEL_SDK_DISABLED": "true"}
    )
    assert not tracing_requested(
        {"OTEL_EXPORTER_OTLP_ENDPOINT": "http://127.0.0.1:4318", "OTEL_TRACES_EXPORTER": "none"}
    )
    settings = Settings.model_validate({"providers": {"mock": {"type": "mock"}}})
    assert optional_tracing(settings, {}) is None
    observer = optional_tracing(settings, {"OTEL_EXPORTER_OTLP_ENDPOINT": "http://127.0.0.1:9"})
    assert isinstance(observer, TracingObserver)
    observer.close()  # nothing recorded: the exporter never connects
