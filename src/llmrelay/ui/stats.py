"""The overview's figures: time buckets, totals and latency percentiles over a window."""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from llmrelay.accounting.store import Store

# name → (window seconds, bucket seconds, label format)
RANGES: dict[str, tuple[int, int, str]] = {
    "1h": (3600, 120, "%H:%M"),
    "24h": (86400, 3600, "%H:%M"),
    "7d": (7 * 86400, 6 * 3600, "%m-%d %H:00"),
    "30d": (30 * 86400, 86400, "%m-%d"),
}
DEFAULT_RANGE = "24h"
LATENCY_SAMPLE_LIMIT = 50_000


def percentile(values: list[float], fraction: float) -> float | None:
    """Nearest-rank percentile of ``values`` (sorted here), None for none."""
    if not values:
        return None
    ordered = sorted(values)
    rank = max(1, math.ceil(fraction * len(ordered)))
    return ordered[rank - 1]


@dataclass(frozen=True, slots=True)
class Overview:
    range: str
    labels: list[str]
    requests: list[float]
    errors: list[float]
    tokens: list[float]
    cost_usd: list[float]
    p50_ms: list[float]
    p95_ms: list[float]
    total_requests: int
    total_errors: int
    total_tokens: int
    total_cost_usd: float
    p50: float | None
    p95: float | None
    models: list[dict[str, Any]]

    @property
    def error_rate(self) -> float | None:
        return self.total_errors / self.total_requests if self.total_requests else None


async def overview(store: Store, range_name: str, now: float | None = None) -> Overview:
    if range_name not in RANGES:
        range_name = DEFAULT_RANGE
    window, bucket, label_format = RANGES[range_name]
    now = time.time() if now is None else now
    first = math.floor((now - window) / bucket) * bucket + bucket
    starts = [first + i * bucket for i in range(math.ceil((now - first) / bucket) or 1)]
    index = {start: i for i, start in enumerate(starts)}
    size = len(starts)
    requests, errors = [0.0] * size, [0.0] * size
    tokens, cost = [0.0] * size, [0.0] * size
    for row in await store.usage_series(first, now + 1, bucket):
        i = index.get(row["bucket"])
        if i is None:
            continue
        requests[i] = row["requests"]
        errors[i] = row["errors"]
        tokens[i] = row["prompt_tokens"] + row["completion_tokens"]
        cost[i] = row["cost_nanos"] / 1e9
    per_bucket: list[list[float]] = [[] for _ in starts]
    everything: list[float] = []
    for created, latency in await store.latency_samples(first, now + 1, LATENCY_SAMPLE_LIMIT):
        i = int((created - first) // bucket)
        if 0 <= i < size:
            per_bucket[i].append(latency)
            everything.append(latency)
    models = await store.usage_totals(None, first, now + 1, "model")
    models.sort(key=lambda g: (-g["requests"], str(g["group"])))
    return Overview(
        range=range_name,
        labels=[datetime.fromtimestamp(s, UTC).strftime(label_format) for s in starts],
        requests=requests,
        errors=errors,
        tokens=tokens,
        cost_usd=cost,
        p50_ms=[percentile(b, 0.5) or 0.0 for b in per_bucket],
        p95_ms=[percentile(b, 0.95) or 0.0 for b in per_bucket],
        total_requests=int(sum(requests)),
        total_errors=int(sum(errors)),
        total_tokens=int(sum(tokens)),
        total_cost_usd=sum(cost),
        p50=percentile(everything, 0.5),
        p95=percentile(everything, 0.95),
        models=models[:10],
    )
