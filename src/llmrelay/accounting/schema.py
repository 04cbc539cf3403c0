"""Table definitions shared by the stores and the migrations (which must match them)."""

from __future__ import annotations

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    Column,
    Float,
    Index,
    Integer,
    MetaData,
    String,
    Table,
)

metadata = MetaData()

api_keys = Table(
    "api_keys",
    metadata,
    Column("id", String(40), primary_key=True),
    Column("name", String(200), nullable=False),
    Column("key_hash", String(64), nullable=False, unique=True),
    Column("prefix", String(16), nullable=False),
    Column("is_admin", Boolean, nullable=False, default=False),
    Column("credits_nanos", BigInteger, nullable=True),
    Column("credits_used_nanos", BigInteger, nullable=False, default=0),
    Column("rpm", Integer, nullable=True),
    Column("tpm", Integer, nullable=True),
    Column("daily_tokens", BigInteger, nullable=True),
    Column("models", JSON, nullable=False),
    Column("expires_at", Float, nullable=True),
    Column("revoked_at", Float, nullable=True),
    Column("created_at", Float, nullable=False),
    Column("metadata", JSON, nullable=False),
)

ledger = Table(
    "ledger",
    metadata,
    Column("id", String(64), primary_key=True),
    Column("key_id", String(40), nullable=False),
    Column("requested_model", String(200), nullable=True),
    Column("model", String(200), nullable=True),
    Column("provider", String(100), nullable=True),
    Column("basket", String(40), nullable=True),
    Column("route_confidence", Float, nullable=True),
    Column("surface", String(20), nullable=False),
    Column("stream", Boolean, nullable=False),
    Column("status", String(16), nullable=False),
    Column("http_status", Integer, nullable=False),
    Column("error_type", String(64), nullable=True),
    Column("prompt_tokens", Integer, nullable=False),
    Column("completion_tokens", Integer, nullable=False),
    Column("cached_tokens", Integer, nullable=False),
    Column("reasoning_tokens", Integer, nullable=False),
    Column("cost_nanos", BigInteger, nullable=False),
    Column("estimated", Boolean, nullable=False),
    Column("ttft_ms", Float, nullable=True),
    Column("latency_ms", Float, nullable=False),
    Column("created", Float, nullable=False),
    Index("ix_ledger_key_created", "key_id", "created"),
    Index("ix_ledger_created", "created"),
)
