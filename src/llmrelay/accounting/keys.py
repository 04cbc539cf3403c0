"""API keys: creation, the authentication cache, and the spend a key has made.

Authentication runs on every request, so it must not touch the database: keys are looked up once
(on the first request that presents them) and then served from memory. A background task refreshes
the cached keys every ``key_cache_seconds`` so revocations and top-ups made elsewhere (the CLI,
another instance) take effect within that time; when the database is down, cached keys keep
working and an unknown key gets 503 rather than a wrong 401.

Each cached key has its :class:`~llmrelay.accounting.credits.Account` in the process's
:class:`~llmrelay.accounting.credits.CreditBook`; database reads of keys go through the book's
consistency token, so a read that overlaps a ledger write never moves a credit figure.
"""

from __future__ import annotations

import asyncio
import contextlib
import fnmatch
import logging
import time
from dataclasses import dataclass
from typing import Any

from sqlalchemy.exc import IntegrityError

from llmrelay.accounting.credits import Account, CreditBook
from llmrelay.accounting.records import KeyRecord, hash_secret, new_key_id, new_secret
from llmrelay.accounting.singleflight import SingleFlight
from llmrelay.accounting.store import Store
from llmrelay.core.errors import AuthenticationFailed, PermissionDenied, ServiceUnavailable

log = logging.getLogger("llmrelay.keys")

_NEGATIVE_TTL = 2.0
_CONSISTENT_READ_ATTEMPTS = 3


@dataclass(slots=True)
class CachedKey:
    record: KeyRecord
    account: Account

    @property
    def credits_used_nanos(self) -> int:
        """Settled spend as this process knows it (the limiter's ``usage`` is the shared one)."""
        return self.account.used

    @property
    def credits_remaining_nanos(self) -> int | None:
        if self.record.credits_nanos is None:
            return None
        return self.record.credits_nanos - self.credits_used_nanos


@dataclass(frozen=True, slots=True)
class NewKey:
    record: KeyRecord
    secret: str


class KeyService:
    def __init__(
        self, store: Store, refresh_seconds: float = 5.0, book: CreditBook | None = None
    ) -> None:
        self._store = store
        self._refresh_seconds = refresh_seconds
        self.book = book or CreditBook()
        self._by_hash: dict[str, CachedKey] = {}
        self._by_id: dict[str, CachedKey] = {}
        self._unknown: dict[str, float] = {}
        self._loading: SingleFlight[CachedKey] = SingleFlight()
        self._refresher: asyncio.Task[None] | None = None

    # -- lifecycle ----------------------------------------------------------------------------

    def start(self) -> None:
        self._refresher = asyncio.create_task(self._refresh_forever(), name="llmrelay-key-refresh")

    async def stop(self) -> None:
        if self._refresher is not None:
            self._refresher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._refresher

    # -- authentication -----------------------------------------------------------------------

    async def authenticate(self, secret: str | None) -> CachedKey:
        if not secret:
            raise AuthenticationFailed(
                "no API key: send it as 'Authorization: Bearer <key>' (or x-api-key, apikey, "
                "x-goog-api-key, ?key=)"
            )
        key_hash = hash_secret(secret)
        cached = self._by_hash.get(key_hash)
        if cached is None:
            # One database read for a crowd of first requests presenting the same key.
            cached = await self._loading.run(key_hash, lambda: self._load(key_hash))
        record = cached.record
        if record.revoked_at is not None:
            raise AuthenticationFailed("this API key has been revoked")
        if record.expires_at is not None and record.expires_at <= time.time():
            raise AuthenticationFailed("this API key has expired")
        return cached

    async def _load(self, key_hash: str) -> CachedKey:
        now = time.monotonic()
        if self._unknown.get(key_hash, 0.0) > now:
            raise AuthenticationFailed("invalid API key")
        try:
            # A read that overlapped a ledger write may hold credits_used from either side of
            # it: read again (a write takes milliseconds) so the account starts exact.
            for _ in range(_CONSISTENT_READ_ATTEMPTS):
                token = self.book.token()
                record = await self._store.find_key(key_hash)
                if record is None or self.book.consistent(token):
                    break
        except Exception as exc:
            log.warning("key lookup failed: %s", exc.__class__.__name__)
            raise ServiceUnavailable(
                "the key store is unavailable; try again shortly", retry_after=5
            ) from None
        if record is None:
            if len(self._unknown) > 10_000:
                self._unknown.clear()
            self._unknown[key_hash] = now + _NEGATIVE_TTL
            raise AuthenticationFailed("invalid API key")
        return self._remember(record, token)

    def _remember(self, record: KeyRecord, token: int | None) -> CachedKey:
        cached = self._by_id.get(record.id)
        if cached is None:
            # Another task may have opened the account meanwhile: the book keeps the first one.
            cached = CachedKey(record, self.book.open(record))
            self._by_id[record.id] = cached
        else:
            cached.record = record
        self.book.observe(record, token)
        self._by_hash[record.key_hash] = cached
        return cached

    @staticmethod
    def check_model(cached: CachedKey, model_id: str) -> None:
        patterns = cached.record.models
        if patterns and not any(fnmatch.fnmatchcase(model_id, p) for p in patterns):
            raise PermissionDenied(f"this key may not use model {model_id!r}", param="model")

    def cached(self, key_id: str) -> CachedKey | None:
        return self._by_id.get(key_id)

    # -- administration -----------------------------------------------------------------------

    async def create(
        self,
        *,
        name: str,
        credits_nanos: int | None = None,
        rpm: int | None = None,
        tpm: int | None = None,
        daily_tokens: int | None = None,
        models: tuple[str, ...] = (),
        expires_at: float | None = None,
        metadata: dict[str, Any] | None = None,
        is_admin: bool = False,
        secret: str | None = None,
    ) -> NewKey:
        secret = secret or new_secret()
        record = KeyRecord(
            id=new_key_id(),
            name=name,
            key_hash=hash_secret(secret),
            prefix=secret[:7],
            is_admin=is_admin,
            credits_nanos=credits_nanos,
            rpm=rpm,
            tpm=tpm,
            daily_tokens=daily_tokens,
            models=models,
            expires_at=expires_at,
            created_at=time.time(),
            metadata=metadata or {},
        )
        await self._store.create_key(record)
        self._unknown.pop(record.key_hash, None)
        return NewKey(record, secret)

    async def revoke(self, key_id: str) -> KeyRecord | None:
        token = self.book.token()
        record = await self._store.revoke_key(key_id)
        if record is not None and record.id in self._by_id:
            self._remember(record, token)
        return record

    async def add_credits(self, key_id: str, nanos: int) -> KeyRecord | None:
        token = self.book.token()
        record = await self._store.add_credits(key_id, nanos)
        if record is not None and record.id in self._by_id:
            self._remember(record, token)
        return record

    async def ensure_admin(self, secret: str | None) -> NewKey | None:
        """Create the admin key on a database with none; None when one exists already."""
        if await self._store.count_admin_keys():
            return None
        try:
            return await self.create(name="admin", is_admin=True, secret=secret)
        except IntegrityError:
            # Instances starting together with the same LLMRELAY_ADMIN_KEY: one created it.
            if secret is None or await self._store.find_key(hash_secret(secret)) is None:
                raise
            return None

    # -- refresh ------------------------------------------------------------------------------

    async def refresh(self) -> None:
        """Re-read every cached key: revocations, limits and credits changed elsewhere, and the
        spend other processes stored (adopted only from reads no ledger write overlapped)."""
        ids = list(self._by_id)
        for start in range(0, len(ids), 500):
            token = self.book.token()
            for record in await self._store.get_keys(ids[start : start + 500]):
                self._remember(record, token)

    async def _refresh_forever(self) -> None:
        while True:
            await asyncio.sleep(self._refresh_seconds)
            try:
                await self.refresh()
            except Exception as exc:  # a store outage must not end the refresher
                log.warning("key refresh failed: %s", exc.__class__.__name__)
