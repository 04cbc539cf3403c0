"""The public classifier: rules first, then the linear model."""

from __future__ import annotations

import functools
from dataclasses import dataclass
from pathlib import Path

from llmrelay.core.classifier.features import extract
from llmrelay.core.classifier.model import WEIGHTS_FILE, LinearModel
from llmrelay.core.classifier.window import clip

SHIPPED_WEIGHTS = Path(__file__).resolve().parent / WEIGHTS_FILE


@dataclass(frozen=True, slots=True)
class Classification:
    """Outcome of classifying one prompt.

    ``confidence`` is the calibrated probability of ``basket``; for a rule decision it is
    the rule's precision measured on the training labels. ``scores`` holds a probability
    for every basket (summing to one). ``rule`` names the rule that decided, or is
    ``None`` when the linear model did.
    """

    basket: str
    confidence: float
    scores: dict[str, float]
    rule: str | None = None


class BasketClassifier:
    """Classify a prompt into a text basket (``chat``, ``code`` or ``reasoning``).

    In-process, offline, standard library only. Instances are immutable after loading and
    safe to share between threads and tasks.
    """

    def __init__(self, model: LinearModel) -> None:
        self._model = model

    @classmethod
    def from_file(cls, path: Path) -> BasketClassifier:
        return cls(LinearModel.load(path))

    @property
    def baskets(self) -> tuple[str, ...]:
        return self._model.classes

    @property
    def model(self) -> LinearModel:
        return self._model

    def classify(self, text: str) -> Classification:
        model = self._model
        # Clip once and give rules and features the same window, so the cost is bounded by
        # max_chars however long the prompt is.
        window = clip(text, model.max_chars)
        rule = model.rule_for(window)
        if rule is not None:
            # The model is not consulted (that is most of the cost); spread the remaining
            # probability evenly so that scores still sum to one.
            confidence = model.rules[rule.name]
            rest = (1.0 - confidence) / (len(model.classes) - 1)
            scores = {name: confidence if name == rule.basket else rest for name in model.classes}
            return Classification(rule.basket, confidence, scores, rule.name)
        probabilities = model.probabilities(model.logits(extract(window)))
        chosen = model.decide(probabilities)
        return Classification(
            model.classes[chosen],
            probabilities[chosen],
            dict(zip(model.classes, probabilities, strict=True)),
        )


@functools.cache
def load_default_classifier() -> BasketClassifier:
    """The classifier with the weights shipped in the package, loaded once per process."""
    return BasketClassifier.from_file(SHIPPED_WEIGHTS)
