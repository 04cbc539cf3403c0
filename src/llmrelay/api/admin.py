"""The admin API: keys, credits and usage reports, for the admin key only."""

from __future__ import annotations

import math
import time
from datetime import datetime
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from llmrelay.accounting.pricing import nanos_to_usd, usd_to_nanos
from llmrelay.accounting.records import KeyRecord
from llmrelay.api.asgi import Request, Send, send_json, send_openai_error
from llmrelay.core.errors import GatewayError, InvalidRequest, NotFound, PermissionDenied
from llmrelay.core.pipeline import Gateway
from llmrelay.core.validate import parse_json_object

# Credits are stored as 64-bit integer nano-dollars; a billion USD keeps every sum far inside.
MAX_CREDITS_USD = 1_000_000_000
MAX_DAILY_TOKENS = 10**15
# rpm and tpm are 32-bit columns (PostgreSQL INTEGER); past two billion a minute is no limit anyway.
MAX_PER_MINUTE = 2**31 - 1


class KeyCreate(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    # Numbers are strict: JSON true or "5" must not quietly become credits or a limit.
    name: str = Field(min_length=1, max_length=200)
    credits: float | None = Field(None, ge=0, le=MAX_CREDITS_USD, allow_inf_nan=False, strict=True)
    rpm: int | None = Field(None, ge=1, le=MAX_PER_MINUTE, strict=True)
    tpm: int | None = Field(None, ge=1, le=MAX_PER_MINUTE, strict=True)
    daily_tokens: int | None = Field(None, ge=1, le=MAX_DAILY_TOKENS, strict=True)
    models: list[str] | None = None
    expires_at: float | None = Field(None, gt=0)
    metadata: dict[str, Any] | None = None

    @field_validator("name")
    @classmethod
    def _storable_name(cls, value: str) -> str:
        return _storable(value)

    @field_validator("models")
    @classmethod
    def _storable_models(cls, value: list[str] | None) -> list[str] | None:
        for pattern in value or ():
            _storable(pattern)
        return value


def _storable(text: str) -> str:
    # PostgreSQL text cannot hold NUL: refuse it here (400) rather than fail there (500).
    if "\x00" in text:
        raise ValueError("must not contain NUL characters")
    return text


class CreditsChange(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    amount: float = Field(gt=0, le=MAX_CREDITS_USD, allow_inf_nan=False, strict=True)


def key_view(record: KeyRecord, credits_used_nanos: int | None = None) -> dict[str, Any]:
    used = record.credits_used_nanos if credits_used_nanos is None else credits_used_nanos
    return {
        "id": record.id,
        "name": record.name,
        "prefix": record.prefix,
        "is_admin": record.is_admin,
        "credits": None if record.credits_nanos is None else nanos_to_usd(record.credits_nanos),
        "credits_used": nanos_to_usd(used),
        "rpm": record.rpm,
        "tpm": record.tpm,
        "daily_tokens": record.daily_tokens,
        "models": list(record.models),
        "expires_at": record.expires_at,
        "revoked": record.revoked_at is not None,
        "created_at": record.created_at,
        "metadata": record.metadata,
    }


def _parse(model: type[BaseModel], raw: bytes) -> Any:
    body = parse_json_object(raw)
    try:
        return model.model_validate(body)
    except ValidationError as exc:
        first = exc.errors()[0]
        field = ".".join(str(p) for p in first["loc"]) or None
        reason = "unknown field" if first["type"] == "extra_forbidden" else first["msg"]
        raise InvalidRequest(f"'{field}': {reason}", param=field) from None


def _timestamp(value: str | None, name: str) -> float | None:
    if not value:
        return None
    try:
        seconds = float(value)
    except ValueError:
        pass
    else:
        if not math.isfinite(seconds):
            raise InvalidRequest(f"'{name}' must be a finite number of seconds", param=name)
        return seconds
    try:
        return datetime.fromisoformat(value).timestamp()
    except ValueError:
        raise InvalidRequest(f"'{name}' must be Unix seconds or an ISO date", param=name) from None


class AdminSurface:
    def __init__(self, gateway: Gateway) -> None:
        self.gateway = gateway

    async def _require_admin(self, request: Request) -> None:
        cached = await self.gateway.authenticate(request.api_key())
        if not cached.record.is_admin:
            raise PermissionDenied("this route needs the admin key")

    async def dispatch(self, request: Request, send: Send, action: str) -> None:
        try:
            await self._require_admin(request)
            status, payload = await getattr(self, "_" + action)(request)
        except GatewayError as error:
            await send_openai_error(send, error)
            return
        await send_json(send, status, payload)

    async def _create_key(self, request: Request) -> tuple[int, Any]:
        request.require_json()
        body: KeyCreate = _parse(KeyCreate, await request.body(1 << 20))
        new = await self.gateway.keys.create(
            name=body.name,
            credits_nanos=None if body.credits is None else usd_to_nanos(body.credits),
            rpm=body.rpm,
            tpm=body.tpm,
            daily_tokens=body.daily_tokens,
            models=tuple(body.models or ()),
            expires_at=body.expires_at,
            metadata=body.metadata,
        )
        return 201, {**key_view(new.record), "key": new.secret}

    async def _list_keys(self, request: Request) -> tuple[int, Any]:
        records = await self.gateway.store.list_keys()
        spend = await self.gateway.limiter.spend(records)
        data = [key_view(record, spend.get(record.id)) for record in records]
        return 200, {"object": "list", "data": data}

    async def _revoke_key(self, request: Request) -> tuple[int, Any]:
        key_id = request.path_params["key_id"]
        record = await self.gateway.keys.revoke(key_id)
        if record is None:
            raise NotFound(f"no key {key_id!r}", param="key_id")
        return 200, key_view(record)

    async def _add_credits(self, request: Request) -> tuple[int, Any]:
        request.require_json()
        key_id = request.path_params["key_id"]
        body: CreditsChange = _parse(CreditsChange, await request.body(1 << 16))
        existing = await self.gateway.store.get_key(key_id)
        if existing is None:
            raise NotFound(f"no key {key_id!r}", param="key_id")
        if existing.credits_nanos is None:
            raise InvalidRequest(
                f"key {key_id!r} has unlimited credits; there is nothing to top up", param="amount"
            )
        nanos = usd_to_nanos(body.amount)
        if existing.credits_nanos + nanos > usd_to_nanos(MAX_CREDITS_USD):
            raise InvalidRequest(
                f"a key holds at most {MAX_CREDITS_USD} USD of credits", param="amount"
            )
        record = await self.gateway.keys.add_credits(key_id, nanos)
        assert record is not None
        return 200, key_view(record)

    async def _usage(self, request: Request) -> tuple[int, Any]:
        query = request.query
        allowed = {"key_id", "model", "provider", "since", "until", "group_by", "limit", "key"}
        unknown = set(query) - allowed
        if unknown:
            name = sorted(unknown)[0]
            raise InvalidRequest(f"unknown query parameter {name!r}", param=name)
        key_id = query.get("key_id") or None
        model = query.get("model") or None
        provider = query.get("provider") or None
        since = _timestamp(query.get("since"), "since")
        until = _timestamp(query.get("until"), "until")
        group_by = query.get("group_by", "model")
        if group_by not in ("key", "model", "provider", "day"):
            raise InvalidRequest("'group_by' is one of key, model, provider, day", param="group_by")
        limit_text = query.get("limit", "100")
        if not limit_text.isdigit() or not 1 <= int(limit_text) <= 10_000:
            raise InvalidRequest("'limit' is a whole number from 1 to 10000", param="limit")
        await self.gateway.ledger.flush()
        store = self.gateway.store
        rows = await store.ledger_rows(
            key_id, since, until, int(limit_text), model=model, provider=provider
        )
        groups = await store.usage_totals(
            key_id, since, until, group_by, model=model, provider=provider
        )
        totals = {
            "requests": sum(g["requests"] for g in groups),
            "prompt_tokens": sum(g["prompt_tokens"] for g in groups),
            "completion_tokens": sum(g["completion_tokens"] for g in groups),
            "cost": nanos_to_usd(sum(g["cost_nanos"] for g in groups)),
        }
        return 200, {
            "object": "usage",
            "generated_at": time.time(),
            "filters": {
                "key_id": key_id,
                "model": model,
                "provider": provider,
                "since": since,
                "until": until,
            },
            "totals": totals,
            "group_by": group_by,
            "groups": [
                {
                    **{k: v for k, v in g.items() if k != "cost_nanos"},
                    "cost": nanos_to_usd(g["cost_nanos"]),
                }
                for g in groups
            ],
            "data": [
                {
                    "id": r.id,
                    "key_id": r.key_id,
                    "requested_model": r.requested_model,
                    "model": r.model,
                    "provider": r.provider,
                    "status": r.status,
                    "http_status": r.http_status,
                    "stream": r.stream,
                    "prompt_tokens": r.prompt_tokens,
                    "completion_tokens": r.completion_tokens,
                    "cost": nanos_to_usd(r.cost_nanos),
                    "estimated": r.estimated,
                    "latency_ms": r.latency_ms,
                    "created": r.created,
                }
                for r in rows
            ],
        }
