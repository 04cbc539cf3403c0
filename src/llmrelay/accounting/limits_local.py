"""The in-process limiter: exact within one process, and nothing is shared between processes.

With several processes (``--workers N``, several instances) each keeps its own windows and
reservations, so a key can get up to N times its limits: shared limits need Redis
(``limits_redis``). A key's token count for the day starts from the ledger (its rows since
00:00 UTC) at its first request of the day in the process, then counts on in memory.

``admit`` awaits nothing between its first check and its last count, so concurrent requests of
one process see each other's counts and reservations exactly.
"""

from __future__ import annotations

import logging
import time
from collections import deque
from dataclasses import dataclass
from typing import TYPE_CHECKING

from llmrelay.accounting.credits import CreditBook
from llmrelay.accounting.limits import (
    WINDOW_SECONDS,
    KeyUsage,
    Ticket,
    quota_exceeded,
    rpm_exceeded,
    tpm_exceeded,
    utc_day,
)
from llmrelay.accounting.records import KeyRecord, LedgerRow
from llmrelay.accounting.singleflight import SingleFlight

if TYPE_CHECKING:
    from llmrelay.accounting.keys import CachedKey
    from llmrelay.accounting.store import Store

log = logging.getLogger("llmrelay.limits")

_DAY_RETRY_SECONDS = 5.0


class _Window:
    __slots__ = ("requests", "token_total", "tokens")

    def __init__(self) -> None:
        self.requests: deque[float] = deque()
        self.tokens: deque[tuple[float, int]] = deque()
        self.token_total = 0

    def trim(self, now: float) -> None:
        horizon = now - WINDOW_SECONDS
        while self.requests and self.requests[0] <= horizon:
            self.requests.popleft()
        while self.tokens and self.tokens[0][0] <= horizon:
            self.token_total -= self.tokens.popleft()[1]

    def tokens_free_at(self, limit: int) -> float:
        """When enough old entries have aged out for the total to fall under ``limit``."""
        total = self.token_total
        for at, tokens in self.tokens:
            total -= tokens
            if total < limit:
                return at + WINDOW_SECONDS
        return time.monotonic()


@dataclass(slots=True)
class _Day:
    day: str
    tokens: int = 0
    known: bool = False
    retry_at: float = 0.0


class LocalLimiter:
    def __init__(self, book: CreditBook, store: Store) -> None:
        self._book = book
        self._store = store
        self._windows: dict[str, _Window] = {}
        self._days: dict[str, _Day] = {}
        self._loading: SingleFlight[None] = SingleFlight()

    async def start(self) -> None:
        return None

    async def close(self) -> None:
        return None

    # -- admission ----------------------------------------------------------------------------

    async def admit(self, key: CachedKey, request_id: str, estimate: int) -> Ticket:
        record = key.record
        await self.load_day(record.id)  # once a day per key: today's tokens, from the ledger
        self.check(record)
        self.count_request(record)
        reserved = self._book.reserve(record, key.account, estimate)
        return Ticket(record.id, request_id, reserved, "local", tpm=record.tpm is not None)

    def check(self, record: KeyRecord) -> None:
        """Raise the key's 429 if a window or its daily quota is full; counts nothing."""
        if record.rpm is not None or record.tpm is not None:
            now = time.monotonic()
            window = self._window(record.id)
            window.trim(now)
            if record.rpm is not None and len(window.requests) >= record.rpm:
                oldest = window.requests[len(window.requests) - record.rpm]
                raise rpm_exceeded(record, oldest + WINDOW_SECONDS - now)
            if record.tpm is not None and window.token_total >= record.tpm:
                raise tpm_exceeded(record, window.tokens_free_at(record.tpm) - now)
        if record.daily_tokens is not None:
            entry = self._days.get(record.id)
            if (
                entry is not None
                and entry.known
                and entry.tokens >= record.daily_tokens
                and entry.day == utc_day()[0]
            ):
                raise quota_exceeded(record)

    def count_request(self, record: KeyRecord) -> None:
        if record.rpm is not None:
            self._window(record.id).requests.append(time.monotonic())

    def _window(self, key_id: str) -> _Window:
        window = self._windows.get(key_id)
        if window is None:
            window = self._windows[key_id] = _Window()
        return window

    # -- settlement ---------------------------------------------------------------------------

    def settle(
        self, key: CachedKey, ticket: Ticket | None, cost: int, tokens: int, request_id: str
    ) -> None:
        reserved = ticket.reserved if ticket is not None and ticket.via == "local" else 0
        self._book.settle(key.record.id, reserved, cost)
        self.record_tokens(key.record, tokens)

    def record_tokens(self, record: KeyRecord, tokens: int) -> None:
        if tokens <= 0:
            return
        if record.tpm is not None:
            window = self._window(record.id)
            window.tokens.append((time.monotonic(), tokens))
            window.token_total += tokens
        entry = self._days.get(record.id)
        if entry is None:
            return
        today = utc_day()[0]
        if entry.day != today:
            # A new day: nothing of it can be in the ledger from before this row in this process.
            entry = self._days[record.id] = _Day(today, known=True)
        if entry.known:
            entry.tokens += tokens

    # -- the daily count ----------------------------------------------------------------------

    async def load_day(self, key_id: str) -> None:
        """Make today's token count known (from the ledger), unless it is, or the store is down."""
        today = utc_day()[0]
        entry = self._days.get(key_id)
        if (
            entry is not None
            and entry.day == today
            and (entry.known or time.monotonic() < entry.retry_at)
        ):
            return
        await self._loading.run(key_id, lambda: self._read_day(key_id, today))

    async def _read_day(self, key_id: str, today: str) -> None:
        _, start = utc_day()
        try:
            tokens = await self._store.tokens_since(key_id, start)
        except Exception as exc:
            # The quota is checked again once the database answers; until then it is not known.
            log.warning("daily token count unavailable: %s", exc.__class__.__name__)
            self._days[key_id] = _Day(today, retry_at=time.monotonic() + _DAY_RETRY_SECONDS)
            return
        entry = self._days.get(key_id)
        counted = entry.tokens if entry is not None and entry.day == today else 0
        self._days[key_id] = _Day(today, max(tokens, counted), known=True)

    def tokens_today(self, key_id: str) -> int | None:
        entry = self._days.get(key_id)
        if entry is None or not entry.known or entry.day != utc_day()[0]:
            return None
        return entry.tokens

    # -- views --------------------------------------------------------------------------------

    async def usage(self, key: CachedKey) -> KeyUsage:
        await self.load_day(key.record.id)
        account = key.account
        return KeyUsage(account.used, account.reserved, self.tokens_today(key.record.id))

    async def spend(self, records: list[KeyRecord]) -> dict[str, int]:
        spend: dict[str, int] = {}
        for record in records:
            account = self._book.account(record.id)
            spend[record.id] = record.credits_used_nanos if account is None else account.used
        return spend

    # -- the ledger writer's listener ---------------------------------------------------------

    def write_started(self) -> None:
        self._book.write_started()

    def write_ended(self) -> None:
        self._book.write_ended()

    def committed(self, rows: list[LedgerRow], settled_here: bool) -> None:
        self._book.committed(rows, settled_here)

    def rejected(self, rows: list[LedgerRow], settled_here: bool) -> None:
        self._book.rejected(rows, settled_here)
