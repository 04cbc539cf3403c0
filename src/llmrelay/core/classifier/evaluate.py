"""Score the classifier on the routing data set's held-out ``test`` split.

    python -m llmrelay.core.classifier.evaluate [--data DIR] [--weights FILE] [--repeats N]

Prints accuracy, macro-F1, per-basket recall, under-routing (code or reasoning sent to
chat, as a share of all code+reasoning items), the confusion matrix, accuracy on the
hand-written ``hw-*`` items, and latency p50/p99 by prompt length. Misclassified items are
deliberately not listed: the test split is for reporting, not for tuning.
"""

from __future__ import annotations

import argparse
import platform
import sys
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

from llmrelay.core.classifier.data import Example, default_data_dir, load_split
from llmrelay.core.classifier.latency import LatencyRow, format_rows, measure
from llmrelay.core.classifier.metrics import Report, format_confusion, report
from llmrelay.core.classifier.model import LinearModel
from llmrelay.core.classifier.predictor import SHIPPED_WEIGHTS, BasketClassifier


@dataclass(frozen=True, slots=True)
class Evaluation:
    report: Report
    items: int
    handwritten_items: int
    handwritten_accuracy: float | None
    rule_decided: int
    latency: list[LatencyRow]

    def summary(self) -> dict[str, object]:
        summary: dict[str, object] = {
            "items": self.items,
            **self.report.as_dict(),
            "handwritten_items": self.handwritten_items,
            "handwritten_accuracy": (
                round(self.handwritten_accuracy, 4)
                if self.handwritten_accuracy is not None
                else None
            ),
            "rule_decided": self.rule_decided,
        }
        if self.latency:
            summary["latency_us"] = [asdict(row) for row in self.latency]
        return summary


def evaluate_model(
    model: LinearModel, examples: Sequence[Example], timing_repeats: int = 20
) -> Evaluation:
    classifier = BasketClassifier(model)
    results = [classifier.classify(example.text) for example in examples]
    truth = [example.basket for example in examples]
    predicted = [result.basket for result in results]
    classes = sorted(set(model.classes) | set(truth))
    handwritten = [
        result.basket == example.basket
        for example, result in zip(examples, results, strict=True)
        if example.id.startswith("hw-")
    ]
    latency = (
        measure(classifier.classify, [example.text for example in examples], timing_repeats)
        if timing_repeats > 0
        else []
    )
    return Evaluation(
        report=report(truth, predicted, classes),
        items=len(examples),
        handwritten_items=len(handwritten),
        handwritten_accuracy=sum(handwritten) / len(handwritten) if handwritten else None,
        rule_decided=sum(1 for result in results if result.rule is not None),
        latency=latency,
    )


def render(evaluation: Evaluation) -> str:
    result = evaluation.report
    lines = [
        f"items: {evaluation.items} (decided by a rule: {evaluation.rule_decided})",
        f"accuracy: {result.accuracy:.4f}",
        f"macro-F1: {result.macro_f1:.4f}",
        "recall: " + ", ".join(f"{name} {value:.4f}" for name, value in result.recall.items()),
        "precision: "
        + ", ".join(f"{name} {value:.4f}" for name, value in result.precision.items()),
        f"under-routing (code/reasoning -> chat): {result.under_routing:.4f}",
    ]
    if evaluation.handwritten_accuracy is not None:
        correct = round(evaluation.handwritten_accuracy * evaluation.handwritten_items)
        lines.append(
            f"hand-written hw-* accuracy: {evaluation.handwritten_accuracy:.4f}"
            f" ({correct}/{evaluation.handwritten_items})"
        )
    lines += ["", "confusion matrix (rows: true, columns: predicted)", format_confusion(result)]
    if evaluation.latency:
        lines += [
            "",
            f"latency per classify() call ({platform.python_implementation()}"
            f" {platform.python_version()}, {platform.machine()})",
            format_rows(evaluation.latency),
        ]
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m llmrelay.core.classifier.evaluate",
        description="Evaluate the basket classifier on the test split.",
    )
    parser.add_argument("--data", type=Path, default=None, help="routing data set directory")
    parser.add_argument("--weights", type=Path, default=SHIPPED_WEIGHTS, help="weights.json")
    parser.add_argument(
        "--repeats", type=int, default=20, help="timed passes over the test split (0: none)"
    )
    args = parser.parse_args(argv)
    _, test = load_split(args.data or default_data_dir())
    evaluation = evaluate_model(LinearModel.load(args.weights), test, args.repeats)
    print(render(evaluation))
    return 0


if __name__ == "__main__":
    sys.exit(main())
