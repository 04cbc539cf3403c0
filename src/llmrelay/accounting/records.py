"""The records accounting keeps: API keys and ledger rows."""

from __future__ import annotations

import hashlib
import secrets
from dataclasses import dataclass, field
from typing import Any

from llmrelay.core.types import LedgerStatus

KEY_PREFIX = "lr-"


def new_secret() -> str:
    return KEY_PREFIX + secrets.token_urlsafe(32)


def hash_secret(secret: str) -> str:
    # Keys are 256 random bits: a fast hash is as safe as a slow one and keeps auth off the CPU.
    return hashlib.sha256(secret.encode("utf-8")).hexdigest()


def new_key_id() -> str:
    return "key_" + secrets.token_hex(8)


@dataclass(frozen=True, slots=True)
class KeyRecord:
    id: str
    name: str
    key_hash: str
    prefix: str
    is_admin: bool = False
    credits_nanos: int | None = None
    credits_used_nanos: int = 0
    rpm: int | None = None
    tpm: int | None = None
    daily_tokens: int | None = None
    models: tuple[str, ...] = ()
    expires_at: float | None = None
    revoked_at: float | None = None
    created_at: float = 0.0
    metadata: dict[str, Any] = field(default_factory=dict)


@dataclass(slots=True)
class LedgerRow:
    id: str
    key_id: str
    requested_model: str | None
    model: str | None
    provider: str | None
    basket: str | None
    stream: bool
    status: LedgerStatus
    http_status: int
    error_type: str | None
    prompt_tokens: int
    completion_tokens: int
    cached_tokens: int
    reasoning_tokens: int
    cost_nanos: int
    estimated: bool
    ttft_ms: float | None
    latency_ms: float
    created: float
    surface: str = "openai"
    route_confidence: float | None = None
