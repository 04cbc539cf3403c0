"""``GET /metrics``: what the gateway counts, fed from the pipeline's observer hooks."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import threading
from pathlib import Path
from typing import Any

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from llmrelay.observability.metrics import MULTIPROC_ENV, multiprocess_directory
from llmrelay.testing.harness import RunningGateway

MESSAGES = [{"role": "user", "content": "count me"}]


def scrape(gateway: RunningGateway) -> str:
    response = httpx.get(gateway.base_url + "/metrics", timeout=10)
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain; version=0.0.4")
    return response.text


def value(text: str, name: str, **labels: str) -> float:
    """The sum of the samples called ``name`` whose labels include ``labels`` (0 when none)."""
    total = 0.0
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == name and all(sample.labels.get(k) == v for k, v in labels.items()):
                total += sample.value
    return total


def chat(gateway: RunningGateway, key: str, **body: Any) -> httpx.Response:
    return httpx.post(
        gateway.base_url + "/v1/chat/completions",
        json={"messages": MESSAGES, **body},
        headers={"Authorization": f"Bearer {key}"},
        timeout=30,
    )


def test_requests_tokens_cost_and_latency_are_counted(gateway: RunningGateway) -> None:
    key = gateway.create_key(name="metrics")
    for _ in range(2):
        assert chat(gateway, key, model="mock/echo").status_code == 200
    streamed = chat(gateway, key, model="mock/lorem", stream=True)
    assert streamed.status_code == 200
    rows = [gateway.ledger_row(streamed.headers["x-request-id"])]
    text = scrape(gateway)

    ok_echo = {"surface": "openai", "model": "mock/echo", "provider": "mock", "status": "ok"}
    assert value(text, "llmrelay_requests_total", **ok_echo, code="200") == 2
    assert value(text, "llmrelay_request_duration_seconds_count", **ok_echo) == 2
    # TTFT is a streaming figure: the two plain answers add nothing to it.
    assert value(text, "llmrelay_time_to_first_token_seconds_count", model="mock/echo") == 0
    assert value(text, "llmrelay_time_to_first_token_seconds_count", model="mock/lorem") == 1
    lorem = rows[0]
    assert value(text, "llmrelay_tokens_total", model="mock/lorem", kind="prompt") == (
        lorem.prompt_tokens
    )
    assert value(text, "llmrelay_tokens_total", model="mock/lorem", kind="completion") == (
        lorem.completion_tokens
    )
    assert value(text, "llmrelay_cost_usd_total", model="mock/lorem") == pytest.approx(
        lorem.cost_nanos / 1e9
    )
    assert value(text, "llmrelay_cost_usd_total") > value(
        text, "llmrelay_cost_usd_total", model="mock/lorem"
    )


def test_upstream_errors_by_type_and_failed_requests(gateway: RunningGateway) -> None:
    key = gateway.create_key(name="metrics")
    assert chat(gateway, key, model="emu/gpt+status=500").status_code == 502
    assert chat(gateway, key, model="emu/gpt+status=429+retry_after=7").status_code == 429
    text = scrape(gateway)
    # A 5xx is retried once on the same model, so two attempts failed; a 429 is not retried.
    assert (
        value(
            text,
            "llmrelay_upstream_errors_total",
            provider="emu",
            model="emu/gpt+status=500",
            type="upstream_error",
        )
        == 2
    )
    assert value(text, "llmrelay_upstream_errors_total", type="upstream_rate_limit") == 1
    assert (
        value(
            text, "llmrelay_requests_total", model="emu/gpt+status=500", status="error", code="502"
        )
        == 1
    )
    # The provider's 429 is not the key's own rate limit.
    assert value(text, "llmrelay_rate_limit_rejections_total") == 0


def test_rate_limit_rejections(gateway: RunningGateway) -> None:
    key = gateway.create_key(name="slow", rpm=1)
    assert chat(gateway, key, model="mock/echo").status_code == 200
    assert chat(gateway, key, model="mock/echo").status_code == 429
    text = scrape(gateway)
    assert value(text, "llmrelay_rate_limit_rejections_total", surface="openai") == 1
    assert value(text, "llmrelay_requests_total", status="error", code="429") == 1


def test_open_streams_gauge_follows_the_relay(gateway: RunningGateway) -> None:
    key = gateway.create_key(name="streams")
    started = threading.Event()
    finished = threading.Event()

    def stream() -> None:
        with httpx.stream(
            "POST",
            gateway.base_url + "/v1/chat/completions",
            json={"model": "emu/gpt+chunks=40+delay=20", "messages": MESSAGES, "stream": True},
            headers={"Authorization": f"Bearer {key}"},
            timeout=30,
        ) as response:
            for _ in response.iter_bytes():
                started.set()
        finished.set()

    thread = threading.Thread(target=stream)
    thread.start()
    try:
        assert started.wait(10)
        assert value(scrape(gateway), "llmrelay_open_streams", surface="openai") == 1
    finally:
        thread.join(30)
    assert finished.is_set()
    assert value(scrape(gateway), "llmrelay_open_streams", surface="openai") == 0


def test_ledger_figures_and_no_auth(gateway: RunningGateway) -> None:
    key = gateway.create_key(name="ledger")
    response = chat(gateway, key, model="mock/echo")
    gateway.ledger_row(response.headers["x-request-id"])
    text = scrape(gateway)  # no key: /metrics is open unless configured otherwise
    assert value(text, "llmrelay_ledger_rows_written_total") >= 1
    assert value(text, "llmrelay_ledger_queue_depth") == 0
    assert value(text, "llmrelay_ledger_write_failures_total") == 0
    assert "process_cpu_seconds_total" in text


def test_label_children_are_cached_per_label_set(gateway: RunningGateway) -> None:
    key = gateway.create_key(name="cache")
    for _ in range(3):
        chat(gateway, key, model="mock/echo")
    metrics = gateway.app.observability.metrics
    echo = [labels for labels in metrics._children if labels[1] == "mock/echo"]
    assert echo == [("openai", "mock/echo", "mock", "ok", 200)]


_WORKER = textwrap.dedent(
    """
    import sys
    from types import SimpleNamespace
    from typing import Any
    from llmrelay.observability.metrics import GatewayMetrics

    metrics = GatewayMetrics()
    row: Any = SimpleNamespace(
        surface="openai", model="mock/echo", provider="mock", status="ok", http_status=200,
        latency_ms=12.0, stream=True, ttft_ms=3.0, prompt_tokens=5, completion_tokens=7,
        cached_tokens=0, reasoning_tokens=0, cost_nanos=1000, error_type=None,
    )
    exchange: Any = SimpleNamespace(surface="openai")
    if sys.argv[1] == "record":
        metrics.finished(exchange, row)
        metrics.stream_opened(exchange)
    else:
        sys.stdout.write(metrics.render().decode())
    """
)


def test_multiprocess_mode_aggregates_workers(tmp_path: Path) -> None:
    env = {**os.environ, MULTIPROC_ENV: str(tmp_path)}
    for _ in range(2):  # two "workers", each its own process
        subprocess.run([sys.executable, "-c", _WORKER, "record"], env=env, check=True)
    out = subprocess.run(
        [sys.executable, "-c", _WORKER, "render"], env=env, check=True, capture_output=True
    ).stdout.decode()
    assert value(out, "llmrelay_requests_total", model="mock/echo", code="200") == 2
    assert value(out, "llmrelay_tokens_total", kind="completion") == 14
    assert value(out, "llmrelay_time_to_first_token_seconds_count") == 2
    # The workers exited without marking themselves dead, so their live gauges still count.
    assert value(out, "llmrelay_open_streams") == 2


def test_multiprocess_directory_for_several_workers(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(MULTIPROC_ENV, raising=False)
    with multiprocess_directory(1) as path:
        assert path is None
        assert MULTIPROC_ENV not in os.environ
    with multiprocess_directory(4) as path:
        assert path is not None
        assert os.environ[MULTIPROC_ENV] == path
        assert Path(path).is_dir()
    assert MULTIPROC_ENV not in os.environ
    assert not Path(path).exists()
    monkeypatch.setenv(MULTIPROC_ENV, "/somewhere/chosen")
    with multiprocess_directory(4) as path:
        assert path == "/somewhere/chosen"


def test_metrics_key_when_configured(gateway_factory: Any) -> None:
    guarded = gateway_factory(metrics_key="scrape-secret")
    assert httpx.get(guarded.base_url + "/metrics").status_code == 401
    wrong = httpx.get(guarded.base_url + "/metrics", headers={"Authorization": "Bearer nope"})
    assert wrong.status_code == 401
    assert "nope" not in wrong.text
    right = httpx.get(
        guarded.base_url + "/metrics", headers={"Authorization": "Bearer scrape-secret"}
    )
    assert right.status_code == 200
    assert "# HELP llmrelay_requests_total" in right.text
