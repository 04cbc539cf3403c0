"""The limiter contract: requests and tokens per minute, tokens per day, and credit reservations.

Before a request is forwarded the pipeline asks the limiter to ``admit`` it. In this order, the
key's own 429s come first (``rpm``, ``tpm``, then the daily token quota), then its credits (402);
an admitted request holds a :class:`Ticket` with the credit it reserved. When it finishes, the
pipeline hands the ticket back to ``settle`` with the real cost and tokens: the reservation is
released and the spend and tokens are counted. ``settle`` never blocks and never raises.

Two implementations share this contract (``tests/test_limiter_contract.py`` runs one suite over
both): ``limits_local.LocalLimiter`` keeps everything in the process (exact within it) and
``limits_redis.RedisLimiter`` keeps it in Redis, where each step is one Lua script, so every
instance shares the same windows, quotas and reservations. ``NullLimiter`` is accounting turned
off (``accounting.enabled: false``).

Windows are sliding 60 seconds; the daily quota counts tokens per UTC day. Tokens count when a
request settles (its real usage): the request that crosses ``tpm`` or the quota is served in full
and the next ones wait. A request refused by a limit does not count against it; one that passed
the limits and was then refused for credits does.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal, Protocol

from llmrelay.accounting.credits import CreditBook
from llmrelay.accounting.records import KeyRecord, LedgerRow
from llmrelay.core.errors import RateLimited

if TYPE_CHECKING:
    from llmrelay.accounting.keys import CachedKey
    from llmrelay.accounting.store import Store
    from llmrelay.config import Settings

WINDOW_SECONDS = 60.0
DAY_SECONDS = 86_400


@dataclass(frozen=True, slots=True)
class Ticket:
    """An admitted request: what it reserved, and where (to settle it in the same place)."""

    key_id: str
    request_id: str
    reserved: int
    via: Literal["local", "redis", "none"]
    tpm: bool = False
    """Whether the key had a tokens-per-minute limit when admitted (its tokens go to the window)."""


@dataclass(frozen=True, slots=True)
class KeyUsage:
    """A key's figures as the limiter sees them (``GET /v1/key``, ``GET /admin/keys``)."""

    credits_used: int
    credits_reserved: int
    tokens_today: int | None
    """None when the day's count is not known here (no daily quota, or the database is down)."""


class Limiter(Protocol):
    async def start(self) -> None: ...
    async def close(self) -> None: ...

    async def admit(self, key: CachedKey, request_id: str, estimate: int) -> Ticket:
        """Count the request and reserve ``estimate`` nano-dollars, or raise 429/402 (or 503)."""

    def settle(
        self, key: CachedKey, ticket: Ticket | None, cost: int, tokens: int, request_id: str
    ) -> None:
        """The request finished (``ticket`` is None when it was never admitted)."""

    async def usage(self, key: CachedKey) -> KeyUsage: ...

    async def spend(self, records: list[KeyRecord]) -> dict[str, int]:
        """Settled spend of each key, for listings."""

    # The ledger writer's listener (accounting.ledger.LedgerListener).
    def write_started(self) -> None: ...
    def write_ended(self) -> None: ...
    def committed(self, rows: list[LedgerRow], settled_here: bool) -> None: ...
    def rejected(self, rows: list[LedgerRow], settled_here: bool) -> None: ...


def utc_day(now: float | None = None) -> tuple[str, float]:
    """Today (UTC) as its number of days since 1970-01-01, and the Unix time it began.

    (Unix time has no leap seconds: every UTC day is exactly 86,400 of its seconds.)
    """
    number = int((time.time() if now is None else now) // DAY_SECONDS)
    return str(number), float(number * DAY_SECONDS)


def rpm_exceeded(record: KeyRecord, retry_after: float) -> RateLimited:
    return RateLimited(
        f"this key's limit of {record.rpm} requests per minute is reached",
        retry_after=max(retry_after, 0.001),
    )


def tpm_exceeded(record: KeyRecord, retry_after: float) -> RateLimited:
    return RateLimited(
        f"this key's limit of {record.tpm} tokens per minute is reached",
        retry_after=max(retry_after, 0.001),
    )


def quota_exceeded(record: KeyRecord, now: float | None = None) -> RateLimited:
    _, start = utc_day(now)
    now = time.time() if now is None else now
    return RateLimited(
        f"this key's daily quota of {record.daily_tokens} tokens is used up until 00:00 UTC",
        retry_after=max(start + DAY_SECONDS - now, 1.0),
    )


class NullLimiter:
    """Accounting off: every request is admitted, nothing is counted."""

    def __init__(self, book: CreditBook) -> None:
        self._book = book

    async def start(self) -> None:
        return None

    async def close(self) -> None:
        return None

    async def admit(self, key: CachedKey, request_id: str, estimate: int) -> Ticket:
        return Ticket(key.record.id, request_id, 0, "none")

    def settle(
        self, key: CachedKey, ticket: Ticket | None, cost: int, tokens: int, request_id: str
    ) -> None:
        return None

    async def usage(self, key: CachedKey) -> KeyUsage:
        return KeyUsage(key.account.used, 0, None)

    async def spend(self, records: list[KeyRecord]) -> dict[str, int]:
        return {record.id: record.credits_used_nanos for record in records}

    def write_started(self) -> None:
        self._book.write_started()

    def write_ended(self) -> None:
        self._book.write_ended()

    def committed(self, rows: list[LedgerRow], settled_here: bool) -> None:
        self._book.committed(rows, settled_here)

    def rejected(self, rows: list[LedgerRow], settled_here: bool) -> None:
        self._book.rejected(rows, settled_here)


def create_limiter(settings: Settings, book: CreditBook, store: Store) -> Limiter:
    """The limiter the settings ask for: none, in-process, or shared through Redis."""
    from llmrelay.accounting.limits_local import LocalLimiter

    if not settings.accounting.enabled:
        return NullLimiter(book)
    local = LocalLimiter(book, store)
    if settings.redis_url is None:
        return local
    from llmrelay.accounting.limits_redis import RedisLimiter

    return RedisLimiter(settings.redis_url, settings.accounting, book, store, local)
