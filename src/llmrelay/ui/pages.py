"""The dashboard's pages and JSON endpoints, each a method taking the request's context."""

from __future__ import annotations

import csv
import io
import logging
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from pydantic import ValidationError

from llmrelay.accounting.pricing import nanos_to_usd, usd_to_nanos
from llmrelay.accounting.records import KeyRecord, LedgerRow
from llmrelay.api.admin import MAX_CREDITS_USD, CreditsChange, KeyCreate, key_view
from llmrelay.api.asgi import Request
from llmrelay.core.pipeline import Gateway
from llmrelay.ui import stats
from llmrelay.ui.charts import Series, bar_chart, line_chart
from llmrelay.ui.responses import Response, html, json_response, redirect
from llmrelay.ui.sessions import NewKeyNotice, Session, SessionStore
from llmrelay.ui.templates import Templates, millis, number, usd

log = logging.getLogger("llmrelay.ui")

USAGE_PAGE_ROWS = 500
CSV_ROWS = 100_000
LOG_ROWS = 100
PLAYGROUND_KEY_NAME = "dashboard playground"
PLAYGROUND_RPM = 60
_CSV_FORMULA_START = ("=", "+", "-", "@", "\t", "\r")


class UIError(Exception):
    """A request the dashboard refuses: rendered as an error page (or JSON under /ui/api/)."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


@dataclass(slots=True)
class Context:
    request: Request
    session: Session
    token: str
    form: dict[str, str]
    key_id: str = ""
    extra: dict[str, Any] = field(default_factory=dict)


def key_status(record: KeyRecord, now: float) -> str:
    if record.revoked_at is not None:
        return "revoked"
    if record.expires_at is not None and record.expires_at <= now:
        return "expired"
    return "active"


def is_playground(record: KeyRecord) -> bool:
    return bool(record.metadata.get("playground"))


def _optional_number(form: dict[str, str], name: str, kind: type[int] | type[float]) -> Any:
    text = form.get(name, "").strip()
    if not text:
        return None
    try:
        return kind(text)
    except ValueError:
        raise UIError(400, f"{name} must be a number") from None


def _day_range(day: str | None) -> tuple[float | None, float | None]:
    if not day:
        return None, None
    try:
        start = datetime.strptime(day, "%Y-%m-%d").replace(tzinfo=UTC).timestamp()
    except ValueError:
        raise UIError(400, "day must be a date like 2025-01-31") from None
    return start, start + 86400


def _csv_cell(value: object) -> object:
    # A spreadsheet would run a cell starting with = + - @ as a formula (CSV injection).
    if isinstance(value, str) and value.startswith(_CSV_FORMULA_START):
        return "'" + value
    return value


class Pages:
    def __init__(self, gateway: Gateway, templates: Templates, sessions: SessionStore) -> None:
        self.gateway = gateway
        self.templates = templates
        self.sessions = sessions

    def _page(self, context: Context, name: str, status: int = 200, **values: Any) -> Response:
        text = self.templates.render(
            name,
            csrf=context.session.csrf,
            path=context.request.scope["path"],
            **values,
        )
        return html(text, status)

    async def _key_names(self) -> dict[str, str]:
        return {record.id: record.name for record in await self.gateway.store.list_keys()}

    # -- overview -----------------------------------------------------------------------------

    async def overview(self, context: Context) -> Response:
        view = await stats.overview(self.gateway.store, context.request.query.get("range", ""))
        labels = view.labels
        charts = [
            bar_chart(
                "Requests",
                labels,
                [
                    Series(
                        "ok", [r - e for r, e in zip(view.requests, view.errors, strict=True)], "s1"
                    ),
                    Series("errors", view.errors, "err"),
                ],
                number,
                whole=True,
            ),
            line_chart("Tokens", labels, [Series("tokens", view.tokens, "s2")], number, whole=True),
            line_chart("Spend", labels, [Series("USD", view.cost_usd, "s3")], usd, 0.0001),
            line_chart(
                "Latency",
                labels,
                [Series("p50", view.p50_ms, "s1"), Series("p95", view.p95_ms, "s3")],
                millis,
                least_top=100,
            ),
        ]
        return self._page(
            context,
            "overview.html",
            view=view,
            ranges=list(stats.RANGES),
            charts=charts,
            models=[{**m, "cost": nanos_to_usd(m["cost_nanos"])} for m in view.models],
        )

    # -- keys ---------------------------------------------------------------------------------

    async def keys(self, context: Context, status: int = 200, error: str | None = None) -> Response:
        now = time.time()
        show_all = context.request.query.get("all") == "1"
        rows = []
        hidden = 0
        for record in await self.gateway.store.list_keys():
            state = key_status(record, now)
            if is_playground(record) and state != "active" and not show_all:
                hidden += 1
                continue
            cached = self.gateway.keys.cached(record.id)
            view = key_view(record, None if cached is None else cached.credits_used_nanos)
            rows.append({**view, "status": state, "playground": is_playground(record)})
        rows.reverse()  # newest first
        notice, context.session.new_key = context.session.new_key, None  # shown once
        return self._page(
            context,
            "keys.html",
            status,
            keys=rows,
            hidden=hidden,
            notice=notice,
            error=error,
            form=context.form if error else {},
            max_credits=MAX_CREDITS_USD,
        )

    async def create_key(self, context: Context) -> Response:
        form = context.form
        models = [m.strip() for m in form.get("models", "").split(",") if m.strip()]
        days = _optional_number(form, "expires_days", float)
        try:
            fields = KeyCreate.model_validate(
                {
                    "name": form.get("name", "").strip(),
                    "credits": _optional_number(form, "credits", float),
                    "rpm": _optional_number(form, "rpm", int),
                    "tpm": _optional_number(form, "tpm", int),
                    "models": models or None,
                    "expires_at": None if days is None else time.time() + days * 86400,
                }
            )
        except (ValidationError, UIError) as exc:
            return await self.keys(context, 400, _explain(exc))
        new = await self.gateway.keys.create(
            name=fields.name,
            credits_nanos=None if fields.credits is None else usd_to_nanos(fields.credits),
            rpm=fields.rpm,
            tpm=fields.tpm,
            models=tuple(fields.models or ()),
            expires_at=fields.expires_at,
        )
        context.session.new_key = NewKeyNotice(new.record.id, new.record.name, new.secret)
        log.info("dashboard created key %s", new.record.id)
        return redirect("/ui/keys")

    async def revoke_key(self, context: Context) -> Response:
        if context.key_id == context.session.key_id:
            raise UIError(400, "this is the admin key you are logged in with; it stays")
        record = await self.gateway.keys.revoke(context.key_id)
        if record is None:
            raise UIError(404, "no such key")
        log.info("dashboard revoked key %s", record.id)
        return redirect("/ui/keys")

    async def add_credits(self, context: Context) -> Response:
        try:
            change = CreditsChange.model_validate(
                {"amount": _optional_number(context.form, "amount", float)}
            )
        except (ValidationError, UIError) as exc:
            return await self.keys(context, 400, _explain(exc))
        existing = await self.gateway.store.get_key(context.key_id)
        if existing is None:
            raise UIError(404, "no such key")
        if existing.credits_nanos is None:
            return await self.keys(context, 400, "that key has unlimited credits")
        nanos = usd_to_nanos(change.amount)
        if existing.credits_nanos + nanos > usd_to_nanos(MAX_CREDITS_USD):
            return await self.keys(context, 400, f"a key holds at most {MAX_CREDITS_USD} USD")
        await self.gateway.keys.add_credits(context.key_id, nanos)
        return redirect("/ui/keys")

    # -- usage --------------------------------------------------------------------------------

    async def _usage_rows(
        self, context: Context, limit: int
    ) -> tuple[dict[str, Any], list[LedgerRow]]:
        query = context.request.query
        key_id = query.get("key_id") or None
        model = query.get("model") or None
        day = query.get("day") or None
        since, until = _day_range(day)
        rows = await self.gateway.store.ledger_search(key_id, model, since, until, limit)
        filters = {"key_id": key_id or "", "model": model or "", "day": day or ""}
        return filters, rows

    async def usage(self, context: Context) -> Response:
        filters, rows = await self._usage_rows(context, USAGE_PAGE_ROWS)
        store = self.gateway.store
        since, until = _day_range(filters["day"] or None)
        totals = await store.usage_series(
            since or 0.0,
            until or time.time() + 1,
            10**10,  # one bucket: the totals of the filtered rows
            filters["key_id"] or None,
            filters["model"] or None,
        )
        total = {
            "requests": sum(t["requests"] for t in totals),
            "errors": sum(t["errors"] for t in totals),
            "tokens": sum(t["prompt_tokens"] + t["completion_tokens"] for t in totals),
            "cost": nanos_to_usd(sum(t["cost_nanos"] for t in totals)),
        }
        names = await self._key_names()
        seen = {
            str(g["group"])
            for g in await store.usage_totals(None, None, None, "model")
            if g["group"]
        }
        models = sorted(seen | {m.id for m in self.gateway.catalogue})
        query = context.request.scope.get("query_string", b"").decode("latin-1")
        return self._page(
            context,
            "usage.html",
            filters=filters,
            rows=rows,
            names=names,
            models=models,
            total=total,
            limit=USAGE_PAGE_ROWS,
            csv_url="/ui/usage.csv" + ("?" + query if query else ""),
        )

    async def usage_csv(self, context: Context) -> Response:
        _, rows = await self._usage_rows(context, CSV_ROWS)
        names = await self._key_names()
        out = io.StringIO()
        writer = csv.writer(out)
        writer.writerow(
            [
                "created_utc", "id", "key_id", "key_name", "requested_model", "model",
                "provider", "basket", "surface", "stream", "status", "http_status", "error_type",
                "prompt_tokens", "completion_tokens", "cached_tokens", "reasoning_tokens",
                "cost_usd", "estimated", "ttft_ms", "latency_ms",
            ]
        )  # fmt: skip
        for r in rows:
            writer.writerow(
                _csv_cell(v)
                for v in (
                    datetime.fromtimestamp(r.created, UTC).isoformat(timespec="seconds"),
                    r.id, r.key_id, names.get(r.key_id, ""), r.requested_model, r.model,
                    r.provider, r.basket, r.surface, r.stream, r.status, r.http_status,
                    r.error_type, r.prompt_tokens, r.completion_tokens, r.cached_tokens,
                    r.reasoning_tokens, f"{nanos_to_usd(r.cost_nanos):.9f}", r.estimated,
                    None if r.ttft_ms is None else round(r.ttft_ms, 1), round(r.latency_ms, 1),
                )
            )  # fmt: skip
        return Response(
            200,
            out.getvalue().encode("utf-8"),
            "text/csv; charset=utf-8",
            [(b"content-disposition", b'attachment; filename="llmrelay-usage.csv"')],
        )

    # -- live log -----------------------------------------------------------------------------

    async def log(self, context: Context) -> Response:
        return self._page(context, "log.html")

    async def recent_requests(self, context: Context) -> Response:
        after_text = context.request.query.get("after", "")
        try:
            after = float(after_text) if after_text else None
        except ValueError:
            raise UIError(400, "after must be Unix seconds") from None
        rows = await self.gateway.store.ledger_search(None, None, after, None, LOG_ROWS)
        if after is not None:
            rows = [r for r in rows if r.created > after]
        names = await self._key_names()
        return json_response(
            {
                "data": [
                    {
                        "id": r.id,
                        "created": r.created,
                        "key": names.get(r.key_id, r.key_id),
                        "requested_model": r.requested_model,
                        "model": r.model,
                        "basket": r.basket,
                        "stream": r.stream,
                        "status": r.status,
                        "http_status": r.http_status,
                        "error_type": r.error_type,
                        "prompt_tokens": r.prompt_tokens,
                        "completion_tokens": r.completion_tokens,
                        "cost": nanos_to_usd(r.cost_nanos),
                        "ttft_ms": r.ttft_ms,
                        "latency_ms": r.latency_ms,
                    }
                    for r in rows
                ]
            }
        )

    # -- playground ---------------------------------------------------------------------------

    async def playground(self, context: Context) -> Response:
        auto = sorted(self.gateway.catalogue.auto_names)
        models = [m.id for m in self.gateway.catalogue]
        return self._page(context, "playground.html", auto_names=auto, models=models)

    async def playground_key(self, context: Context) -> Response:
        """The session's playground key (created on first use), for the page's own API calls.

        It is an ordinary key, so the playground goes through exactly the path a client does;
        it expires with the session and is revoked at logout.
        """
        session = context.session
        current = session.playground_key
        if current is not None:
            cached = self.gateway.keys.cached(current[0])
            if cached is None or key_status(cached.record, time.time()) == "active":
                return json_response({"id": current[0], "key": current[1]})
        new = await self.gateway.keys.create(
            name=PLAYGROUND_KEY_NAME,
            rpm=PLAYGROUND_RPM,
            expires_at=session.expires,
            metadata={"playground": True},
        )
        session.playground_key = (new.record.id, new.secret)
        return json_response({"id": new.record.id, "key": new.secret})

    async def forget_playground_key(self, session: Session) -> None:
        """At logout: the playground key dies with the session."""
        if session.playground_key is None:
            return
        key_id = session.playground_key[0]
        session.playground_key = None
        await self.gateway.keys.revoke(key_id)


def _explain(error: Exception) -> str:
    if isinstance(error, UIError):
        return error.message
    assert isinstance(error, ValidationError)
    first = error.errors()[0]
    where = ".".join(str(p) for p in first["loc"]) or "form"
    return f"{where}: {first['msg']}"
