"""Prices and costs, in integer nano-dollars so that sums are exact.

A price is configured in USD per million tokens; a cost is stored as an integer number of
nano-dollars (1e-9 USD). Credits consumed and the ledger's costs are sums of the same integers, so
"credits used = Σ ledger costs" holds to the last digit on every database.
"""

from __future__ import annotations

from dataclasses import dataclass
from decimal import Decimal

from llmrelay.config import Price
from llmrelay.core.types import Usage

NANOS_PER_USD = 1_000_000_000
_PER_MILLION = 1_000_000


def usd_to_nanos(usd: float | Decimal | str) -> int:
    return int((Decimal(str(usd)) * NANOS_PER_USD).to_integral_value())


def nanos_to_usd(nanos: int) -> float:
    return nanos / NANOS_PER_USD


@dataclass(frozen=True, slots=True)
class PriceTable:
    """Nano-dollars per million tokens, one field per kind of token."""

    input: int
    output: int
    cached_input: int
    cache_write: int

    @classmethod
    def from_config(cls, price: Price) -> PriceTable:
        input_nanos = usd_to_nanos(price.input)
        return cls(
            input=input_nanos,
            output=usd_to_nanos(price.output),
            cached_input=(
                input_nanos if price.cached_input is None else usd_to_nanos(price.cached_input)
            ),
            cache_write=(
                input_nanos if price.cache_write is None else usd_to_nanos(price.cache_write)
            ),
        )

    def cost(self, usage: Usage) -> int:
        """Each token priced once: cached and cache-write tokens are carved out of the prompt."""
        cached = min(usage.cached_tokens, usage.prompt_tokens)
        written = min(usage.cache_write_tokens, usage.prompt_tokens - cached)
        plain = usage.prompt_tokens - cached - written
        total = (
            plain * self.input
            + cached * self.cached_input
            + written * self.cache_write
            + usage.completion_tokens * self.output
        )
        return (total + _PER_MILLION // 2) // _PER_MILLION

    def estimate(self, prompt_tokens: int, max_output_tokens: int) -> int:
        """An upper-bound style estimate used to reserve credits before forwarding."""
        total = prompt_tokens * self.input + max_output_tokens * self.output
        return (total + _PER_MILLION - 1) // _PER_MILLION
