"""Shared fixtures: the provider emulators and real gateways on loopback."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from llmrelay.config import Settings, check_references
from llmrelay.testing.harness import RunningGateway, ThreadedEmulator, start_gateway

# Upstream model names understood by the emulator (behaviour chosen by the name; docs/testing.md).
EMULATED = [
    "gpt",
    "gpt+chunks=3",
    "gpt+no_usage",
    "gpt+tools=2",
    "gpt+utf8",
    "gpt+utf8+bytewise",
    "gpt+comments+crlf",
    "gpt+drop=3",
    "gpt+error_first",
    "gpt+error_mid=2",
    "gpt+malformed=2",
    "gpt+html",
    "gpt+status=400",
    "gpt+status=429+retry_after=7",
    "gpt+status=500",
    "gpt+status=503",
    "gpt+hang",
    "gpt+first=3000",
    "gpt+chunks=400+delay=10",
    "gpt+chunks=40+delay=20",
    "gpt+cached=5",
]


@pytest.fixture(scope="session")
def emulator() -> Iterator[ThreadedEmulator]:
    with ThreadedEmulator() as emu:
        yield emu


def make_settings(tmp_path: Path, emulator_url: str, **overrides: Any) -> Settings:
    raw: dict[str, Any] = {
        "database_url": f"sqlite:///{tmp_path / 'gateway.db'}",
        "keepalive_seconds": 1.0,
        "providers": {
            "mock": {"type": "mock"},
            "emu": {
                "type": "openai",
                "base_url": emulator_url + "/v1",
                "api_key": "sk-upstream-secret",
                "timeouts": {"connect": 2, "first_byte": 5, "idle": 2},
            },
        },
        "models": [
            {
                "id": f"emu/{name}",
                "provider": "emu",
                "price": {"input": 1.0, "output": 2.0, "cached_input": 0.5},
            }
            for name in EMULATED
        ]
        + [
            {
                "id": "mock/echo",
                "provider": "mock",
                "price": {"input": 1.0, "output": 2.0},
                "capabilities": ["tools", "vision", "json"],
            },
            {"id": "mock/lorem", "provider": "mock", "price": {"input": 1.0, "output": 2.0}},
        ],
        "router": {
            "baskets": {"chat": "mock/echo", "code": "emu/gpt", "reasoning": "mock/lorem"},
            "default_basket": "chat",
            "streaming_fallback": "mock/lorem",
        },
        "ledger": {
            "journal_path": str(tmp_path / "ledger.journal"),
            "flush_interval_seconds": 0.05,
        },
    }
    raw.update(overrides)
    settings = Settings.model_validate(raw)
    problems = check_references(settings)
    assert not problems, problems
    return settings


GatewayFactory = Callable[..., RunningGateway]


@pytest.fixture
def gateway_factory(tmp_path: Path, emulator: ThreadedEmulator) -> Iterator[GatewayFactory]:
    started: list[RunningGateway] = []

    def factory(**overrides: Any) -> RunningGateway:
        running = start_gateway(make_settings(tmp_path, emulator.base_url, **overrides))
        started.append(running)
        return running

    yield factory
    for running in started:
        running.stop()


@pytest.fixture
def gateway(gateway_factory: GatewayFactory) -> RunningGateway:
    return gateway_factory()


@pytest.fixture(scope="module")
def module_gateway(
    tmp_path_factory: pytest.TempPathFactory, emulator: ThreadedEmulator
) -> Iterator[RunningGateway]:
    """One gateway for a whole module whose tests each make their own keys (so they cannot
    interfere); such a module overrides ``gateway`` with a module-scoped fixture returning it."""
    settings = make_settings(tmp_path_factory.mktemp("module"), emulator.base_url)
    with start_gateway(settings) as running:
        yield running


@pytest.fixture
def http(gateway: RunningGateway) -> Iterator[httpx.Client]:
    """A synchronous client on whichever ``gateway`` the test gets."""
    with httpx.Client(base_url=gateway.base_url, timeout=10) as client:
        yield client
