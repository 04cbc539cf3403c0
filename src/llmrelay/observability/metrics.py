"""Prometheus metrics for ``GET /metrics``, fed by the pipeline's observer hooks.

Every per-request figure is taken from the ledger row in ``finished`` (one place), through label
children cached per (surface, model, provider, status, code) so the hot path is a dict lookup and a
few additions. Ledger figures (queue depth, write failures) are sampled at scrape time.

With several workers (``llmrelay serve --workers N``) each worker is its own process: when
``PROMETHEUS_MULTIPROC_DIR`` is set (the CLI sets it to a fresh temporary directory, see
:func:`multiprocess_directory`), prometheus-client keeps values in files there and a scrape of any
worker aggregates all of them.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
    multiprocess,
)
from prometheus_client.gc_collector import GCCollector
from prometheus_client.platform_collector import PlatformCollector
from prometheus_client.process_collector import ProcessCollector

from llmrelay.observability.observer import Observer

if TYPE_CHECKING:
    from llmrelay.accounting.records import LedgerRow
    from llmrelay.core.catalogue import ModelEntry
    from llmrelay.core.errors import UpstreamError
    from llmrelay.core.exchange import Exchange

MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"
# The classic text format: every Prometheus version (and most other scrapers) reads it.
CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"

# Seconds. Latency spans quick errors to long generations; TTFT is what users feel.
LATENCY_BUCKETS = (0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0)
TTFT_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.0, 5.0, 10.0, 30.0)
_NANOS_PER_USD = 1e9
_SAMPLE_SECONDS = 2.0
_NONE = "none"


class LedgerStats(Protocol):
    """What the metrics read off the ledger writer at scrape time."""

    @property
    def pending(self) -> int: ...

    failures: int
    written: int


@dataclass(slots=True)
class _RequestChildren:
    requests: Counter
    duration: Histogram
    ttft: Histogram
    prompt_tokens: Counter
    completion_tokens: Counter
    cached_tokens: Counter
    reasoning_tokens: Counter
    cost: Counter
    # Counted but not yet added to the counters above. A counter's inc takes a lock and checks
    # its labels (about 0.5 us each, five a request); in one process the sums wait for the
    # next scrape, which adds them first (``flush``). Histograms are observed at once.
    new_requests: int = 0
    new_prompt_tokens: int = 0
    new_completion_tokens: int = 0
    new_cached_tokens: int = 0
    new_reasoning_tokens: int = 0
    new_cost_nanos: int = 0

    def flush(self) -> None:
        if self.new_requests:
            self.requests.inc(self.new_requests)
            self.new_requests = 0
        if self.new_prompt_tokens:
            self.prompt_tokens.inc(self.new_prompt_tokens)
            self.new_prompt_tokens = 0
        if self.new_completion_tokens:
            self.completion_tokens.inc(self.new_completion_tokens)
            self.new_completion_tokens = 0
        if self.new_cached_tokens:
            self.cached_tokens.inc(self.new_cached_tokens)
            self.new_cached_tokens = 0
        if self.new_reasoning_tokens:
            self.reasoning_tokens.inc(self.new_reasoning_tokens)
            self.new_reasoning_tokens = 0
        if self.new_cost_nanos:
            self.cost.inc(self.new_cost_nanos / _NANOS_PER_USD)
            self.new_cost_nanos = 0


class GatewayMetrics(Observer):
    """The gateway's metric families, in a registry of their own (one per app)."""

    def __init__(self, ledger: LedgerStats | None = None) -> None:
        self.multiprocess = bool(os.environ.get(MULTIPROC_ENV))
        self.registry = CollectorRegistry(auto_describe=True)
        if not self.multiprocess:
            # In multiprocess mode these would describe only the worker that happens to answer.
            ProcessCollector(registry=self.registry)
            PlatformCollector(registry=self.registry)
            GCCollector(registry=self.registry)
        registry = self.registry
        request_labels = ("surface", "model", "provider", "status", "code")
        self.requests = Counter(
            "llmrelay_requests",
            "Requests that passed auth, by surface, resolved model, provider, ledger status "
            "(ok, error, cancelled) and HTTP status code.",
            request_labels,
            registry=registry,
        )
        self.duration = Histogram(
            "llmrelay_request_duration_seconds",
            "Time from the request's arrival to its last byte.",
            ("surface", "model", "provider", "status"),
            buckets=LATENCY_BUCKETS,
            registry=registry,
        )
        self.ttft = Histogram(
            "llmrelay_time_to_first_token_seconds",
            "Streams only: time from the request's arrival to the first generated token.",
            ("surface", "model", "provider"),
            buckets=TTFT_BUCKETS,
            registry=registry,
        )
        self.tokens = Counter(
            "llmrelay_tokens",
            "Tokens billed, by kind: prompt, completion, and the cached and reasoning subsets.",
            ("model", "provider", "kind"),
            registry=registry,
        )
        self.cost = Counter(
            "llmrelay_cost_usd",
            "Cost billed to keys, in USD.",
            ("model", "provider"),
            registry=registry,
        )
        self.upstream_errors = Counter(
            "llmrelay_upstream_errors",
            "Failed upstream attempts (including ones a retry or fallback recovered), by type.",
            ("provider", "model", "type"),
            registry=registry,
        )
        self.rate_limited = Counter(
            "llmrelay_rate_limit_rejections",
            "Requests refused by a key's own rpm/tpm limits (429 rate_limit_exceeded).",
            ("surface",),
            registry=registry,
        )
        self.open_streams = Gauge(
            "llmrelay_open_streams",
            "Streams being relayed to clients right now.",
            ("surface",),
            multiprocess_mode="livesum",
            registry=registry,
        )
        self.ledger_queue = Gauge(
            "llmrelay_ledger_queue_depth",
            "Ledger rows waiting to be written to the database.",
            multiprocess_mode="livesum",
            registry=registry,
        )
        self.ledger_failures = Counter(
            "llmrelay_ledger_write_failures",
            "Ledger writes that failed (a database outage or a rejected row).",
            registry=registry,
        )
        self.ledger_written = Counter(
            "llmrelay_ledger_rows_written",
            "Ledger rows written to the database.",
            registry=registry,
        )
        self._ledger = ledger
        self._ledger_seen = (0, 0)
        self._children: dict[tuple[str, str | None, str | None, str, int], _RequestChildren] = {}
        self._streams: dict[str, Gauge] = {}
        self._sampler: asyncio.Task[None] | None = None

    # -- observer hooks -----------------------------------------------------------------------

    def attempt_failed(self, exchange: Exchange, model: ModelEntry, error: UpstreamError) -> None:
        self.upstream_errors.labels(model.provider, model.id, error.error_type).inc()

    def stream_opened(self, exchange: Exchange) -> None:
        self._stream_gauge(exchange.surface).inc()

    def stream_closed(self, exchange: Exchange) -> None:
        self._stream_gauge(exchange.surface).dec()

    def finished(self, exchange: Exchange, row: LedgerRow) -> None:
        key = (row.surface, row.model, row.provider, row.status, row.http_status)
        children = self._children.get(key)
        if children is None:
            children = self._children[key] = self._request_children(*key)
        children.duration.observe(row.latency_ms / 1000)
        if row.stream and row.ttft_ms is not None:
            children.ttft.observe(row.ttft_ms / 1000)
        children.new_requests += 1
        children.new_prompt_tokens += row.prompt_tokens
        children.new_completion_tokens += row.completion_tokens
        children.new_cached_tokens += row.cached_tokens
        children.new_reasoning_tokens += row.reasoning_tokens
        children.new_cost_nanos += row.cost_nanos
        if self.multiprocess:
            children.flush()  # the other workers' scrapes read these values from the files now
        if row.error_type == "rate_limit_exceeded":
            self.rate_limited.labels(row.surface).inc()

    def flush(self) -> None:
        """Add the per-request counts not yet in the counters (``render`` does it first)."""
        for children in self._children.values():
            children.flush()

    def _request_children(
        self, surface: str, model: str | None, provider: str | None, status: str, code: int
    ) -> _RequestChildren:
        model_label = model or _NONE
        provider_label = provider or _NONE
        return _RequestChildren(
            requests=self.requests.labels(surface, model_label, provider_label, status, str(code)),
            duration=self.duration.labels(surface, model_label, provider_label, status),
            ttft=self.ttft.labels(surface, model_label, provider_label),
            prompt_tokens=self.tokens.labels(model_label, provider_label, "prompt"),
            completion_tokens=self.tokens.labels(model_label, provider_label, "completion"),
            cached_tokens=self.tokens.labels(model_label, provider_label, "cached"),
            reasoning_tokens=self.tokens.labels(model_label, provider_label, "reasoning"),
            cost=self.cost.labels(model_label, provider_label),
        )

    def _stream_gauge(self, surface: str) -> Gauge:
        gauge = self._streams.get(surface)
        if gauge is None:
            gauge = self._streams[surface] = self.open_streams.labels(surface)
        return gauge

    # -- ledger sampling and exposition -------------------------------------------------------

    def sample_ledger(self) -> None:
        """Copy the ledger writer's figures into the metrics (at scrape, and every 2 s with
        several workers so that a scrape of one worker sees the others' fresh figures)."""
        ledger = self._ledger
        if ledger is None:
            return
        self.ledger_queue.set(ledger.pending)
        failures, written = ledger.failures, ledger.written
        seen_failures, seen_written = self._ledger_seen
        if failures > seen_failures:
            self.ledger_failures.inc(failures - seen_failures)
        if written > seen_written:
            self.ledger_written.inc(written - seen_written)
        self._ledger_seen = (failures, written)

    def render(self) -> bytes:
        """The Prometheus text exposition of every metric (all workers' in multiprocess mode)."""
        self.flush()
        self.sample_ledger()
        if not self.multiprocess:
            return generate_latest(self.registry)
        registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(registry)  # type: ignore[no-untyped-call]
        return generate_latest(registry)

    def start(self) -> None:
        if self.multiprocess and self._ledger is not None:
            self._sampler = asyncio.create_task(self._sample_forever(), name="llmrelay-metrics")

    async def stop(self) -> None:
        if self._sampler is not None:
            self._sampler.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._sampler
            self._sampler = None
        if self.multiprocess:
            # Live gauges (open streams, ledger queue) of an exited worker must stop counting.
            multiprocess.mark_process_dead(os.getpid())  # type: ignore[no-untyped-call]

    async def _sample_forever(self) -> None:
        while True:
            await asyncio.sleep(_SAMPLE_SECONDS)
            self.sample_ledger()


@contextlib.contextmanager
def multiprocess_directory(workers: int) -> Iterator[str | None]:
    """For ``serve --workers N`` (N > 1): a fresh metrics directory in the environment the
    workers inherit, removed afterwards. A directory the operator set already is kept as is."""
    if workers <= 1 or os.environ.get(MULTIPROC_ENV):
        yield os.environ.get(MULTIPROC_ENV)
        return
    path = tempfile.mkdtemp(prefix="llmrelay-metrics-")
    os.environ[MULTIPROC_ENV] = path
    try:
        yield path
    finally:
        os.environ.pop(MULTIPROC_ENV, None)
        shutil.rmtree(path, ignore_errors=True)
