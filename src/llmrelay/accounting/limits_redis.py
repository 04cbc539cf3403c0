"""The shared limiter: windows, daily counts, spend and reservations in Redis, a Lua script a step.

Every instance pointed at the same Redis (``redis_url``) and key prefix shares each key's state, so
limits and credits hold across any number of instances. Admission is one script (check the
windows and the quota, count the request, lapse dead reservations, check the credits, reserve) and
settlement another (release the reservation, add the cost, count the tokens), so no interleaving
of instances can overspend or overcount. Times come from Redis (``TIME``), not from each instance.

Keys (all of one API key in one hash slot, ``{key_id}``, so the scripts also run on a cluster)::

    <prefix>{<key id>}:acct       hash: used (settled spend), reserved (sum of reservations)
    <prefix>{<key id>}:res        hash: request id -> reserved nano-dollars
    <prefix>{<key id>}:resx       zset: request id -> when the reservation lapses (ms)
    <prefix>{<key id>}:lapsed     zset: reservations lapsed unsettled, still to be settled
    <prefix>{<key id>}:rpm        zset: request id -> admitted at (ms)
    <prefix>{<key id>}:tpm        zset: "<request id>:<tokens>" -> settled at (ms)
    <prefix>{<key id>}:tpmsum     the sum of the tpm entries
    <prefix>{<key id>}:day:<n>    tokens settled on UTC day n (days since 1970-01-01)
    <prefix>{<key id>}:done       zset: settlements made without a reservation (once each)

``used`` starts from the database's ``credits_used`` (plus this instance's costs not yet written)
the first time a key is seen, then Redis is the reference: every instance settles into it. A
settlement that cannot reach Redis is queued and retried (each is applied at most once: it is keyed
by its reservation), so an outage does not lose spend. While Redis is unreachable the policy
decides: ``open`` admits through the in-process limiter (each instance on its own, as without
Redis), ``closed`` answers 503. Redis is tried again every second; nothing needs a restart.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import Counter, deque
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

from redis.asyncio import BlockingConnectionPool, Redis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import NoScriptError, RedisError

from llmrelay.accounting.credits import CreditBook, out_of_credits
from llmrelay.accounting.limits import (
    WINDOW_SECONDS,
    KeyUsage,
    Ticket,
    quota_exceeded,
    rpm_exceeded,
    tpm_exceeded,
    utc_day,
)
from llmrelay.accounting.limits_local import LocalLimiter
from llmrelay.accounting.records import KeyRecord, LedgerRow
from llmrelay.accounting.singleflight import SingleFlight
from llmrelay.config import AccountingConfig
from llmrelay.core.errors import ServiceUnavailable

if TYPE_CHECKING:
    from llmrelay.accounting.keys import CachedKey
    from llmrelay.accounting.store import Store

log = logging.getLogger("llmrelay.limits")

UNAVAILABLE = (RedisError, OSError, TimeoutError)
_TIMEOUT_SECONDS = 0.5
_CONNECTIONS = 64
_POOL_WAIT_SECONDS = 2.0
_LINGER_SECONDS = 0.01
_DAY_RETRY_SECONDS = 5.0
_PROBE_SECONDS = 1.0
_BATCH = 256
_DAY_TTL_SECONDS = 2 * 86_400
_WINDOW_MS = int(WINDOW_SECONDS * 1000)

# Lua numbers are doubles: amounts go to HINCRBY as the strings they came as, so sums stay exact
# 64-bit integers; only the comparison with the limit is in floating point (exact below 2^53
# nano-dollars, about 9 million USD).
ADMIT = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local id, rpm, tpm, daily = ARGV[1], tonumber(ARGV[2]), tonumber(ARGV[3]), tonumber(ARGV[4])
local credits, window = tonumber(ARGV[5]), tonumber(ARGV[8])
if redis.call('HEXISTS', KEYS[1], 'used') == 0 then return {'init_credits'} end
if daily >= 0 and redis.call('EXISTS', KEYS[8]) == 0 then return {'init_day'} end
local horizon = now - window
if rpm > 0 then
  redis.call('ZREMRANGEBYSCORE', KEYS[5], '-inf', horizon)
  local count = redis.call('ZCARD', KEYS[5])
  if count >= rpm then
    local entry = redis.call('ZRANGE', KEYS[5], count - rpm, count - rpm, 'WITHSCORES')
    return {'rpm', tonumber(entry[2]) + window - now}
  end
end
if tpm > 0 then
  local aged = redis.call('ZRANGEBYSCORE', KEYS[6], '-inf', horizon)
  if #aged > 0 then
    local gone = 0
    for _, member in ipairs(aged) do gone = gone + tonumber(string.match(member, '(%d+)$')) end
    redis.call('ZREMRANGEBYSCORE', KEYS[6], '-inf', horizon)
    redis.call('DECRBY', KEYS[7], gone)
  end
  local total = tonumber(redis.call('GET', KEYS[7]) or '0')
  if total >= tpm then
    local entries = redis.call('ZRANGE', KEYS[6], 0, -1, 'WITHSCORES')
    local free_at = now
    for i = 1, #entries, 2 do
      total = total - tonumber(string.match(entries[i], '(%d+)$'))
      if total < tpm then
        free_at = tonumber(entries[i + 1]) + window
        break
      end
    end
    return {'tpm', free_at - now}
  end
end
if daily > 0 and tonumber(redis.call('GET', KEYS[8])) >= daily then return {'daily'} end
if rpm > 0 then
  redis.call('ZADD', KEYS[5], now, id)
  redis.call('PEXPIRE', KEYS[5], window * 2)
end
local lapsed = redis.call('ZRANGEBYSCORE', KEYS[3], '-inf', now, 'LIMIT', 0, 100)
for _, rid in ipairs(lapsed) do
  local amount = redis.call('HGET', KEYS[2], rid)
  if amount then
    if amount ~= '0' then redis.call('HINCRBY', KEYS[1], 'reserved', '-' .. amount) end
    redis.call('HDEL', KEYS[2], rid)
  end
  redis.call('ZREM', KEYS[3], rid)
  redis.call('ZADD', KEYS[4], now, rid)
end
if #lapsed > 0 then redis.call('ZREMRANGEBYSCORE', KEYS[4], '-inf', now - 86400000) end
local estimate = '0'
if credits >= 0 then
  local used = redis.call('HGET', KEYS[1], 'used')
  local reserved = tonumber(redis.call('HGET', KEYS[1], 'reserved') or '0')
  if credits - tonumber(used) - reserved <= 0 then return {'credits', used} end
  estimate = ARGV[6]
end
redis.call('HSET', KEYS[2], id, estimate)
redis.call('ZADD', KEYS[3], now + tonumber(ARGV[7]), id)
if estimate ~= '0' then redis.call('HINCRBY', KEYS[1], 'reserved', estimate) end
return {'ok', estimate}
"""

SETTLE = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local id, cost, tokens = ARGV[1], ARGV[2], ARGV[3]
if ARGV[4] == 'ticket' then
  local amount = redis.call('HGET', KEYS[2], id)
  if amount then
    redis.call('HDEL', KEYS[2], id)
    redis.call('ZREM', KEYS[3], id)
    if amount ~= '0' then redis.call('HINCRBY', KEYS[1], 'reserved', '-' .. amount) end
  elseif redis.call('ZREM', KEYS[4], id) == 0 then
    return 0
  end
else
  if redis.call('ZADD', KEYS[9], 'NX', now, id) == 0 then return 0 end
  redis.call('ZREMRANGEBYSCORE', KEYS[9], '-inf', now - 86400000)
  redis.call('PEXPIRE', KEYS[9], 86400000)
end
if cost ~= '0' and redis.call('HEXISTS', KEYS[1], 'used') == 1 then
  redis.call('HINCRBY', KEYS[1], 'used', cost)
end
if tokens ~= '0' then
  if ARGV[5] == '1' then
    local window = tonumber(ARGV[6])
    redis.call('ZADD', KEYS[6], now, id .. ':' .. tokens)
    redis.call('INCRBY', KEYS[7], tokens)
    redis.call('PEXPIRE', KEYS[6], window * 2)
    redis.call('PEXPIRE', KEYS[7], window * 2)
  end
  if redis.call('EXISTS', KEYS[8]) == 1 then redis.call('INCRBY', KEYS[8], tokens) end
end
return 1
"""


@dataclass(frozen=True, slots=True)
class _Settlement:
    key_id: str
    request_id: str
    cost: int
    tokens: int
    mode: Literal["ticket", "free"]
    tpm: bool
    day: str


class RedisLimiter:
    def __init__(
        self,
        url: str,
        config: AccountingConfig,
        book: CreditBook,
        store: Store,
        local: LocalLimiter,
    ) -> None:
        # No retries inside the client: a failed call must come back at once, so the policy
        # applies, and a settlement is retried by the queue, which knows it is safe to.
        # A bounded pool that makes a crowd wait its turn for a connection (briefly), rather
        # than failing it as a pool that is merely full would.
        pool = BlockingConnectionPool.from_url(
            url,
            max_connections=_CONNECTIONS,
            timeout=_POOL_WAIT_SECONDS,
            decode_responses=True,
            socket_timeout=_TIMEOUT_SECONDS,
            socket_connect_timeout=_TIMEOUT_SECONDS,
            retry=Retry(NoBackoff(), 0),
        )
        self._redis: Redis = Redis(connection_pool=pool)
        self._admit_script = self._redis.register_script(ADMIT)
        self._settle_script = self._redis.register_script(SETTLE)
        self._prefix = config.redis_key_prefix
        self._policy = config.redis_failure_policy
        self._reservation_ms = int(config.reservation_seconds * 1000)
        self._book = book
        self._store = store
        self._local = local
        self._down_until = 0.0
        self._down = False
        self._queue: deque[_Settlement] = deque()
        self._queued: Counter[str] = Counter()
        self._wake = asyncio.Event()
        self._progress = asyncio.Event()
        self._worker: asyncio.Task[None] | None = None
        # A crowd of first requests for a key initialises its state once.
        self._initialising: SingleFlight[bool] = SingleFlight()
        self._day_retry: dict[str, float] = {}
        self.lost_settlements = 0

    # -- lifecycle ----------------------------------------------------------------------------

    async def start(self) -> None:
        self._worker = asyncio.create_task(self._drain_forever(), name="llmrelay-redis-settle")
        try:
            await self._redis.ping()
        except UNAVAILABLE as exc:
            self._went_down(exc)

    async def close(self) -> None:
        """Deliver the queued settlements (for a few seconds at most), then disconnect."""
        deadline = time.monotonic() + 5.0
        while self._queue and time.monotonic() < deadline:
            self._wake.set()
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(max(0.0, deadline - time.monotonic())):
                    await self._progress.wait()
            self._progress.clear()
        if self._worker is not None:
            self._worker.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._worker
        if self._queue:
            self.lost_settlements += len(self._queue)
            log.error(
                "Redis unreachable at shutdown: %d settlements not delivered (their rows are in "
                "the ledger; Redis figures for those keys are short by them)",
                len(self._queue),
            )
        await self._redis.aclose()
        await self._redis.connection_pool.disconnect()

    # -- availability -------------------------------------------------------------------------

    def _available(self) -> bool:
        return time.monotonic() >= self._down_until

    def _went_down(self, exc: BaseException) -> None:
        self._down_until = time.monotonic() + _PROBE_SECONDS
        if not self._down:
            self._down = True
            log.warning(
                "Redis unreachable (%s): %s", exc.__class__.__name__, self._policy_description()
            )

    def _came_back(self) -> None:
        if self._down:
            self._down = False
            log.warning("Redis reachable again: limits and credits are shared again")

    def _policy_description(self) -> str:
        if self._policy == "open":
            return "each instance enforces limits and credits on its own until it is back"
        return "requests get 503 until it is back"

    # -- admission ----------------------------------------------------------------------------

    def _keys(self, key_id: str, day: str) -> list[str]:
        base = f"{self._prefix}{{{key_id}}}:"
        names = ("acct", "res", "resx", "lapsed", "rpm", "tpm", "tpmsum", "day:" + day, "done")
        return [base + name for name in names]

    async def admit(self, key: CachedKey, request_id: str, estimate: int) -> Ticket:
        record = key.record
        if not self._available():
            return await self._fallback(key, request_id, estimate)
        try:
            verdict = await self._admit(key, request_id, estimate)
        except UNAVAILABLE as exc:
            self._went_down(exc)
            return await self._fallback(key, request_id, estimate)
        self._came_back()
        kind = verdict[0]
        if kind == "ok":
            self._local.count_request(record)  # so that a fallback starts from what it saw
            return Ticket(record.id, request_id, int(verdict[1]), "redis", record.tpm is not None)
        if kind == "rpm":
            raise rpm_exceeded(record, int(verdict[1]) / 1000)
        if kind == "tpm":
            raise tpm_exceeded(record, int(verdict[1]) / 1000)
        if kind == "daily":
            raise quota_exceeded(record)
        assert kind == "credits", verdict
        assert record.credits_nanos is not None
        self._local.count_request(record)
        raise out_of_credits(0, int(verdict[1]), record.credits_nanos)

    async def _admit(self, key: CachedKey, request_id: str, estimate: int) -> list[Any]:
        record = key.record
        day, _ = utc_day()
        # Today's count is kept for every key (GET /v1/key shows it); -1: not now, the database
        # that would start it is down (a quota is then checked once it answers).
        daily = record.daily_tokens or 0
        if self._day_retry.get(record.id, 0.0) > time.monotonic():
            daily = -1  # the database failed this a moment ago: do not wait on it again yet
        names = self._keys(record.id, day)
        for _ in range(4):
            args: list[str | int] = [
                request_id,
                record.rpm or 0,
                record.tpm or 0,
                daily,
                -1 if record.credits_nanos is None else record.credits_nanos,
                estimate,
                self._reservation_ms,
                _WINDOW_MS,
            ]
            verdict: list[Any] = await self._admit_script(keys=names, args=args)
            if verdict[0] == "init_credits":
                await self._initialising.run(names[0], lambda: self._init_credits(key, names[0]))
            elif verdict[0] == "init_day":
                started = await self._initialising.run(
                    names[7], lambda: self._init_day(record.id, names[7])
                )
                if not started:
                    daily = -1
            else:
                return verdict
        raise RedisError("the key's state could not be initialised")

    async def _init_credits(self, key: CachedKey, acct: str) -> bool:
        """Start the key's spend in Redis from the database plus what is only in this process."""
        account = key.account
        base = account.used
        for _ in range(3):
            token = self._book.token()
            try:
                fresh = await self._store.get_key(key.record.id)
            except Exception:
                break  # the database is down: this process's own figure is the best there is
            if fresh is not None and self._book.consistent(token):
                base = fresh.credits_used_nanos + account.unstored
                break
        await self._redis.hsetnx(acct, "used", str(base))
        return True

    async def _init_day(self, key_id: str, day_key: str) -> bool:
        try:
            tokens = await self._store.tokens_since(key_id, utc_day()[1])
        except Exception as exc:
            log.warning("daily token count unavailable: %s", exc.__class__.__name__)
            self._day_retry[key_id] = time.monotonic() + _DAY_RETRY_SECONDS
            return False
        self._day_retry.pop(key_id, None)
        await self._redis.set(day_key, str(tokens), nx=True, ex=_DAY_TTL_SECONDS)
        return True

    async def _fallback(self, key: CachedKey, request_id: str, estimate: int) -> Ticket:
        if self._policy == "closed":
            raise ServiceUnavailable(
                "rate limits and credits cannot be checked right now (Redis is unreachable); "
                "retry shortly",
                retry_after=_PROBE_SECONDS,
            )
        return await self._local.admit(key, request_id, estimate)

    # -- settlement ---------------------------------------------------------------------------

    def settle(
        self, key: CachedKey, ticket: Ticket | None, cost: int, tokens: int, request_id: str
    ) -> None:
        self._local.settle(key, ticket, cost, tokens, request_id)
        if ticket is not None and ticket.via == "redis":
            mode: Literal["ticket", "free"] = "ticket"
        elif cost or tokens:
            mode = "free"  # admitted here while Redis was away, or never admitted
        else:
            return
        tpm = ticket.tpm if ticket is not None else key.record.tpm is not None
        self._enqueue(_Settlement(key.record.id, request_id, cost, tokens, mode, tpm, utc_day()[0]))

    def _enqueue(self, settlement: _Settlement) -> None:
        self._queue.append(settlement)
        self._queued[settlement.key_id] += 1
        self._wake.set()

    async def _drain_forever(self) -> None:
        while True:
            await self._wake.wait()
            self._wake.clear()
            if len(self._queue) < _BATCH:
                # A moment for others to join: one round trip for many settlements.
                await asyncio.sleep(_LINGER_SECONDS)
            while self._queue:
                pause = self._down_until - time.monotonic()
                if pause > 0:
                    await asyncio.sleep(pause)
                batch = [self._queue[i] for i in range(min(_BATCH, len(self._queue)))]
                try:
                    await self._deliver(batch)
                except UNAVAILABLE as exc:
                    self._went_down(exc)
                    continue
                self._came_back()
                for _ in batch:
                    done = self._queue.popleft()
                    self._queued[done.key_id] -= 1
                    if not self._queued[done.key_id]:
                        del self._queued[done.key_id]
                self._progress.set()

    async def _deliver(self, batch: list[_Settlement]) -> None:
        """One pipeline of EVALSHA (a Redis that restarted has lost the script: load it and
        send again those that did not run). A connection failure raises, and the whole batch
        is sent again later: each settlement applies once however often it is sent."""
        pending = batch
        for _ in range(2):
            async with self._redis.pipeline(transaction=False) as pipe:
                for item in pending:
                    args: list[str | int] = [
                        item.request_id,
                        item.cost,
                        item.tokens,
                        item.mode,
                        1 if item.tpm else 0,
                        _WINDOW_MS,
                    ]
                    keys = self._keys(item.key_id, item.day)
                    pipe.evalsha(self._settle_script.sha, len(keys), *keys, *args)
                results = await pipe.execute(raise_on_error=False)
            missing = [
                item
                for item, result in zip(pending, results, strict=True)
                if isinstance(result, NoScriptError)
            ]
            for item, result in zip(pending, results, strict=True):
                if isinstance(result, Exception) and not isinstance(result, NoScriptError):
                    self.lost_settlements += 1
                    log.error("Redis refused the settlement of %s: %s", item.request_id, result)
            if not missing:
                return
            await self._redis.script_load(SETTLE)
            pending = missing

    async def _settled(self, key_id: str, within: float) -> None:
        """Wait (a little) for this process's queued settlements of the key: read your writes."""
        deadline = time.monotonic() + within
        while self._queued.get(key_id) and time.monotonic() < deadline and self._available():
            self._progress.clear()
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(max(0.0, deadline - time.monotonic())):
                    await self._progress.wait()

    # -- views --------------------------------------------------------------------------------

    async def usage(self, key: CachedKey) -> KeyUsage:
        record = key.record
        await self._settled(record.id, 1.0)
        if self._available():
            names = self._keys(record.id, utc_day()[0])
            try:
                async with self._redis.pipeline(transaction=False) as pipe:
                    pipe.hmget(names[0], ["used", "reserved"])
                    pipe.get(names[7])
                    (used, reserved), today = await pipe.execute()
            except UNAVAILABLE as exc:
                self._went_down(exc)
            else:
                if used is not None:
                    if today is None:
                        await self._local.load_day(record.id)
                        tokens = self._local.tokens_today(record.id)
                    else:
                        tokens = int(today)
                    return KeyUsage(int(used), int(reserved or 0), tokens)
        return await self._local.usage(key)

    async def spend(self, records: list[KeyRecord]) -> dict[str, int]:
        spend = await self._local.spend(records)
        if not records or not self._available():
            return spend
        try:
            async with self._redis.pipeline(transaction=False) as pipe:
                for record in records:
                    pipe.hget(self._keys(record.id, "")[0], "used")
                values = await pipe.execute()
        except UNAVAILABLE as exc:
            self._went_down(exc)
            return spend
        for record, value in zip(records, values, strict=True):
            if value is not None:
                spend[record.id] = int(value)
        return spend

    # -- the ledger writer's listener ---------------------------------------------------------

    def write_started(self) -> None:
        self._book.write_started()

    def write_ended(self) -> None:
        self._book.write_ended()

    def committed(self, rows: list[LedgerRow], settled_here: bool) -> None:
        self._book.committed(rows, settled_here)

    def rejected(self, rows: list[LedgerRow], settled_here: bool) -> None:
        """Rows no database will hold: take their costs back out of the shared spend too."""
        self._book.rejected(rows, settled_here)
        for row in rows:
            if row.cost_nanos:
                self._enqueue(
                    _Settlement(
                        row.key_id, "refund:" + row.id, -row.cost_nanos, 0, "free", False, ""
                    )
                )
