"""Credits in this process: each key's settled spend, split by where it is, and its reservations.

A key's spend lives in three places at once, and the book keeps them apart so that no figure is
ever counted twice or dropped:

- ``stored``: what the database's ``credits_used`` holds, as of the last consistent read plus every
  ledger batch this process has committed since;
- ``unstored``: costs settled in this process whose ledger rows are not in the database yet
  (buffered, or journaled during an outage);
- ``reserved``: credit held by requests of this process that are still running.

``used = stored + unstored`` is the key's settled spend, exact within one process. The ledger
writer tells the book when it writes (:class:`~llmrelay.accounting.ledger.LedgerListener`), so a
batch moves from ``unstored`` to ``stored`` in the same step that makes it durable. A database read
of a key (a cache refresh) may overlap one of those writes and then hold a figure from before or
after the batch: such a read is detected by the book's write generation and not applied, so the
figure is never double- or under-counted (``token()`` and ``observe()``).

Rows replayed from a journal another process left behind were never settled here: committing them
only raises ``stored``. Rows the database refuses are dropped from ``unstored``, so
``credits_used`` stays exactly the sum of the key's ledger costs.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from llmrelay.accounting.pricing import PriceTable
from llmrelay.accounting.records import KeyRecord, LedgerRow
from llmrelay.core.errors import InsufficientCredits
from llmrelay.core.tokens import estimate_prompt_tokens
from llmrelay.core.types import JSONObject


@dataclass(slots=True)
class Account:
    """One key's spend as this process knows it, in nano-dollars."""

    key_id: str
    stored: int
    unstored: int = 0
    reserved: int = 0

    @property
    def used(self) -> int:
        return self.stored + self.unstored


def reservation_estimate(
    price: PriceTable,
    messages: list[JSONObject],
    max_output_tokens: int | None,
    default_max_tokens: int,
) -> int:
    """What a request may cost at most: its prompt as counted here plus its whole output budget."""
    return price.estimate(estimate_prompt_tokens(messages), max_output_tokens or default_max_tokens)


def out_of_credits(remaining: int, used: int, credits: int) -> InsufficientCredits:
    """The 402: no credit left at all, or what is left is held by requests still running."""
    if used >= credits:
        return InsufficientCredits(
            "this key has no credits left; an admin can add some with "
            "'llmrelay keys top-up' or POST /admin/keys/{id}/credits"
        )
    return InsufficientCredits(
        "this key's remaining credits are reserved by its requests in flight; retry when they "
        "finish, or ask an admin for a top-up ('llmrelay keys top-up')"
    )


def spend_by_key(rows: Sequence[LedgerRow]) -> dict[str, int]:
    spend: dict[str, int] = {}
    for row in rows:
        if row.cost_nanos:
            spend[row.key_id] = spend.get(row.key_id, 0) + row.cost_nanos
    return spend


class CreditBook:
    """Every cached key's :class:`Account`; also the ledger writer's listener."""

    def __init__(self) -> None:
        self._accounts: dict[str, Account] = {}
        self._writes = 0
        self._generation = 0

    def account(self, key_id: str) -> Account | None:
        return self._accounts.get(key_id)

    # -- reads of the database --------------------------------------------------------------------

    def token(self) -> int | None:
        """Take before reading keys from the database; None while a ledger write is under way."""
        return None if self._writes else self._generation

    def consistent(self, token: int | None) -> bool:
        """Whether no ledger write overlapped the read that began with ``token``."""
        return token is not None and not self._writes and token == self._generation

    def open(self, record: KeyRecord) -> Account:
        """The key's account, created from ``record`` (a fresh database read) the first time."""
        account = self._accounts.get(record.id)
        if account is None:
            account = self._accounts[record.id] = Account(record.id, record.credits_used_nanos)
        return account

    def observe(self, record: KeyRecord, token: int | None) -> None:
        """A database read of the key: adopt its ``credits_used`` if the read was consistent."""
        account = self._accounts.get(record.id)
        if account is not None and self.consistent(token):
            account.stored = record.credits_used_nanos

    # -- the request path ---------------------------------------------------------------------

    def reserve(self, record: KeyRecord, account: Account, nanos: int) -> int:
        """Hold ``nanos`` for a request, or raise 402; returns what was reserved.

        A request is admitted while the key has credit left after the reservations in flight, and
        then reserves its whole estimate: the key can end below zero by at most what the last
        admitted requests spend beyond their estimates, never by a whole crowd of them.
        """
        if record.credits_nanos is None:
            return 0
        remaining = record.credits_nanos - account.used - account.reserved
        if remaining <= 0:
            raise out_of_credits(remaining, account.used, record.credits_nanos)
        account.reserved += nanos
        return nanos

    def release(self, key_id: str, reserved: int) -> None:
        account = self._accounts.get(key_id)
        if account is not None:
            account.reserved -= reserved

    def settle(self, key_id: str, reserved: int, cost: int) -> None:
        """A request finished: drop its reservation, count its cost until the ledger stores it."""
        account = self._accounts.get(key_id)
        if account is not None:
            account.reserved -= reserved
            account.unstored += cost

    # -- the ledger writer's listener -----------------------------------------------------------

    def write_started(self) -> None:
        self._writes += 1
        self._generation += 1

    def write_ended(self) -> None:
        self._writes -= 1
        self._generation += 1

    def committed(self, rows: Sequence[LedgerRow], settled_here: bool) -> None:
        """Rows are in the database (and their costs in ``credits_used``)."""
        for key_id, nanos in spend_by_key(rows).items():
            account = self._accounts.get(key_id)
            if account is not None:
                account.stored += nanos
                if settled_here:
                    account.unstored -= nanos

    def rejected(self, rows: Sequence[LedgerRow], settled_here: bool) -> None:
        """Rows the database refused (dead-lettered): their costs are in no ledger, so in no
        total either."""
        if not settled_here:
            return
        for key_id, nanos in spend_by_key(rows).items():
            account = self._accounts.get(key_id)
            if account is not None:
                account.unstored -= nanos
