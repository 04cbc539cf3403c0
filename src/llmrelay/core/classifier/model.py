"""The linear basket model: parameters, scoring and the shipped weights file format.

A multinomial logistic regression over the features of ``features.py``:

    logit[c] = bias[c] + scale * sum(w[i][c] for i in lexical) + sum(w[i][c] for i in cues)

with ``scale = 1/sqrt(len(lexical))`` so that long prompts do not get overconfident just by
having more words. Probabilities are ``softmax(logit / temperature)``; the temperature is
fitted on out-of-fold predictions during training so that ``confidence`` means roughly what
it says. The decision adds per-basket ``offsets`` to the calibrated log-probabilities: a
negative offset on ``chat`` trades a little chat recall for fewer under-routed
code/reasoning requests, which cost more than over-routed chat.

Weights live in one dictionary from feature id to a tuple with one weight per basket;
ids never seen in training weigh nothing.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from itertools import repeat
from pathlib import Path
from typing import Any

from llmrelay.core.classifier.features import FeatureVector
from llmrelay.core.classifier.rules import RULES, Rule, first_match

FORMAT = "llmrelay-basket-linear/2"
WEIGHTS_FILE = "weights.json"
MANIFEST_FILE = "manifest.json"
# Weights are rounded when saved: 5 decimals change a logit by far less than 1e-3.
_DECIMALS = 5


@dataclass(frozen=True)
class LinearModel:
    classes: tuple[str, ...]
    max_chars: int
    bias: tuple[float, ...]
    # Feature id -> one weight per class. Treated as read-only once built.
    table: Mapping[int, tuple[float, ...]]
    temperature: float = 1.0
    offsets: tuple[float, ...] = ()
    # Enabled rules and the confidence reported when each fires (its training precision).
    rules: Mapping[str, float] = field(default_factory=dict)
    _zero: tuple[float, ...] = field(init=False, repr=False, compare=False)
    _enabled: tuple[Rule, ...] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        width = len(self.classes)
        if width < 2 or len(set(self.classes)) != width:
            raise ValueError("need at least two distinct classes")
        if len(self.bias) != width:
            raise ValueError("bias does not match classes")
        if any(len(weights) != width for weights in self.table.values()):
            raise ValueError("weights do not match classes")
        if self.offsets and len(self.offsets) != width:
            raise ValueError("offsets do not match classes")
        known = {rule.name for rule in RULES}
        if set(self.rules) - known:
            raise ValueError(f"unknown rules: {sorted(set(self.rules) - known)}")
        if not self.temperature > 0:
            raise ValueError("temperature must be positive")
        if self.max_chars <= 0:
            raise ValueError("max_chars must be positive")
        object.__setattr__(self, "_zero", (0.0,) * width)
        # Fixed RULES order, so the first match does not depend on how the mapping was built;
        # rules for baskets this model does not have are ignored.
        enabled = tuple(
            rule for rule in RULES if rule.name in self.rules and rule.basket in self.classes
        )
        object.__setattr__(self, "_enabled", enabled)

    def logits(self, vector: FeatureVector) -> list[float]:
        """Raw (uncalibrated) logits, one per class."""
        lexical, cues = vector.lexical, vector.cues
        get, zero = self.table.get, self._zero
        # zip(*rows) turns the per-feature weight tuples into one column per class, all in
        # C; the trailing zero row keeps zip(*...) well-formed when nothing is known.
        lexical_sums = map(
            sum, zip(*map(get, lexical, repeat(zero, len(lexical))), zero, strict=True)
        )
        cue_sums = map(sum, zip(*map(get, cues, repeat(zero, len(cues))), zero, strict=True))
        scale = 1.0 / math.sqrt(len(lexical)) if lexical else 0.0
        return [
            b + scale * lexical_sum + cue_sum
            for b, lexical_sum, cue_sum in zip(self.bias, lexical_sums, cue_sums, strict=True)
        ]

    def probabilities(self, logits: Sequence[float]) -> list[float]:
        return softmax([value / self.temperature for value in logits])

    def decide(self, probabilities: Sequence[float]) -> int:
        """Index of the chosen class: argmax of log-probability plus offset."""
        offsets = self.offsets or self._zero
        best, best_score = 0, -math.inf
        for index, (p, offset) in enumerate(zip(probabilities, offsets, strict=True)):
            score = math.log(p) + offset if p > 0 else -math.inf
            if score > best_score:
                best, best_score = index, score
        return best

    def rule_for(self, text: str) -> Rule | None:
        return first_match(text, self._enabled)

    # -- persistence ---------------------------------------------------------------

    def to_json(self) -> dict[str, Any]:
        ids = sorted(self.table)
        return {
            "format": FORMAT,
            "classes": list(self.classes),
            "max_chars": self.max_chars,
            "temperature": round(self.temperature, 6),
            "offsets": [round(value, 6) for value in self.offsets],
            "rules": {name: round(value, 4) for name, value in self.rules.items()},
            "bias": [round(value, 6) for value in self.bias],
            "ids": ids,
            # One list per class, aligned with "ids".
            "weights": [
                [round(self.table[i][c], _DECIMALS) for i in ids] for c in range(len(self.classes))
            ],
        }

    @classmethod
    def from_json(cls, payload: Mapping[str, Any]) -> LinearModel:
        if payload.get("format") != FORMAT:
            raise ValueError(f"unsupported weights format {payload.get('format')!r}")
        ids = [int(i) for i in payload["ids"]]
        columns = [[float(value) for value in column] for column in payload["weights"]]
        if any(len(column) != len(ids) for column in columns):
            raise ValueError("weights do not match ids")
        return cls(
            classes=tuple(str(name) for name in payload["classes"]),
            max_chars=int(payload["max_chars"]),
            bias=tuple(float(value) for value in payload["bias"]),
            table=dict(zip(ids, zip(*columns, strict=True), strict=True)),
            temperature=float(payload.get("temperature", 1.0)),
            offsets=tuple(float(value) for value in payload.get("offsets", ())),
            rules={str(k): float(v) for k, v in payload.get("rules", {}).items()},
        )

    def save(self, path: Path) -> None:
        path.write_text(json.dumps(self.to_json(), separators=(",", ":")) + "\n", "utf-8")

    @classmethod
    def load(cls, path: Path) -> LinearModel:
        return cls.from_json(json.loads(path.read_text(encoding="utf-8")))


def softmax(values: Sequence[float]) -> list[float]:
    top = max(values)
    exps = [math.exp(value - top) for value in values]
    total = sum(exps)
    return [value / total for value in exps]
