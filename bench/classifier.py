"""Latency benchmark of the request-basket classifier (not a test: prints figures only).

    python bench/classifier.py [--data DIR] [--repeats N]

Times ``BasketClassifier.classify`` on every prompt of the routing data set (train and test
splits, so that every length bucket has prompts) plus synthetic prompts of 5k-50k
characters, which show that ``max_chars`` clipping bounds the cost of very long inputs.
Reports p50/p99 per call, overall and by prompt length. Without the data set, only the
synthetic prompts are timed.
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
from pathlib import Path

from llmrelay.core.classifier import load_default_classifier
from llmrelay.core.classifier.data import default_data_dir, load_split
from llmrelay.core.classifier.latency import format_rows, measure


def synthetic_prompts() -> list[str]:
    paragraph = (
        "The committee reviewed the quarterly figures and noted that costs rose while "
        "revenue held steady; members asked for a clearer summary before the next meeting. "
    )
    code = "def step(state, value):\n    state.total += value * 2\n    return state\n\n"
    prompts = []
    for size in (5_000, 10_000, 50_000):
        prompts.append("Summarise this report:\n\n" + paragraph * (size // len(paragraph)))
        prompts.append("Why is this slow?\n\n" + code * (size // len(code)))
    return prompts


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", type=Path, default=None, help="routing data set directory")
    parser.add_argument("--repeats", type=int, default=10, help="timed passes over the prompts")
    args = parser.parse_args(argv)
    classifier = load_default_classifier()
    texts = synthetic_prompts()
    data_dir = args.data or default_data_dir()
    if (data_dir / "prompts.jsonl").exists():
        train, test = load_split(data_dir)
        texts = [example.text for example in (*train, *test)] + texts
    else:
        print(f"routing data set not found at {data_dir}; timing synthetic prompts only")
    print(
        f"{len(texts)} prompts x {args.repeats} passes; {platform.python_implementation()} "
        f"{platform.python_version()} on {platform.machine()}, {os.cpu_count()} CPUs"
    )
    print(format_rows(measure(classifier.classify, texts, args.repeats)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
