"""Logs: JSON or text with the request id, and never a key, a ``?key=`` value or a prompt."""

from __future__ import annotations

import asyncio
import io
import logging
import logging.config
import re
from collections.abc import Iterator
from types import SimpleNamespace
from typing import Any

import httpx
import orjson
import pytest

from llmrelay.observability.logging import (
    JsonFormatter,
    RequestLogContext,
    TextFormatter,
    configure_logging,
    configure_logging_from_environment,
    redact,
    request_id,
    uvicorn_log_config,
)
from llmrelay.observability.observer import Observer
from llmrelay.testing.harness import RunningGateway

PROMPT = "my secret prompt: the launch code is 0000"
# Loggers of the test's own HTTP clients, which are not the gateway.
CLIENT_LOGGERS = ("httpx", "httpcore")


@pytest.fixture
def restore_logging() -> Iterator[None]:
    root = logging.getLogger()
    saved = (list(root.handlers), root.level)
    uvicorn = {
        name: (list(logging.getLogger(name).handlers), logging.getLogger(name).propagate)
        for name in ("uvicorn", "uvicorn.error", "uvicorn.access")
    }
    yield
    root.handlers[:] = saved[0]
    root.setLevel(saved[1])
    for name, (handlers, propagate) in uvicorn.items():
        logging.getLogger(name).handlers[:] = handlers
        logging.getLogger(name).propagate = propagate


def all_text(records: list[logging.LogRecord]) -> str:
    """Each record as the plain stdlib formatter writes it (no redaction), tracebacks included."""
    plain = logging.Formatter("%(name)s %(levelname)s %(message)s")
    return "\n".join(plain.format(r) for r in records if not r.name.startswith(CLIENT_LOGGERS))


def test_no_secret_or_prompt_reaches_a_log_line_at_debug(
    gateway: RunningGateway, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    key = gateway.create_key(name="logged")
    wrong = "lr-" + "x" * 43
    body = {"model": "mock/echo", "messages": [{"role": "user", "content": PROMPT}]}
    url = gateway.base_url
    with httpx.Client(timeout=30) as client:
        assert client.post(f"{url}/v1/chat/completions?key={key}", json=body).status_code == 200
        for header in ("x-api-key", "apikey", "x-goog-api-key"):
            response = client.post(f"{url}/v1/chat/completions", json=body, headers={header: key})
            assert response.status_code == 200
        streamed = client.post(
            f"{url}/v1/chat/completions",
            json={**body, "model": "mock/lorem", "stream": True},
            headers={"Authorization": f"Bearer {key}"},
        )
        assert streamed.status_code == 200
        failing = {**body, "model": "emu/gpt+status=500"}
        response = client.post(f"{url}/v1/chat/completions?key={key}", json=failing)
        assert response.status_code == 502
        assert client.post(f"{url}/v1/chat/completions?key={wrong}", json=body).status_code == 401
        response = client.post(
            f"{url}/v1/chat/completions", json=body, headers={"Authorization": f"Bearer {wrong}"}
        )
        assert response.status_code == 401
        admin = {"Authorization": f"Bearer {gateway.admin_key}"}
        created = client.post(f"{url}/admin/keys", json={"name": "new"}, headers=admin)
        assert created.status_code == 201
        assert client.get(f"{url}/admin/usage?key={gateway.admin_key}").status_code == 200
        for secret in (wrong, gateway.admin_key):  # a refused and an accepted dashboard login
            token = re.search(r'name="csrf" value="([^"]+)"', client.get(f"{url}/ui/login").text)
            assert token
            login = client.post(
                f"{url}/ui/login",
                data={"csrf": token.group(1), "admin_key": secret},
                headers={"Origin": url},
            )
            assert login.status_code in (401, 303)
    gateway.ledger_row(streamed.headers["x-request-id"])
    text = all_text(caplog.records)
    assert caplog.records, "the gateway logged nothing at DEBUG: the test would prove nothing"
    for secret in (key, wrong, gateway.admin_key, created.json()["key"], "sk-upstream-secret"):
        assert secret not in text
    assert PROMPT not in text
    assert "launch code" not in text


def test_redact_hides_credentials_in_any_shape() -> None:
    key = "lr-AbCdEfGhIjKlMnOpQrStUvWxYz0123456789_-abcdefg"
    lines = [
        f"GET /v1/models?key={key}&x=1",
        f"GET /v1/models?api_key={key}",
        f"Authorization: Bearer {key}",
        f"headers={{'x-api-key': '{key}'}}",
        f"x-goog-api-key={key}",
        f"upstream said: invalid key {key}",
        "provider key sk-proj-abcdefghijklmnop1234 rejected",
        "google key AIzaSyA-1234567890abcdefghijkl",
    ]
    for line in lines:
        cleaned = redact(line)
        assert "[redacted]" in cleaned, line
        assert key not in cleaned
        assert "abcdefghijklmnop1234" not in cleaned
        assert "1234567890abcdefghijkl" not in cleaned
    assert redact("nothing secret here, chatcmpl-0123456789abcdef") == (
        "nothing secret here, chatcmpl-0123456789abcdef"
    )


def record(message: str, *args: Any, **extra: Any) -> logging.LogRecord:
    entry = logging.LogRecord("llmrelay.test", logging.WARNING, __file__, 1, message, args, None)
    entry.__dict__.update(extra)
    return entry


def test_json_formatter_writes_one_object_per_line() -> None:
    line = JsonFormatter().format(
        record("upstream %s failed for ?key=%s", "emu", "lr-0123456789abcdefghij", request_id="r1")
    )
    assert "\n" not in line
    entry = orjson.loads(line)
    assert entry["level"] == "warning"
    assert entry["logger"] == "llmrelay.test"
    assert entry["request_id"] == "r1"
    assert entry["message"] == "upstream emu failed for ?key=[redacted]"
    assert entry["time"].endswith("+00:00")
    extras = orjson.loads(
        JsonFormatter().format(record("hi", color_message="\x1b[1mhi", attempt=2))
    )
    assert extras["attempt"] == 2
    assert "color_message" not in extras
    try:
        raise ValueError("boom with Bearer lr-0123456789abcdefghij")
    except ValueError:
        import sys

        failed = record("it failed")
        failed.exc_info = sys.exc_info()
    entry = orjson.loads(JsonFormatter().format(failed))
    assert "ValueError" in entry["exception"]
    assert "lr-0123456789abcdefghij" not in entry["exception"]


def test_text_formatter_shows_the_request_id() -> None:
    line = TextFormatter().format(record("hello", request_id="chatcmpl-1"))
    assert "llmrelay.test [chatcmpl-1] hello" in line
    assert "[" not in TextFormatter().format(record("plain")).split("llmrelay.test")[1]


class _Probe(Observer):
    """Logs one line from inside the request's own task, once the request is finished."""

    def finished(self, exchange: Any, row: Any) -> None:
        logging.getLogger("llmrelay.probe").warning("finished %s", row.status)


def test_lines_logged_while_serving_carry_the_request_id(
    gateway: RunningGateway, restore_logging: None
) -> None:
    out = io.StringIO()
    configure_logging("json", "INFO", stream=out)
    gateway.app.observability.add(_Probe())
    key = gateway.create_key(name="probe")
    response = httpx.post(
        gateway.base_url + "/v1/chat/completions",
        json={"model": "mock/echo", "messages": [{"role": "user", "content": PROMPT}]},
        headers={"Authorization": f"Bearer {key}"},
        timeout=30,
    )
    gateway.ledger_row(response.headers["x-request-id"])
    lines = [orjson.loads(line) for line in out.getvalue().splitlines()]
    probes = [line for line in lines if line["logger"] == "llmrelay.probe"]
    assert probes == [
        {
            "time": probes[0]["time"],
            "level": "warning",
            "logger": "llmrelay.probe",
            "message": "finished ok",
            "request_id": response.headers["x-request-id"],
        }
    ]
    assert PROMPT not in out.getvalue()


async def test_the_request_id_stays_in_its_own_task() -> None:
    context = RequestLogContext()

    async def serve(name: str) -> str | None:
        context.admitted(SimpleNamespace(id=name))  # type: ignore[arg-type]
        await asyncio.sleep(0)
        return request_id.get()

    assert await asyncio.gather(
        asyncio.create_task(serve("a")), asyncio.create_task(serve("b"))
    ) == ["a", "b"]
    assert request_id.get() is None


def test_configuration_from_the_environment(restore_logging: None) -> None:
    access = logging.getLogger("uvicorn.access")
    access.handlers[:] = []
    access.propagate = False  # what uvicorn does with access_log=False, as `serve` runs it
    assert configure_logging_from_environment({}) is None
    handler = configure_logging_from_environment({"LLMRELAY_LOG_FORMAT": "json"})
    assert handler is not None
    assert isinstance(handler.formatter, JsonFormatter)
    assert logging.getLogger("uvicorn.access").propagate is False  # uvicorn switched it off
    with pytest.raises(ValueError, match="log format"):
        configure_logging("yaml")
    config = uvicorn_log_config("json", "debug")
    logging.config.dictConfig(config)
    root = logging.getLogger()
    assert any(isinstance(h.formatter, JsonFormatter) for h in root.handlers)
    assert root.level == logging.DEBUG
