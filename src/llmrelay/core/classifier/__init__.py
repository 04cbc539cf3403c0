"""Request-basket classifier for ``auto`` routing: is a prompt chat, code or reasoning?

High-precision rules first, then a multinomial logistic regression over hashed word
n-grams and shape cues. Pure standard-library Python at run time, weights shipped in the
package (``weights.json``, with ``manifest.json`` describing how they were trained).

    >>> from llmrelay.core.classifier import load_default_classifier
    >>> load_default_classifier().classify("def add(a, b):\\n    return a + b").basket
    'code'

See ``docs/routing.md`` for how it decides, its measured figures and how to retrain.
"""

from llmrelay.core.classifier.predictor import (
    SHIPPED_WEIGHTS,
    BasketClassifier,
    Classification,
    load_default_classifier,
)
from llmrelay.core.classifier.window import conversation_window

BASKETS: tuple[str, ...] = ("chat", "code", "reasoning")

__all__ = [
    "BASKETS",
    "SHIPPED_WEIGHTS",
    "BasketClassifier",
    "Classification",
    "conversation_window",
    "load_default_classifier",
]
