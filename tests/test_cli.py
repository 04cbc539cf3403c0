"""The ``llmrelay`` command: keys, usage, config check, db upgrade, and ``serve`` as a process."""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import re
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx
import pytest
from click.testing import CliRunner, Result

from llmrelay.accounting.records import LedgerRow
from llmrelay.accounting.store import SqlStore
from llmrelay.cli import main
from llmrelay.testing.harness import free_port

VALID_CONFIG = """\
database_url: sqlite:///./unused.db
providers:
  mock: {type: mock}
  local: {type: openai, base_url: "http://127.0.0.1:9/v1", api_key: "${CLI_TEST_KEY:-}"}
models:
  - {id: mock/echo, provider: mock, price: {input: 1.0, output: 2.0}}
  - {id: local/small, provider: local, upstream: small-model}
router:
  baskets: {chat: mock/echo}
fallbacks:
  local/small: [mock/echo]
"""

BROKEN_CONFIG = """\
providers:
  openai: {type: openai, api_kye: "sk-typo", api_key: "${LLMRELAY_TEST_UNSET_VARIABLE}"}
  mock: {type: mock}
models:
  - {id: mock/echo, provider: mock}
  - {id: ghost/model, provider: ghost}
router:
  baskets: {chat: mock/nothing}
"""


@pytest.fixture
def database(tmp_path: Path) -> str:
    return f"sqlite:///{tmp_path / 'cli.db'}"


@pytest.fixture
def cli(database: str, monkeypatch: pytest.MonkeyPatch) -> Any:
    """Run ``llmrelay ARGS...`` in-process against the temporary database."""
    monkeypatch.delenv("LLMRELAY_CONFIG", raising=False)
    runner = CliRunner()
    env = {"LLMRELAY_DATABASE_URL": database, "COLUMNS": "200"}

    def run(*args: str) -> Result:
        return runner.invoke(main, list(args), env=env, catch_exceptions=False)

    return run


def created_key(cli: Any, *args: str) -> dict[str, Any]:
    result = cli("keys", "create", "--json", *args)
    assert result.exit_code == 0, result.output
    created: dict[str, Any] = json.loads(result.stdout)
    return created


def listed(cli: Any) -> dict[str, dict[str, Any]]:
    result = cli("keys", "list", "--json")
    assert result.exit_code == 0, result.output
    return {view["id"]: view for view in json.loads(result.stdout)}


# -- keys ---------------------------------------------------------------------------------------


def test_keys_create_json_prints_the_key_once(cli: Any) -> None:
    created = created_key(cli, "--name", "a", "--credits", "5", "--rpm", "10")

    assert created["id"].startswith("key_")
    assert created["key"].startswith("lr-")
    assert created["name"] == "a"
    assert created["credits"] == 5.0
    assert created["rpm"] == 10
    assert created["tpm"] is None
    assert created["models"] == []


def test_keys_create_plain_prints_the_secret_on_stdout_and_the_id_on_stderr(cli: Any) -> None:
    result = cli("keys", "create", "--name", "plain", "--models", "mock/*, emu/gpt", "--tpm", "9")

    assert result.exit_code == 0, result.output
    secret = result.stdout.strip()
    assert re.fullmatch(r"lr-[A-Za-z0-9_-]{40,}", secret)
    (view,) = listed(cli).values()
    assert view["id"] in result.stderr
    assert view["models"] == ["mock/*", "emu/gpt"]
    assert view["tpm"] == 9


@pytest.mark.parametrize(
    "args",
    [
        ["--credits", "-1"],
        ["--credits", "lots"],
        ["--credits", "1e11"],
        ["--rpm", "0"],
        ["--expires", "next tuesday"],
        [],  # no --name
    ],
)
def test_keys_create_rejects_bad_options_and_writes_nothing(cli: Any, args: list[str]) -> None:
    name = [] if not args else ["--name", "x"]

    result = cli("keys", "create", *name, *args)

    assert result.exit_code == 2
    assert "Error" in result.stderr
    assert listed(cli) == {}


def test_keys_list_never_prints_a_secret(cli: Any) -> None:
    first = created_key(cli, "--name", "first", "--credits", "5")
    second = created_key(cli, "--name", "second")

    table = cli("keys", "list")
    as_json = cli("keys", "list", "--json")

    assert table.exit_code == 0
    assert as_json.exit_code == 0
    for created in (first, second):
        for output in (table.output, as_json.output):
            assert created["key"] not in output
            assert hashlib.sha256(created["key"].encode()).hexdigest() not in output
        assert created["id"] in table.stdout
    views = json.loads(as_json.stdout)
    assert [v["name"] for v in views] == ["first", "second"]
    assert all("key" not in v and "key_hash" not in v for v in views)
    assert "unlimited" in table.stdout
    assert "$5.0000" in table.stdout


def test_keys_revoke(cli: Any) -> None:
    created = created_key(cli, "--name", "doomed")

    result = cli("keys", "revoke", created["id"])

    assert result.exit_code == 0, result.output
    assert created["id"] in result.stdout
    assert listed(cli)[created["id"]]["revoked"] is True
    assert "revoked" in cli("keys", "list").stdout


def test_keys_revoke_of_a_missing_key_fails(cli: Any) -> None:
    result = cli("keys", "revoke", "key_nobody")

    assert result.exit_code == 1
    assert "key_nobody" in result.stderr


def test_keys_top_up(cli: Any) -> None:
    created = created_key(cli, "--name", "a", "--credits", "5")

    result = cli("keys", "top-up", created["id"], "2.5")
    as_json = cli("keys", "top-up", created["id"], "0.25", "--json")

    assert result.exit_code == 0, result.output
    assert "7.5" in result.stdout
    assert json.loads(as_json.stdout)["credits"] == 7.75
    assert listed(cli)[created["id"]]["credits"] == 7.75


def test_keys_top_up_of_a_missing_key_fails_with_a_message(cli: Any) -> None:
    result = cli("keys", "top-up", "key_nobody", "2.5")

    assert result.exit_code != 0
    assert "no key 'key_nobody'" in result.stderr


def test_keys_top_up_of_an_unlimited_key_fails_and_changes_nothing(cli: Any) -> None:
    created = created_key(cli, "--name", "unlimited")

    result = cli("keys", "top-up", created["id"], "1")

    assert result.exit_code != 0
    assert "unlimited" in result.stderr
    assert listed(cli)[created["id"]]["credits"] is None


@pytest.mark.parametrize("amount", ["0", "-1", "many", "2e9", "999999999"])
def test_keys_top_up_rejects_a_bad_amount(cli: Any, amount: str) -> None:
    created = created_key(cli, "--name", "a", "--credits", "5")

    result = cli("keys", "top-up", created["id"], "--", amount)

    assert result.exit_code != 0
    assert listed(cli)[created["id"]]["credits"] == 5.0


# -- usage --------------------------------------------------------------------------------------


def ledger_row(row_id: str, key_id: str, model: str, cost_nanos: int) -> LedgerRow:
    return LedgerRow(
        id=row_id,
        key_id=key_id,
        requested_model=model,
        model=model,
        provider=model.split("/")[0],
        basket=None,
        stream=False,
        status="ok",
        http_status=200,
        error_type=None,
        prompt_tokens=10,
        completion_tokens=5,
        cached_tokens=0,
        reasoning_tokens=0,
        cost_nanos=cost_nanos,
        estimated=False,
        ttft_ms=1.0,
        latency_ms=2.0,
        created=time.time(),
    )


def seed_ledger(database: str, rows: list[LedgerRow]) -> None:
    async def write() -> None:
        store = SqlStore(database)
        try:
            await store.open()
            await store.write_ledger(rows)
        finally:
            await store.close()

    asyncio.run(write())


def test_usage_json(cli: Any, database: str) -> None:
    assert json.loads(cli("usage", "--json").stdout) == []
    seed_ledger(
        database,
        [
            ledger_row("r1", "key_a", "mock/echo", 30_000),
            ledger_row("r2", "key_a", "mock/echo", 12_000),
            ledger_row("r3", "key_b", "emu/gpt", 5),
        ],
    )

    by_model = cli("usage", "--json")
    by_key = cli("usage", "--json", "--group-by", "key", "--key-id", "key_a")

    assert by_model.exit_code == 0, by_model.output
    assert json.loads(by_model.stdout) == [
        {"group": "emu/gpt", "requests": 1, "prompt_tokens": 10, "completion_tokens": 5,
         "cost": 5e-9},
        {"group": "mock/echo", "requests": 2, "prompt_tokens": 20, "completion_tokens": 10,
         "cost": 42_000 / 1e9},
    ]  # fmt: skip
    assert [(g["group"], g["requests"]) for g in json.loads(by_key.stdout)] == [("key_a", 2)]
    future = cli("usage", "--json", "--since", str(time.time() + 3600))
    assert json.loads(future.stdout) == []
    table = cli("usage", "--group-by", "provider")
    assert table.exit_code == 0
    assert "mock" in table.stdout
    assert "0.000042" in table.stdout


# -- config check -------------------------------------------------------------------------------


def test_config_check_accepts_a_valid_file(cli: Any, tmp_path: Path) -> None:
    path = tmp_path / "good.yaml"
    path.write_text(VALID_CONFIG)

    result = cli("config", "check", str(path))

    assert result.exit_code == 0, result.output
    assert "ok" in result.stdout
    assert "2 providers" in result.stdout


def test_config_check_lists_every_problem_with_its_key_path(
    cli: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("LLMRELAY_TEST_UNSET_VARIABLE", raising=False)
    path = tmp_path / "broken.yaml"
    path.write_text(BROKEN_CONFIG)

    result = cli("config", "check", str(path))

    assert result.exit_code == 1
    problems = [line for line in result.stderr.splitlines() if line.startswith(str(path))]
    expected = {
        "providers.openai.api_kye": "unknown key",
        "providers.openai.api_key": "LLMRELAY_TEST_UNSET_VARIABLE",
        "models.1.provider": "ghost",
        "router.baskets.chat": "mock/nothing",
    }
    for key_path, detail in expected.items():
        assert any(f": {key_path}: " in p and detail in p for p in problems), (key_path, problems)
    assert len(problems) == len(expected)
    assert f"{len(expected)} problem(s)" in result.stderr


def test_config_check_of_a_missing_file_fails(cli: Any, tmp_path: Path) -> None:
    result = cli("config", "check", str(tmp_path / "nope.yaml"))

    assert result.exit_code == 1
    assert "cannot read" in result.stderr


def test_a_command_with_a_broken_config_exits_with_the_problems(cli: Any, tmp_path: Path) -> None:
    path = tmp_path / "broken.yaml"
    path.write_text("providers:\n  mock: {type: mock, colour: blue}\n")

    result = cli("keys", "list", "--config", str(path))

    assert result.exit_code == 2
    assert "providers.mock.colour: unknown key" in result.stderr


# -- db upgrade ---------------------------------------------------------------------------------


def test_db_upgrade_creates_the_schema_and_is_idempotent(cli: Any, tmp_path: Path) -> None:
    first = cli("db", "upgrade")
    second = cli("db", "upgrade")

    assert first.exit_code == 0, first.output
    assert second.exit_code == 0, second.output
    assert "newest schema" in first.stdout
    with sqlite3.connect(tmp_path / "cli.db") as conn:
        tables = {name for (name,) in conn.execute("SELECT name FROM sqlite_master")}
        (version,) = conn.execute("SELECT version_num FROM alembic_version").fetchone()
    conn.close()
    assert {"api_keys", "ledger", "alembic_version"} <= tables
    assert version


# -- serve --------------------------------------------------------------------------------------


def read_until(stream: Any, pattern: str, deadline: float) -> tuple[str, re.Match[str]]:
    """Lines from ``stream`` until one matches (the server prints before it starts serving)."""
    seen = ""
    while time.monotonic() < deadline:
        line = stream.readline()
        if not line:
            break
        seen += line
        match = re.search(pattern, seen)
        if match:
            return seen, match
    raise AssertionError(f"{pattern!r} not printed; got:\n{seen}")


def test_serve_prints_the_admin_key_serves_and_flushes_the_ledger_on_sigterm(
    tmp_path: Path,
) -> None:
    port = free_port()
    db_path = tmp_path / "served.db"
    env = {
        **os.environ,
        "LLMRELAY_DATABASE_URL": f"sqlite:///{db_path}",
        "COLUMNS": "200",
    }
    for name in ("LLMRELAY_CONFIG", "LLMRELAY_ADMIN_KEY", "PYTHONUNBUFFERED"):
        env.pop(name, None)
    log = tmp_path / "serve.log"
    with log.open("w") as stderr:
        process = subprocess.Popen(
            [str(Path(sys.executable).with_name("llmrelay")), "serve", "--port", str(port)],
            cwd=tmp_path,
            env=env,
            stdout=subprocess.PIPE,
            stderr=stderr,
            text=True,
        )
    try:
        assert process.stdout is not None
        deadline = time.monotonic() + 20
        _, key_match = read_until(
            process.stdout, r"Admin key[^\n]*?(lr-[A-Za-z0-9_-]{20,})", deadline
        )
        admin_key = key_match.group(1)
        printed, _ = read_until(
            process.stdout, r"curl [^\n]*/v1/chat/completions[^\n]*\n", deadline
        )
        assert f"Bearer {admin_key}" in printed
        assert "mock/echo" in printed

        base_url = f"http://127.0.0.1:{port}"
        with httpx.Client(base_url=base_url, timeout=10) as http:
            while True:
                try:
                    health = http.get("/health")
                    break
                except httpx.TransportError:
                    assert time.monotonic() < deadline, "the server never answered /health"
                    time.sleep(0.05)
            assert health.status_code == 200
            assert health.json()["status"] == "ok"
            response = http.post(
                "/v1/chat/completions",
                headers={"Authorization": f"Bearer {admin_key}"},
                json={"model": "mock/echo", "messages": [{"role": "user", "content": "Hello!"}]},
            )
        assert response.status_code == 200, response.text
        assert response.json()["choices"][0]["message"]["content"] == "Hello!"
        request_id = response.headers["x-request-id"]

        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=20) == 0, log.read_text()
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
        if process.stdout is not None:
            process.stdout.close()

    with sqlite3.connect(db_path) as conn:
        row = conn.execute(
            "SELECT status, model, key_id, cost_nanos FROM ledger WHERE id = ?", (request_id,)
        ).fetchone()
        admin_id = conn.execute("SELECT id FROM api_keys WHERE is_admin").fetchone()[0]
    conn.close()
    assert row is not None, "the request's ledger row was lost at shutdown"
    assert row[:3] == ("ok", "mock/echo", admin_id)
    assert row[3] > 0
