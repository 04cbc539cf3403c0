"""Classification metrics used by training (cross-validation) and evaluation."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

CHAT = "chat"
REASONING = "reasoning"


@dataclass(frozen=True, slots=True)
class Report:
    classes: tuple[str, ...]
    # confusion[i][j]: items whose true basket is classes[i], predicted classes[j].
    confusion: tuple[tuple[int, ...], ...]
    accuracy: float
    macro_f1: float
    recall: dict[str, float]
    precision: dict[str, float]
    under_routing: float

    def as_dict(self) -> dict[str, object]:
        return {
            "accuracy": round(self.accuracy, 4),
            "macro_f1": round(self.macro_f1, 4),
            "recall": {name: round(value, 4) for name, value in self.recall.items()},
            "precision": {name: round(value, 4) for name, value in self.precision.items()},
            "under_routing": round(self.under_routing, 4),
            "confusion": {
                "classes": list(self.classes),
                "rows_true_cols_predicted": [list(row) for row in self.confusion],
            },
        }


def _ratio(numerator: float, denominator: float) -> float:
    return numerator / denominator if denominator else 0.0


def report(
    truth: Sequence[str], predicted: Sequence[str], classes: Sequence[str] | None = None
) -> Report:
    """Score predictions.

    Under-routing is what the router cares about most: a code or reasoning request sent to
    the cheap chat model. It is measured as the share of all non-chat items predicted chat.
    """
    if len(truth) != len(predicted):
        raise ValueError("truth and predicted differ in length")
    names = tuple(classes) if classes is not None else tuple(sorted(set(truth) | set(predicted)))
    index = {name: i for i, name in enumerate(names)}
    matrix = [[0] * len(names) for _ in names]
    for true_label, predicted_label in zip(truth, predicted, strict=True):
        matrix[index[true_label]][index[predicted_label]] += 1
    recall: dict[str, float] = {}
    precision: dict[str, float] = {}
    f1_scores: list[float] = []
    for i, name in enumerate(names):
        true_positive = matrix[i][i]
        row_total = sum(matrix[i])
        column_total = sum(row[i] for row in matrix)
        recall[name] = _ratio(true_positive, row_total)
        precision[name] = _ratio(true_positive, column_total)
        f1_scores.append(_ratio(2 * precision[name] * recall[name], precision[name] + recall[name]))
    non_chat = [p for t, p in zip(truth, predicted, strict=True) if t != CHAT]
    under = sum(1 for p in non_chat if p == CHAT)
    return Report(
        classes=names,
        confusion=tuple(tuple(row) for row in matrix),
        accuracy=_ratio(sum(matrix[i][i] for i in range(len(names))), len(truth)),
        macro_f1=_ratio(sum(f1_scores), len(f1_scores)),
        recall=recall,
        precision=precision,
        under_routing=_ratio(under, len(non_chat)),
    )


def format_confusion(result: Report) -> str:
    width = max(9, *(len(name) + 1 for name in result.classes))
    header = "true \\ pred".ljust(12) + "".join(name.rjust(width) for name in result.classes)
    lines = [header]
    for name, row in zip(result.classes, result.confusion, strict=True):
        lines.append(name.ljust(12) + "".join(str(count).rjust(width) for count in row))
    return "\n".join(lines)
