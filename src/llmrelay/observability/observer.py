"""The hook the pipeline calls at fixed points of a request, and the fan-out to several hooks.

``finished`` receives the ledger row, which already holds everything known about the request
(model, provider, status, tokens, cost, latency), so metrics and traces are built in one place.
The other hooks cover what the row cannot: each upstream attempt (retries and fallbacks) and how
many streams are open right now.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from llmrelay.accounting.records import LedgerRow
    from llmrelay.core.catalogue import ModelEntry
    from llmrelay.core.errors import UpstreamError
    from llmrelay.core.exchange import Exchange

log = logging.getLogger("llmrelay.observability")


class Observer:
    """Does nothing at every hook; subclasses override what they need. Hooks must not raise."""

    def admitted(self, exchange: Exchange) -> None:
        """The request passed auth and is about to be routed (its id is final)."""

    def attempt_started(self, exchange: Exchange, model: ModelEntry) -> None:
        """An upstream call to ``model`` begins (the first try, a retry or a fallback)."""

    def attempt_failed(self, exchange: Exchange, model: ModelEntry, error: UpstreamError) -> None:
        """The attempt begun last failed before its answer was committed to the client."""

    def stream_opened(self, exchange: Exchange) -> None:
        """A streamed answer is about to be relayed to the client."""

    def stream_closed(self, exchange: Exchange) -> None:
        """The relay of that stream ended (completed, failed or cancelled)."""

    def finished(self, exchange: Exchange, row: LedgerRow) -> None:
        """The request's ledger row was handed to the ledger writer."""

    def close(self) -> None:
        """Release what the observer holds; called at shutdown, off the event loop."""


class Observers(Observer):
    """Calls each added observer in turn; the pipeline holds one of these."""

    def __init__(self, *observers: Observer) -> None:
        self._observers: list[Observer] = list(observers)

    def add(self, observer: Observer) -> None:
        self._observers.append(observer)

    def admitted(self, exchange: Exchange) -> None:
        for observer in self._observers:
            try:
                observer.admitted(exchange)
            except Exception:
                _hook_failed(observer, "admitted")

    def attempt_started(self, exchange: Exchange, model: ModelEntry) -> None:
        for observer in self._observers:
            try:
                observer.attempt_started(exchange, model)
            except Exception:
                _hook_failed(observer, "attempt_started")

    def attempt_failed(self, exchange: Exchange, model: ModelEntry, error: UpstreamError) -> None:
        for observer in self._observers:
            try:
                observer.attempt_failed(exchange, model, error)
            except Exception:
                _hook_failed(observer, "attempt_failed")

    def stream_opened(self, exchange: Exchange) -> None:
        for observer in self._observers:
            try:
                observer.stream_opened(exchange)
            except Exception:
                _hook_failed(observer, "stream_opened")

    def stream_closed(self, exchange: Exchange) -> None:
        for observer in self._observers:
            try:
                observer.stream_closed(exchange)
            except Exception:
                _hook_failed(observer, "stream_closed")

    def finished(self, exchange: Exchange, row: LedgerRow) -> None:
        for observer in self._observers:
            try:
                observer.finished(exchange, row)
            except Exception:
                _hook_failed(observer, "finished")

    def close(self) -> None:
        for observer in self._observers:
            try:
                observer.close()
            except Exception:
                _hook_failed(observer, "close")


def _hook_failed(observer: Observer, hook: str) -> None:
    # A bug in an observer must never fail the request it watches.
    log.exception("observer %s.%s failed", type(observer).__name__, hook)
