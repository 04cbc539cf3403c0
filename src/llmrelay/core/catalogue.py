"""The model catalogue: what clients may name, what it costs, and where it goes."""

from __future__ import annotations

from dataclasses import dataclass

from llmrelay.accounting.pricing import PriceTable
from llmrelay.config import ModelConfig, Settings
from llmrelay.core.errors import ModelNotFound


@dataclass(frozen=True, slots=True)
class ModelEntry:
    id: str
    provider: str
    upstream: str
    price: PriceTable
    context_window: int | None
    max_output_tokens: int | None
    capabilities: frozenset[str]
    config: ModelConfig

    @classmethod
    def from_config(cls, model: ModelConfig) -> ModelEntry:
        return cls(
            id=model.id,
            provider=model.provider,
            upstream=model.upstream_name,
            price=PriceTable.from_config(model.price),
            context_window=model.context_window,
            max_output_tokens=model.max_output_tokens,
            capabilities=frozenset(model.capabilities),
            config=model,
        )


class Catalogue:
    """Model ids → entries, plus the names that mean "route for me" and each model's fallbacks."""

    def __init__(self, settings: Settings) -> None:
        self._models = {m.id: ModelEntry.from_config(m) for m in settings.models}
        self.auto_names = frozenset(settings.router.auto_names)
        self._fallbacks = {
            source: tuple(self._models[t] for t in targets)
            for source, targets in settings.fallbacks.items()
        }

    def __iter__(self):  # type: ignore[no-untyped-def]
        return iter(self._models.values())

    def __len__(self) -> int:
        return len(self._models)

    def get(self, model_id: str) -> ModelEntry | None:
        return self._models.get(model_id)

    def resolve(self, model_id: str) -> ModelEntry:
        entry = self._models.get(model_id)
        if entry is None:
            raise ModelNotFound(
                f"model {model_id!r} is not in this gateway's catalogue; "
                "GET /v1/models lists the ids you can use",
                param="model",
            )
        return entry

    def is_auto(self, model_id: str) -> bool:
        return model_id in self.auto_names

    def fallbacks(self, model_id: str) -> tuple[ModelEntry, ...]:
        return self._fallbacks.get(model_id, ())
