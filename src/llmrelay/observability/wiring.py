"""What ``create_app`` plugs in: the metrics, the log context, and traces when asked for."""

from __future__ import annotations

import asyncio
import logging
import os
from collections.abc import Mapping

from llmrelay.config import Settings
from llmrelay.observability.logging import RequestLogContext, configure_logging_from_environment
from llmrelay.observability.metrics import GatewayMetrics, LedgerStats
from llmrelay.observability.observer import Observer, Observers

log = logging.getLogger("llmrelay.observability")


class Observability:
    """One app's observers (handed to the pipeline as ``observers``) and their lifecycle."""

    def __init__(
        self, settings: Settings, ledger: LedgerStats, env: Mapping[str, str] | None = None
    ) -> None:
        self._env = os.environ if env is None else env
        self.metrics = GatewayMetrics(ledger)
        self.observers = Observers(RequestLogContext(), self.metrics)
        tracing = optional_tracing(settings, self._env)
        if tracing is not None:
            self.observers.add(tracing)

    def add(self, observer: Observer) -> None:
        """Add an observer (tests add a tracer with an in-memory exporter this way)."""
        self.observers.add(observer)

    def start(self) -> None:
        configure_logging_from_environment(self._env)
        self.metrics.start()

    async def close(self) -> None:
        await self.metrics.stop()
        # A tracer provider's shutdown flushes its exporter over the network: off the loop.
        await asyncio.to_thread(self.observers.close)


def tracing_requested(env: Mapping[str, str]) -> bool:
    """Whether the environment asks for traces (the standard OTLP variables)."""
    if env.get("OTEL_SDK_DISABLED", "").lower() == "true":
        return False
    if env.get("OTEL_TRACES_EXPORTER", "").lower() == "none":
        return False
    return bool(
        env.get("OTEL_EXPORTER_OTLP_ENDPOINT") or env.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT")
    )


def optional_tracing(settings: Settings, env: Mapping[str, str]) -> Observer | None:
    """The OTLP tracing observer when asked for and installed (``llmrelay[otel]``), else None."""
    if not tracing_requested(env):
        return None
    try:
        from llmrelay.observability.tracing import otlp_tracing
    except ImportError:
        log.warning(
            "OTEL_EXPORTER_OTLP_ENDPOINT is set but OpenTelemetry is not installed; "
            "install it with: pip install 'llmrelay[otel]'"
        )
        return None
    provider_types = {name: provider.type for name, provider in settings.providers.items()}
    return otlp_tracing(provider_types, env)
