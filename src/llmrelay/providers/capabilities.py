"""What each provider type can do: one table, so no code asks ``if provider == ...``."""

from __future__ import annotations

from dataclasses import dataclass, replace

from llmrelay.config import ProviderConfig


@dataclass(frozen=True, slots=True)
class ProviderCapabilities:
    tools: bool = True
    vision: bool = True
    json_mode: bool = True
    prompt_caching: bool = False
    reasoning: bool = False
    usage_in_stream: bool = True
    supports_cancellation: bool = True
    max_output_tokens: int | None = None
    multiple_choices: bool = True


_BY_TYPE: dict[str, ProviderCapabilities] = {
    "openai": ProviderCapabilities(prompt_caching=True, reasoning=True),
    "azure": ProviderCapabilities(prompt_caching=True, reasoning=True),
    "anthropic": ProviderCapabilities(prompt_caching=True, reasoning=True, multiple_choices=False),
    # Google's API keeps generating after a client disconnects (and bills it), so the gateway
    # drains it rather than pretending the cancel stopped the meter.
    "gemini": ProviderCapabilities(reasoning=True, supports_cancellation=False),
    "mock": ProviderCapabilities(),
}


def capabilities_for(config: ProviderConfig) -> ProviderCapabilities:
    base = _BY_TYPE[config.type]
    if config.supports_cancellation is not None:
        base = replace(base, supports_cancellation=config.supports_cancellation)
    return base
