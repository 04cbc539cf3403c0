"""OpenTelemetry traces: one span per request, a child span per upstream attempt.

Spans follow the GenAI semantic conventions (``gen_ai.operation.name``, ``gen_ai.request.model``,
``gen_ai.response.model``, ``gen_ai.provider.name``, ``gen_ai.usage.*``). They are recorded when the
request finishes, with their real start and end times, from the ledger row and the attempts seen on
the way: nothing is held open across the relay, and no prompt or completion text is ever recorded.

This module needs the ``otel`` extra (``pip install llmrelay[otel]``); the app imports it only when
tracing is asked for (see ``wiring.tracing_requested``).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING

from opentelemetry import trace
from opentelemetry.context import Context
from opentelemetry.trace import SpanKind, Status, StatusCode, Tracer

from llmrelay.observability.observer import Observer

if TYPE_CHECKING:
    from llmrelay.accounting.records import LedgerRow
    from llmrelay.core.catalogue import ModelEntry
    from llmrelay.core.errors import UpstreamError
    from llmrelay.core.exchange import Exchange

INSTRUMENTATION_NAME = "llmrelay"

# Provider config type → the conventions' well-known gen_ai.provider.name.
PROVIDER_NAMES: Mapping[str, str] = {
    "openai": "openai",
    "azure": "azure.ai.openai",
    "anthropic": "anthropic",
    "gemini": "gcp.gemini",
    "mock": "llmrelay.mock",
}

# A request whose surface never calls ``finished`` must not leak its attempts forever.
_MAX_OPEN_EXCHANGES = 100_000


@dataclass(slots=True)
class _Attempt:
    model: ModelEntry
    start_ns: int
    end_ns: int | None = None
    error: UpstreamError | None = None


class TracingObserver(Observer):
    """Turns each finished request into spans on ``tracer``."""

    def __init__(
        self,
        tracer: Tracer,
        provider_types: Mapping[str, str],
        shutdown: Callable[[], object] | None = None,
    ) -> None:
        self._tracer = tracer
        self._provider_names = {
            name: PROVIDER_NAMES.get(kind, kind) for name, kind in provider_types.items()
        }
        self._attempts: dict[str, list[_Attempt]] = {}
        self._shutdown = shutdown

    def attempt_started(self, exchange: Exchange, model: ModelEntry) -> None:
        attempts = self._attempts.get(exchange.id)
        if attempts is None:
            if len(self._attempts) >= _MAX_OPEN_EXCHANGES:
                self._attempts.clear()
            attempts = self._attempts[exchange.id] = []
        attempts.append(_Attempt(model, time.time_ns()))

    def attempt_failed(self, exchange: Exchange, model: ModelEntry, error: UpstreamError) -> None:
        attempts = self._attempts.get(exchange.id)
        if attempts:
            attempts[-1].end_ns = time.time_ns()
            attempts[-1].error = error

    def finished(self, exchange: Exchange, row: LedgerRow) -> None:
        end_ns = time.time_ns()
        start_ns = end_ns - int(row.latency_ms * 1_000_000)
        attempts = self._attempts.pop(exchange.id, [])
        requested = row.requested_model or ""
        span = self._tracer.start_span(
            f"chat {requested}".rstrip(),
            kind=SpanKind.SERVER,
            start_time=start_ns,
            attributes=self._request_attributes(row),
        )
        if row.status == "error":
            span.set_status(Status(StatusCode.ERROR, row.error_type))
        context = trace.set_span_in_context(span)
        for attempt in attempts:
            self._attempt_span(attempt, row, context, end_ns)
        span.end(end_time=end_ns)

    def _request_attributes(self, row: LedgerRow) -> dict[str, str | int | float | bool]:
        attributes: dict[str, str | int | float | bool] = {
            "gen_ai.operation.name": "chat",
            "gen_ai.response.id": row.id,
            "gen_ai.usage.input_tokens": row.prompt_tokens,
            "gen_ai.usage.output_tokens": row.completion_tokens,
            "http.response.status_code": row.http_status,
            "llmrelay.request_id": row.id,
            "llmrelay.key_id": row.key_id,
            "llmrelay.surface": row.surface,
            "llmrelay.stream": row.stream,
            "llmrelay.status": row.status,
            "llmrelay.cost_usd": row.cost_nanos / 1e9,
            "llmrelay.estimated": row.estimated,
        }
        if row.requested_model is not None:
            attributes["gen_ai.request.model"] = row.requested_model
        if row.model is not None:
            attributes["gen_ai.response.model"] = row.model
        if row.provider is not None:
            attributes["gen_ai.provider.name"] = self._provider_names.get(
                row.provider, row.provider
            )
            attributes["llmrelay.provider"] = row.provider
        if row.basket is not None:
            attributes["llmrelay.basket"] = row.basket
        if row.cached_tokens:
            attributes["gen_ai.usage.cache_read.input_tokens"] = row.cached_tokens
        if row.reasoning_tokens:
            attributes["gen_ai.usage.reasoning.output_tokens"] = row.reasoning_tokens
        if row.ttft_ms is not None:
            attributes["llmrelay.ttft_ms"] = row.ttft_ms
        if row.error_type is not None:
            attributes["error.type"] = row.error_type
        return attributes

    def _attempt_span(
        self, attempt: _Attempt, row: LedgerRow, context: Context, end_ns: int
    ) -> None:
        model = attempt.model
        attributes: dict[str, str | int | float | bool] = {
            "gen_ai.operation.name": "chat",
            "gen_ai.request.model": model.upstream,
            "gen_ai.provider.name": self._provider_names.get(model.provider, model.provider),
            "llmrelay.model": model.id,
            "llmrelay.provider": model.provider,
        }
        error = attempt.error
        if error is None:
            attributes["gen_ai.response.model"] = model.upstream
            attributes["gen_ai.usage.input_tokens"] = row.prompt_tokens
            attributes["gen_ai.usage.output_tokens"] = row.completion_tokens
        else:
            attributes["error.type"] = error.error_type
            attributes["http.response.status_code"] = error.http_status
        span = self._tracer.start_span(
            f"chat {model.upstream}",
            context=context,
            kind=SpanKind.CLIENT,
            start_time=attempt.start_ns,
            attributes=attributes,
        )
        if error is not None:
            span.set_status(Status(StatusCode.ERROR, error.error_type))
        elif row.status == "error":
            span.set_status(Status(StatusCode.ERROR, row.error_type))
        span.end(end_time=attempt.end_ns or end_ns)

    def close(self) -> None:
        if self._shutdown is not None:
            self._shutdown()


def otlp_tracing(provider_types: Mapping[str, str], env: Mapping[str, str]) -> TracingObserver:
    """A tracer provider exporting over OTLP/HTTP in batches (endpoint, headers and the like
    come from the standard ``OTEL_*`` variables, which the exporter reads itself)."""
    from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
    from opentelemetry.sdk.resources import Resource
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor

    from llmrelay import __version__

    resource = Resource.create(
        {
            "service.name": env.get("OTEL_SERVICE_NAME", "llmrelay"),
            "service.version": __version__,
        }
    )
    provider = TracerProvider(resource=resource)
    provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter()))
    tracer = provider.get_tracer(INSTRUMENTATION_NAME, __version__)
    return TracingObserver(tracer, provider_types, shutdown=provider.shutdown)
