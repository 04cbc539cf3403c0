"""The pipeline every surface runs: auth → route → limits and credits → dispatch → meter.

Surfaces own their wire format; this module owns everything else about a request, so the
OpenAI, Anthropic and Gemini endpoints behave the same way in auth, limits, routing, retries,
fallbacks, cancellation and billing.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import time
from collections.abc import AsyncIterator, Coroutine, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from llmrelay.accounting.credits import reservation_estimate
from llmrelay.accounting.keys import CachedKey, KeyService
from llmrelay.accounting.ledger import LedgerWriter
from llmrelay.accounting.limits import Limiter, Ticket
from llmrelay.accounting.records import LedgerRow
from llmrelay.accounting.store import Store
from llmrelay.config import Settings
from llmrelay.core.catalogue import Catalogue, ModelEntry
from llmrelay.core.chunks import Chunk
from llmrelay.core.errors import (
    FallbacksExhausted,
    GatewayError,
    ServiceUnavailable,
    UpstreamError,
    UpstreamRateLimited,
    UpstreamTimeout,
)
from llmrelay.core.exchange import Exchange
from llmrelay.core.routing import Router
from llmrelay.core.shielded import ShieldedStream
from llmrelay.core.tokens import estimate_prompt_tokens
from llmrelay.core.types import ChatRequest, Completion, Usage
from llmrelay.observability.observer import Observer
from llmrelay.providers.base import Provider, UpstreamRequest

log = logging.getLogger("llmrelay.pipeline")

DRAIN_TIMEOUT_SECONDS = 600.0
_RETRY_BASE_SECONDS = 0.05


@dataclass(slots=True)
class OpenedStream:
    """A stream that has sent its first chunks.

    ``chunks`` yields the batches after ``first`` (one per upstream read, see
    ``Provider.stream_batches``); ``ended`` means the upstream finished without sending a single
    chunk (``first`` is then None).
    """

    chunks: AsyncIterator[Sequence[Chunk]]
    provider: Provider
    first: Sequence[Chunk] | None = None
    ended: bool = False


class StreamLine(Protocol):
    """The client's side of a stream, as far as the pipeline must know it."""

    @property
    def committed(self) -> bool:
        """Whether the client was already sent the response's start (a keep-alive went out while
        the first chunk was awaited): a failure is then the stream's, never retried elsewhere."""


class Gateway:
    def __init__(
        self,
        settings: Settings,
        catalogue: Catalogue,
        providers: dict[str, Provider],
        keys: KeyService,
        limiter: Limiter,
        ledger: LedgerWriter,
        router: Router,
        store: Store,
        observer: Observer | None = None,
    ) -> None:
        self.settings = settings
        self.store = store
        self.catalogue = catalogue
        self.providers = providers
        self.keys = keys
        self.limiter = limiter
        self.ledger = ledger
        self.router = router
        self.observer = observer or Observer()
        self._background: set[asyncio.Task[None]] = set()
        self._tickets: dict[str, Ticket] = {}

    # -- before the upstream call -------------------------------------------------------------

    async def authenticate(self, secret: str | None) -> CachedKey:
        return await self.keys.authenticate(secret)

    def admit(self, exchange: Exchange, request: ChatRequest) -> None:
        """Route the request and check the key may use the model (403).

        The key's rate limits, quota (429) and credits (402) are checked by ``complete`` and
        ``open_stream`` before anything goes upstream (``_charge``): with Redis they are a
        network call, and this step must stay synchronous for the surfaces.
        """
        self.observer.admitted(exchange)
        exchange.requested_model = request.model
        exchange.stream = request.stream
        exchange.messages = request.messages
        decision = self.router.route(request)
        exchange.model = decision.model
        exchange.basket = decision.basket
        exchange.route_confidence = decision.confidence
        key = exchange.key
        KeyService.check_model(key, decision.model.id)

    async def _charge(self, exchange: Exchange, request: ChatRequest) -> None:
        """Count the request against the key's limits and reserve its credits (429/402/503)."""
        if exchange.id in self._tickets:
            return
        assert exchange.model is not None
        estimate = reservation_estimate(
            exchange.model.price,
            request.messages,
            request.max_output_tokens or exchange.model.max_output_tokens,
            self.settings.accounting.default_max_tokens,
        )
        self._tickets[exchange.id] = await self.limiter.admit(exchange.key, exchange.id, estimate)

    def _attempt_models(self, exchange: Exchange) -> list[ModelEntry]:
        assert exchange.model is not None
        models = [exchange.model]
        for fallback in self.catalogue.fallbacks(exchange.model.id):
            if fallback not in models:
                models.append(fallback)
        return models

    def _provider(self, model: ModelEntry) -> Provider:
        provider = self.providers.get(model.provider)
        if provider is None:
            raise ServiceUnavailable(f"provider {model.provider!r} is not configured")
        return provider

    # -- dispatch -----------------------------------------------------------------------------

    async def complete(self, exchange: Exchange, request: ChatRequest) -> Completion:
        await self._charge(exchange, request)
        failures: list[tuple[str, UpstreamError]] = []
        for model in self._attempt_models(exchange):
            provider = self._provider(model)
            call = UpstreamRequest(request, model, exchange.id)
            for attempt in range(2):
                exchange.model = model
                self.observer.attempt_started(exchange, model)
                try:
                    completion = await self._complete_once(exchange, provider, call)
                except UpstreamError as exc:
                    self.observer.attempt_failed(exchange, model, exc)
                    if not exc.is_retryable:
                        raise
                    failures.append((model.id, exc))
                    if attempt == 0 and _retry_same_model(exc):
                        await asyncio.sleep(_RETRY_BASE_SECONDS * (1 + random.random()))
                        continue
                    break
                exchange.mark_first_token()
                exchange.usage = completion.usage
                body = completion.body
                body["id"] = exchange.id
                body["model"] = model.id
                body.setdefault("object", "chat.completion")
                body.setdefault("created", exchange.created)
                return completion
        raise _exhausted(failures)

    async def _complete_once(
        self, exchange: Exchange, provider: Provider, call: UpstreamRequest
    ) -> Completion:
        if provider.capabilities.supports_cancellation:
            return await provider.complete(call)
        # The provider keeps generating (and billing) after a disconnect: let it finish in the
        # background and bill the whole answer.
        task = asyncio.ensure_future(provider.complete(call))
        try:
            return await asyncio.shield(task)
        except asyncio.CancelledError:
            if exchange.client_gone:
                self._spawn(self._bill_after_drain(exchange, task))
            raise

    async def open_stream(
        self,
        exchange: Exchange,
        request: ChatRequest,
        *,
        line: StreamLine | None = None,
        raw_chunks: bool = False,
    ) -> OpenedStream:
        """Call upstream until one answers with its first chunk.

        Retries and fallbacks happen only here, and only while ``line`` is not committed: the
        caller commits the response on its own keep-alive timer when the first chunk is slow (the
        commit rule, ``api/streaming.StreamWriter``), and from then on a failure is final.
        ``raw_chunks``: the caller takes ``RawChunk`` items (see ``UpstreamRequest``).
        """
        await self._charge(exchange, request)
        return await self._open_stream(exchange, request, line, raw_chunks)

    async def _open_stream(
        self,
        exchange: Exchange,
        request: ChatRequest,
        line: StreamLine | None,
        raw_chunks: bool,
    ) -> OpenedStream:
        failures: list[tuple[str, UpstreamError]] = []
        for model in self._attempt_models(exchange):
            provider = self._provider(model)
            call = UpstreamRequest(request, model, exchange.id, raw_chunks)
            for attempt in range(2):
                exchange.model = model
                self.observer.attempt_started(exchange, model)
                chunks = provider.stream_batches(call)
                try:
                    # Awaited here, in the request's own task: no task or timer per stream for
                    # the wait (the keep-alive is the line's timer).
                    first = await anext(chunks)
                except StopAsyncIteration:
                    return OpenedStream(chunks, provider, ended=True)
                except UpstreamError as exc:
                    self.observer.attempt_failed(exchange, model, exc)
                    await _close_quietly(chunks)
                    if not exc.is_retryable or (line is not None and line.committed):
                        raise
                    failures.append((model.id, exc))
                    if attempt == 0 and _retry_same_model(exc):
                        await asyncio.sleep(_RETRY_BASE_SECONDS * (1 + random.random()))
                        continue
                    break
                except asyncio.CancelledError:
                    await _close_quietly(chunks)
                    raise
                return self._opened(exchange, provider, chunks, first)
        raise _exhausted(failures)

    def _opened(
        self,
        exchange: Exchange,
        provider: Provider,
        chunks: AsyncIterator[Sequence[Chunk]],
        first: Sequence[Chunk],
    ) -> OpenedStream:
        if provider.capabilities.supports_cancellation:
            return OpenedStream(chunks, provider, first)
        # The upstream keeps billing after a disconnect: read it from a task the client's
        # cancellation cannot reach, so the answer can be drained and billed whole.
        shielded = ShieldedStream(chunks, exchange, self._finish_drained, DRAIN_TIMEOUT_SECONDS)
        self._track(shielded.task)
        return OpenedStream(shielded, provider, first)

    def _finish_drained(self, exchange: Exchange) -> None:
        self.finish(exchange, force=True)

    async def close_stream(self, exchange: Exchange, opened: OpenedStream) -> None:
        """End the upstream side: abort it, or for a provider that cannot cancel, drain it."""
        if exchange.client_gone and isinstance(opened.chunks, ShieldedStream):
            opened.chunks.detach()
            return
        await _close_quietly(opened.chunks)

    async def _bill_after_drain(self, exchange: Exchange, task: asyncio.Future[Completion]) -> None:
        try:
            async with asyncio.timeout(DRAIN_TIMEOUT_SECONDS):
                completion = await task
            exchange.usage = completion.usage
        except BaseException as exc:
            log.info("drain of %s ended: %s", exchange.id, exc.__class__.__name__)
        finally:
            self.finish(exchange, force=True)

    def _spawn(self, coro: Coroutine[Any, Any, None]) -> None:
        self._track(asyncio.ensure_future(coro))

    def _track(self, task: asyncio.Task[None]) -> None:
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    def draining(self, exchange: Exchange) -> bool:
        """Whether a background drain owns this exchange's ledger row."""
        return (
            exchange.client_gone
            and exchange.model is not None
            and not (self._provider(exchange.model).capabilities.supports_cancellation)
        )

    async def wait_background(self, time_limit: float = 10.0) -> None:
        """At shutdown: let drains finish for a while, then stop them (each still bills)."""
        if not self._background:
            return
        pending = set(self._background)
        _, still_running = await asyncio.wait(pending, timeout=time_limit)
        for task in still_running:
            task.cancel()
        await asyncio.gather(*pending, return_exceptions=True)

    # -- metering -----------------------------------------------------------------------------

    def fail(self, exchange: Exchange, error: GatewayError) -> None:
        exchange.status = "error"
        exchange.http_status = error.http_status
        exchange.error_type = error.error_type

    def cancel(self, exchange: Exchange) -> None:
        exchange.status = "cancelled"
        exchange.http_status = 499
        exchange.error_type = "client_disconnected"

    @staticmethod
    def final_usage(exchange: Exchange) -> tuple[Usage, bool]:
        """The upstream's usage, or the gateway's own count (``estimated``) when it sent none."""
        if exchange.usage is not None:
            return exchange.usage, False
        if exchange.model is None or exchange.messages is None:
            return Usage(), False
        if exchange.status == "error" and not exchange.output_chars:
            return Usage(), False  # failed before the provider produced anything billable
        usage = Usage(
            prompt_tokens=estimate_prompt_tokens(exchange.messages),
            completion_tokens=-(-exchange.output_chars // 4),
        )
        return usage, True

    def finish(self, exchange: Exchange, *, force: bool = False) -> None:
        """Write the request's ledger row (once), settle its cost, count its tokens."""
        if exchange.finished or (not force and self.draining(exchange)):
            return
        exchange.finished = True
        usage, estimated = self.final_usage(exchange)
        model = exchange.model
        cost = model.price.cost(usage) if model is not None else 0
        now = time.perf_counter()
        key = exchange.key
        row = LedgerRow(
            id=exchange.id,
            key_id=key.record.id,
            requested_model=exchange.requested_model,
            model=model.id if model is not None else None,
            provider=model.provider if model is not None else None,
            basket=exchange.basket,
            stream=exchange.stream,
            status=exchange.status,
            http_status=exchange.http_status,
            error_type=exchange.error_type,
            prompt_tokens=usage.prompt_tokens,
            completion_tokens=usage.completion_tokens,
            cached_tokens=usage.cached_tokens,
            reasoning_tokens=usage.reasoning_tokens,
            cost_nanos=cost,
            estimated=estimated,
            ttft_ms=(
                (exchange.first_token_at - exchange.started) * 1000
                if exchange.first_token_at is not None
                else None
            ),
            latency_ms=(now - exchange.started) * 1000,
            created=time.time(),
            surface=exchange.surface,
            route_confidence=exchange.route_confidence,
        )
        ticket = self._tickets.pop(exchange.id, None)
        self.limiter.settle(key, ticket, cost, usage.total_tokens, exchange.id)
        self.ledger.record(row)
        self.observer.finished(exchange, row)


def _retry_same_model(exc: UpstreamError) -> bool:
    """Another try at the same model only where a quick retry can help."""
    return not isinstance(exc, UpstreamRateLimited | UpstreamTimeout)


def _exhausted(failures: list[tuple[str, UpstreamError]]) -> UpstreamError:
    if len(failures) == 1:
        return failures[0][1]
    return FallbacksExhausted(failures)


async def _close_quietly(chunks: AsyncIterator[Sequence[Chunk]]) -> None:
    close = getattr(chunks, "aclose", None)
    if close is not None:
        with contextlib.suppress(Exception):
            await close()
