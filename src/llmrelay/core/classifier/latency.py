"""Latency measurement shared by ``evaluate`` and ``bench/classifier.py``."""

from __future__ import annotations

import gc
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass

# Prompt length in characters: (label, lower bound inclusive, upper bound exclusive).
LENGTH_BUCKETS: tuple[tuple[str, int, int | None], ...] = (
    ("<100", 0, 100),
    ("100-299", 100, 300),
    ("300-999", 300, 1000),
    ("1000-3999", 1000, 4000),
    (">=4000", 4000, None),
)
ALL = "all"


def length_bucket(n_chars: int) -> str:
    for label, low, high in LENGTH_BUCKETS:
        if n_chars >= low and (high is None or n_chars < high):
            return label
    raise AssertionError("unreachable: the last bucket is open-ended")


@dataclass(frozen=True, slots=True)
class LatencyRow:
    bucket: str
    prompts: int
    samples: int
    p50_us: float
    p99_us: float


def percentile(sorted_values: list[int], fraction: float) -> int:
    """Nearest-rank percentile of an already sorted, non-empty list."""
    rank = max(1, round(fraction * len(sorted_values) + 0.5 - 1e-9))
    return sorted_values[min(rank, len(sorted_values)) - 1]


def measure(
    classify: Callable[[str], object], texts: Iterable[str], repeats: int
) -> list[LatencyRow]:
    """Time every text ``repeats`` times (after one warm-up pass), per length bucket.

    Each call is timed on its own with ``perf_counter_ns`` so the p99 reflects single
    requests, garbage-collector pauses included: that is what a request sees.
    """
    items = list(texts)
    for text in items:
        classify(text)
    gc.collect()
    samples: dict[str, list[int]] = {ALL: []}
    prompts: dict[str, int] = {ALL: len(items)}
    for text in items:
        label = length_bucket(len(text))
        samples.setdefault(label, [])
        prompts[label] = prompts.get(label, 0) + 1
    clock = time.perf_counter_ns
    for _ in range(repeats):
        for text in items:
            start = clock()
            classify(text)
            elapsed = clock() - start
            samples[ALL].append(elapsed)
            samples[length_bucket(len(text))].append(elapsed)
    order = [ALL] + [label for label, _, _ in LENGTH_BUCKETS]
    rows = []
    for label in order:
        values = sorted(samples.get(label, []))
        if not values:
            continue
        rows.append(
            LatencyRow(
                bucket=label,
                prompts=prompts[label],
                samples=len(values),
                p50_us=percentile(values, 0.50) / 1000,
                p99_us=percentile(values, 0.99) / 1000,
            )
        )
    return rows


def format_rows(rows: Iterable[LatencyRow]) -> str:
    lines = [f"{'length (chars)':<16}{'prompts':>8}{'samples':>9}{'p50 µs':>9}{'p99 µs':>9}"]
    for row in rows:
        lines.append(
            f"{row.bucket:<16}{row.prompts:>8}{row.samples:>9}{row.p50_us:>9.1f}{row.p99_us:>9.1f}"
        )
    return "\n".join(lines)
