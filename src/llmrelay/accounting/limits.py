"""Per-key requests-per-minute and tokens-per-minute, exact within one process.

Sliding 60-second windows: a request is admitted when fewer than ``rpm`` requests and fewer than
``tpm`` tokens were recorded for its key in the last 60 seconds. Tokens are recorded when a request
settles (its real usage). Limits shared across instances need Redis (see docs/accounting.md).
"""

from __future__ import annotations

import time
from collections import deque

from llmrelay.accounting.records import KeyRecord
from llmrelay.core.errors import RateLimited

WINDOW_SECONDS = 60.0


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


class LocalLimiter:
    def __init__(self) -> None:
        self._windows: dict[str, _Window] = {}

    def admit(self, key: KeyRecord) -> None:
        """Count one request against the key's limits, or raise 429 with ``Retry-After``."""
        if key.rpm is None and key.tpm is None:
            return
        now = time.monotonic()
        window = self._windows.get(key.id)
        if window is None:
            window = self._windows[key.id] = _Window()
        window.trim(now)
        if key.rpm is not None and len(window.requests) >= key.rpm:
            retry = window.requests[len(window.requests) - key.rpm] + WINDOW_SECONDS - now
            raise RateLimited(
                f"this key's limit of {key.rpm} requests per minute is reached", retry_after=retry
            )
        if key.tpm is not None and window.token_total >= key.tpm:
            retry = _tokens_free_at(window, key.tpm) - now
            raise RateLimited(
                f"this key's limit of {key.tpm} tokens per minute is reached", retry_after=retry
            )
        window.requests.append(now)

    def record_tokens(self, key: KeyRecord, tokens: int) -> None:
        if key.tpm is None or tokens <= 0:
            return
        window = self._windows.get(key.id)
        if window is None:
            window = self._windows[key.id] = _Window()
        window.tokens.append((time.monotonic(), tokens))
        window.token_total += tokens


def _tokens_free_at(window: _Window, limit: int) -> float:
    """When enough old entries have aged out for the total to fall under the limit."""
    total = window.token_total
    for at, tokens in window.tokens:
        total -= tokens
        if total < limit:
            return at + WINDOW_SECONDS
    return time.monotonic()
