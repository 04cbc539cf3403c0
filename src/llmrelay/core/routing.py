"""Which catalogue model serves a request: the named one, or for an auto name the router's choice.

For ``auto`` the decision is: streaming requests go to ``router.streaming_fallback`` unclassified
(unless ``classify_streams``); otherwise a structural gate decides the baskets that are
requirements (images → ``vision``, tools → ``tools``, a long prompt → ``long_context``), then the
text classifier picks ``chat``/``code``/``reasoning``, falling back to ``default_basket`` when
unsure.
Within a basket the first candidate that has every capability the request needs wins.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from llmrelay.config import RouterConfig
from llmrelay.core.catalogue import Catalogue, ModelEntry
from llmrelay.core.errors import InvalidRequest
from llmrelay.core.tokens import estimate_prompt_tokens
from llmrelay.core.types import ChatRequest, JSONObject


@dataclass(frozen=True, slots=True)
class TextVerdict:
    basket: str
    confidence: float


TextClassifier = Callable[[list[JSONObject]], TextVerdict]

CLASSIFIER_WINDOW_CHARS = 2000
"""How much of the conversation the classifier reads (its weights were trained on this much)."""


def default_text_classifier() -> TextClassifier:
    """The shipped classifier (rules + linear model), over a clipped window of the chat."""
    from llmrelay.core.classifier import conversation_window, load_default_classifier

    model = load_default_classifier()

    def classify(messages: list[JSONObject]) -> TextVerdict:
        verdict = model.classify(conversation_window(messages, CLASSIFIER_WINDOW_CHARS))
        return TextVerdict(verdict.basket, verdict.confidence)

    return classify


@dataclass(frozen=True, slots=True)
class RouteDecision:
    model: ModelEntry
    basket: str | None = None
    confidence: float | None = None


def required_capabilities(request: ChatRequest) -> frozenset[str]:
    needs: set[str] = set()
    body = request.body
    if body.get("tools") or any(m.get("role") == "tool" for m in request.messages):
        needs.add("tools")
    format_ = body.get("response_format")
    if isinstance(format_, dict) and format_.get("type") in ("json_object", "json_schema"):
        needs.add("json")
    for message in request.messages:
        content = message.get("content")
        if isinstance(content, list) and any(
            isinstance(p, dict) and p.get("type") == "image_url" for p in content
        ):
            needs.add("vision")
            break
    return frozenset(needs)


class Router:
    def __init__(
        self,
        config: RouterConfig,
        catalogue: Catalogue,
        classifier: TextClassifier | None = None,
    ) -> None:
        self._config = config
        self._catalogue = catalogue
        # None: the shipped classifier, loaded on the first request that needs it.
        self._classifier = classifier
        self._baskets = {
            name: tuple(catalogue.resolve(m) for m in ((t,) if isinstance(t, str) else t))
            for name, t in config.baskets.items()
        }
        # A named model's decision never changes: made once, not per request.
        self._named = {model.id: RouteDecision(model) for model in catalogue}

    def route(self, request: ChatRequest) -> RouteDecision:
        if not self._catalogue.is_auto(request.model):
            named = self._named.get(request.model)
            return named or RouteDecision(self._catalogue.resolve(request.model))
        config = self._config
        needs = required_capabilities(request)
        if request.stream and not config.classify_streams and config.streaming_fallback:
            model = self._catalogue.resolve(config.streaming_fallback)
            missing = needs - model.capabilities
            if not missing:
                return RouteDecision(model, "streaming_fallback", None)
        prompt_tokens = estimate_prompt_tokens(request.messages)
        basket, confidence = self._basket(request, needs, prompt_tokens)
        model = self._pick(basket, needs, prompt_tokens)
        return RouteDecision(model, basket, confidence)

    def _basket(
        self, request: ChatRequest, needs: frozenset[str], prompt_tokens: int
    ) -> tuple[str, float]:
        if "vision" in needs and "vision" in self._baskets:
            return "vision", 1.0
        if "tools" in needs and "tools" in self._baskets:
            return "tools", 1.0
        if prompt_tokens > self._config.long_context_tokens and "long_context" in self._baskets:
            return "long_context", 1.0
        if self._classifier is None:
            self._classifier = default_text_classifier()
        verdict = self._classifier(request.messages)
        if verdict.basket not in self._baskets:
            return self._config.default_basket, verdict.confidence
        if verdict.basket != self._config.default_basket:
            # The classifier's own decision already leans away from the cheap basket (it was
            # tuned to keep under-routing low); cost_quality below 0.5 raises the bar for
            # leaving the default basket, saving money on the cases the classifier is unsure of.
            shift = max(0.0, 0.5 - self._config.cost_quality) * 0.8
            if verdict.confidence < min(0.99, self._config.min_confidence + shift):
                return self._config.default_basket, verdict.confidence
        return verdict.basket, verdict.confidence

    def _pick(self, basket: str, needs: frozenset[str], prompt_tokens: int) -> ModelEntry:
        candidates = self._baskets.get(basket) or self._baskets.get(self._config.default_basket, ())
        pool = list(candidates) + [
            m for name, ms in self._baskets.items() if name != basket for m in ms
        ]
        for model in pool:
            if needs - model.capabilities:
                continue
            if model.context_window is not None and prompt_tokens > model.context_window:
                continue
            return model
        missing = sorted(c for c in needs if not any(c in m.capabilities for m in pool))
        if not missing and needs:
            what = "all of " + ", ".join(sorted(needs)) + " in one model"
        elif missing:
            what = ", ".join(missing)
        else:
            what = f"a context window of {prompt_tokens} tokens"
        raise InvalidRequest(
            f"no model configured for auto routing has {what}; add one to router.baskets or "
            "name a model explicitly",
            param="model",
        )
