"""The ``llmrelay`` command: serve, keys, usage, config check, db upgrade, mock-upstream."""

from __future__ import annotations

import asyncio
import os
import socket
import sys
import time
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TypeVar

import click
import orjson
from rich.console import Console
from rich.table import Table

from llmrelay import __version__
from llmrelay.accounting.keys import KeyService
from llmrelay.accounting.pricing import nanos_to_usd, usd_to_nanos
from llmrelay.accounting.store import SqlStore
from llmrelay.api.admin import MAX_CREDITS_USD, MAX_DAILY_TOKENS, MAX_PER_MINUTE, key_view
from llmrelay.config import ConfigError, Settings, load_settings

T = TypeVar("T")

config_option = click.option(
    "--config",
    "config_path",
    type=click.Path(dir_okay=False, path_type=Path),
    envvar="LLMRELAY_CONFIG",
    default=None,
    help="YAML config file (default: embedded defaults; also LLMRELAY_CONFIG).",
)
json_option = click.option("--json", "as_json", is_flag=True, help="Print JSON instead of a table.")


def _load_checked(config_path: Path | None) -> Settings:
    """The settings, with the problems only the provider layer sees (presets) checked too."""
    from llmrelay.providers.registry import check_providers

    settings = load_settings(config_path)
    problems = check_providers(settings)
    if problems:
        raise ConfigError(problems)
    return settings


def _settings(config_path: Path | None) -> Settings:
    try:
        return _load_checked(config_path)
    except ConfigError as exc:
        for problem in exc.problems:
            click.echo(f"config error: {problem}", err=True)
        raise SystemExit(2) from None


def _run_with_store(settings: Settings, action: Callable[[SqlStore], Awaitable[T]]) -> T:
    async def run() -> T:
        store = SqlStore(settings.database_url)
        try:
            await store.open()
            return await action(store)
        finally:
            await store.close()

    return asyncio.run(run())


def _print_json(payload: Any) -> None:
    click.echo(orjson.dumps(payload, option=orjson.OPT_INDENT_2).decode())


@click.group()
@click.version_option(__version__, prog_name="llmrelay")
def main() -> None:
    """llmrelay: one OpenAI-compatible endpoint for many LLM providers."""


# -- serve --------------------------------------------------------------------------------------


@main.command()
@config_option
@click.option("--host", default="127.0.0.1", show_default=True)
@click.option("--port", default=8080, show_default=True, type=int)
@click.option("--workers", default=1, show_default=True, type=click.IntRange(1, 64))
@click.option("--log-level", default="info", show_default=True)
@click.option(
    "--log-format",
    type=click.Choice(["text", "json"]),
    default="text",
    show_default=True,
    envvar="LLMRELAY_LOG_FORMAT",
    help="json: one object a line, with the request id (also LLMRELAY_LOG_FORMAT).",
)
def serve(
    config_path: Path | None,
    host: str,
    port: int,
    workers: int,
    log_level: str,
    log_format: str,
) -> None:
    """Start the gateway."""
    from llmrelay.observability.logging import configure_logging
    from llmrelay.observability.metrics import multiprocess_directory
    from llmrelay.server import bind_socket, run
    from llmrelay.server.workers import supervise

    settings = _settings(config_path)
    try:
        configure_logging(log_format, log_level)
    except ValueError as exc:
        raise click.BadParameter(str(exc), param_hint="--log-level") from None

    async def bootstrap(store: SqlStore) -> str | None:
        keys = KeyService(store)
        created = await keys.ensure_admin(os.environ.get("LLMRELAY_ADMIN_KEY") or None)
        return None if created is None else created.secret

    admin_secret = _run_with_store(settings, bootstrap)
    # Bound before the welcome is printed: a port in use fails here, with a clear message.
    try:
        sock = bind_socket(host, port)
    except OSError as exc:
        raise click.ClickException(f"cannot listen on {host}:{port}: {exc.strerror}") from None
    _print_welcome(settings, host, port, admin_secret)
    if workers == 1:
        from llmrelay.app import create_app

        status = run(
            lambda: create_app(settings, owns_process=True),
            host=host,
            port=port,
            sock=sock,
            graceful_seconds=GRACEFUL_SECONDS,
        )
    else:
        if config_path is not None:
            os.environ["LLMRELAY_CONFIG"] = str(config_path.resolve())
        # Each worker keeps its own metrics; they are summed through a shared directory.
        with multiprocess_directory(workers):
            status = supervise(workers, sock, _worker_main, kill_after=GRACEFUL_SECONDS + 15)
    sock.close()
    if status:
        sys.exit(status)


GRACEFUL_SECONDS = 30.0
"""How long SIGTERM lets requests in flight finish before they are cancelled."""


def _worker_main(sock: socket.socket) -> int:
    """One worker of ``--workers N``, after the fork: its own application on the shared socket."""
    from llmrelay.app import app_from_environment
    from llmrelay.server import run

    host, port = sock.getsockname()[:2]
    return run(
        app_from_environment, host=host, port=port, sock=sock, graceful_seconds=GRACEFUL_SECONDS
    )


def _print_welcome(settings: Settings, host: str, port: int, admin_secret: str | None) -> None:
    console = Console(highlight=False, soft_wrap=True)
    base = f"http://{host}:{port}"
    models = [m.id for m in settings.models]
    console.print(
        f"[bold]llmrelay {__version__}[/bold] on {base}  ·  database {settings.database_url}"
    )
    console.print(f"providers: {', '.join(sorted(settings.providers))}  ·  {len(models)} models")
    key = admin_secret or "$LLMRELAY_KEY"
    if admin_secret:
        console.print(
            "\n[bold yellow]Admin key (shown once, store it now):[/bold yellow] " + admin_secret
        )
    console.print("\nCreate a user key:   llmrelay keys create --name me")
    console.print("Try it with curl:")
    console.print(
        f"  curl {base}/v1/chat/completions -H 'Authorization: Bearer {key}' "
        "-H 'Content-Type: application/json' "
        '-d \'{"model": "mock/echo", "messages": [{"role": "user", "content": "Hello!"}]}\''
    )
    console.print("Or with the openai SDK:")
    console.print(
        f"  python -c \"from openai import OpenAI; c = OpenAI(base_url='{base}/v1', "
        f"api_key='{key}'); print(c.chat.completions.create(model='mock/echo', "
        "messages=[{'role': 'user', 'content': 'Hello!'}]).choices[0].message.content)\"\n"
    )


# -- keys ---------------------------------------------------------------------------------------


@main.group()
def keys() -> None:
    """Create, list, revoke and top up API keys."""


def _parse_expiry(value: str | None) -> float | None:
    if value is None:
        return None
    try:
        return float(value)
    except ValueError:
        pass
    try:
        return datetime.fromisoformat(value).timestamp()
    except ValueError:
        raise click.BadParameter(
            "use Unix seconds or an ISO date", param_hint="--expires"
        ) from None


@keys.command("create")
@config_option
@click.option("--name", required=True)
@click.option(
    "--credits",
    type=click.FloatRange(min=0, max=MAX_CREDITS_USD),
    default=None,
    help="USD; omit for unlimited",
)
@click.option("--rpm", type=click.IntRange(min=1, max=MAX_PER_MINUTE), default=None)
@click.option("--tpm", type=click.IntRange(min=1, max=MAX_PER_MINUTE), default=None)
@click.option(
    "--daily-tokens",
    type=click.IntRange(min=1, max=MAX_DAILY_TOKENS),
    default=None,
    help="tokens per UTC day; omit for no quota",
)
@click.option("--models", default=None, help="comma-separated model ids or patterns (openai/*)")
@click.option("--expires", default=None, help="Unix seconds or ISO date")
@json_option
def keys_create(
    config_path: Path | None,
    name: str,
    credits: float | None,
    rpm: int | None,
    tpm: int | None,
    daily_tokens: int | None,
    models: str | None,
    expires: str | None,
    as_json: bool,
) -> None:
    """Create a key and print it (it is shown only this once)."""
    settings = _settings(config_path)
    model_list = tuple(m.strip() for m in models.split(",") if m.strip()) if models else ()
    expires_at = _parse_expiry(expires)

    async def create(store: SqlStore) -> Any:
        return await KeyService(store).create(
            name=name,
            credits_nanos=None if credits is None else usd_to_nanos(credits),
            rpm=rpm,
            tpm=tpm,
            daily_tokens=daily_tokens,
            models=model_list,
            expires_at=expires_at,
        )

    new = _run_with_store(settings, create)
    if as_json:
        _print_json({**key_view(new.record), "key": new.secret})
        return
    click.echo(new.secret)
    click.echo(f"(id {new.record.id}; the key is shown only once)", err=True)


@keys.command("list")
@config_option
@json_option
def keys_list(config_path: Path | None, as_json: bool) -> None:
    """List keys (never their secrets)."""
    settings = _settings(config_path)
    records = _run_with_store(settings, lambda store: store.list_keys())
    views = [key_view(r) for r in records]
    if as_json:
        _print_json(views)
        return
    table = Table(title="API keys")
    columns = ("id", "name", "prefix", "credits", "used", "rpm", "tpm", "daily", "models", "status")
    for column in columns:
        table.add_column(column)
    now = time.time()
    for view, record in zip(views, records, strict=True):
        status = (
            "revoked"
            if view["revoked"]
            else (
                "expired"
                if record.expires_at is not None and record.expires_at <= now
                else "active"
            )
        )
        table.add_row(
            view["id"],
            view["name"] + (" (admin)" if view["is_admin"] else ""),
            view["prefix"] + "…",
            "unlimited" if view["credits"] is None else f"${view['credits']:.4f}",
            f"${view['credits_used']:.6f}",
            str(view["rpm"] or "-"),
            str(view["tpm"] or "-"),
            str(view["daily_tokens"] or "-"),
            ",".join(view["models"]) or "*",
            status,
        )
    Console().print(table)


@keys.command("revoke")
@config_option
@click.argument("key_id")
@json_option
def keys_revoke(config_path: Path | None, key_id: str, as_json: bool) -> None:
    """Revoke a key (running gateways stop accepting it within key_cache_seconds)."""
    settings = _settings(config_path)
    record = _run_with_store(settings, lambda store: store.revoke_key(key_id))
    if record is None:
        click.echo(f"no key {key_id!r}", err=True)
        raise SystemExit(1)
    if as_json:
        _print_json(key_view(record))
    else:
        click.echo(f"revoked {record.id} ({record.name})")


@keys.command("top-up")
@config_option
@click.argument("key_id")
@click.argument("amount", type=click.FloatRange(min=0, min_open=True, max=MAX_CREDITS_USD))
@json_option
def keys_top_up(config_path: Path | None, key_id: str, amount: float, as_json: bool) -> None:
    """Add AMOUNT USD of credits to a key."""
    settings = _settings(config_path)

    async def top_up(store: SqlStore) -> Any:
        existing = await store.get_key(key_id)
        if existing is None:
            return "missing"
        if existing.credits_nanos is None:
            return "unlimited"
        nanos = usd_to_nanos(amount)
        if existing.credits_nanos + nanos > usd_to_nanos(MAX_CREDITS_USD):
            return "too much"
        return await store.add_credits(key_id, nanos)

    result = _run_with_store(settings, top_up)
    if result == "missing":
        click.echo(f"no key {key_id!r}", err=True)
        raise SystemExit(1)
    if result == "unlimited":
        click.echo(f"key {key_id!r} has unlimited credits; nothing to top up", err=True)
        raise SystemExit(1)
    if result == "too much":
        click.echo(f"a key holds at most {MAX_CREDITS_USD} USD of credits", err=True)
        raise SystemExit(1)
    view = key_view(result)
    if as_json:
        _print_json(view)
    else:
        click.echo(f"{view['id']}: credits now ${view['credits']:.4f}")


# -- usage --------------------------------------------------------------------------------------


@main.command()
@config_option
@click.option("--key-id", default=None)
@click.option("--model", default=None, help="only this (resolved) catalogue id")
@click.option("--provider", default=None, help="only this provider")
@click.option("--since", default=None, help="Unix seconds or ISO date")
@click.option("--until", default=None, help="Unix seconds or ISO date (exclusive)")
@click.option("--group-by", type=click.Choice(["key", "model", "provider", "day"]), default="model")
@json_option
def usage(
    config_path: Path | None,
    key_id: str | None,
    model: str | None,
    provider: str | None,
    since: str | None,
    until: str | None,
    group_by: str,
    as_json: bool,
) -> None:
    """Usage totals from the ledger, grouped by key, model, provider or (UTC) day."""
    settings = _settings(config_path)
    since_ts = _parse_expiry(since)
    until_ts = _parse_expiry(until)
    groups = _run_with_store(
        settings,
        lambda store: store.usage_totals(
            key_id, since_ts, until_ts, group_by, model=model, provider=provider
        ),
    )
    if as_json:
        _print_json(
            [
                {
                    **{k: v for k, v in g.items() if k != "cost_nanos"},
                    "cost": nanos_to_usd(g["cost_nanos"]),
                }
                for g in groups
            ]
        )
        return
    table = Table(title=f"Usage by {group_by}", show_footer=bool(groups))
    totals = (
        "total",
        str(sum(g["requests"] for g in groups)),
        str(sum(g["prompt_tokens"] for g in groups)),
        str(sum(g["completion_tokens"] for g in groups)),
        f"{nanos_to_usd(sum(g['cost_nanos'] for g in groups)):.6f}",
    )
    headers = (group_by, "requests", "prompt tokens", "completion tokens", "cost (USD)")
    for column, footer in zip(headers, totals, strict=True):
        table.add_column(column, footer, justify="right" if column != group_by else "left")
    for g in groups:
        label = g["group"]
        if group_by == "day" and label is not None:
            label = datetime.fromtimestamp(float(label), UTC).date().isoformat()
        table.add_row(
            str(label),
            str(g["requests"]),
            str(g["prompt_tokens"]),
            str(g["completion_tokens"]),
            f"{nanos_to_usd(g['cost_nanos']):.6f}",
        )
    Console().print(table)


# -- config, db, mock-upstream ------------------------------------------------------------------


@main.group()
def config() -> None:
    """Configuration tools."""


@config.command("check")
@click.argument("file", type=click.Path(dir_okay=False, path_type=Path))
def config_check(file: Path) -> None:
    """Validate FILE and list every problem; exit 1 if there is any."""
    try:
        settings = _load_checked(file)
    except ConfigError as exc:
        for problem in exc.problems:
            click.echo(f"{file}: {problem}", err=True)
        click.echo(f"{len(exc.problems)} problem(s)", err=True)
        raise SystemExit(1) from None
    click.echo(f"{file}: ok ({len(settings.providers)} providers, {len(settings.models)} models)")


@main.group()
def db() -> None:
    """Database tools."""


@db.command("upgrade")
@config_option
def db_upgrade(config_path: Path | None) -> None:
    """Apply the schema migrations."""
    settings = _settings(config_path)

    async def noop(store: SqlStore) -> None:
        return None

    _run_with_store(settings, noop)
    click.echo(f"database at the newest schema: {settings.database_url}")


@main.command("mock-upstream")
@click.option("--host", default="127.0.0.1", show_default=True)
@click.option("--port", default=9000, show_default=True, type=int)
def mock_upstream(host: str, port: int) -> None:
    """Run the provider emulators (OpenAI, Anthropic and Gemini wire formats)."""
    from llmrelay.testing.emulator import serve_forever

    click.echo(
        f"provider emulators on http://{host}:{port} (OpenAI /v1, Anthropic /v1/messages, "
        "Gemini /v1beta)"
    )
    serve_forever(host, port)
