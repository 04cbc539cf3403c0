"""Provider type → implementation, and building every configured provider at start-up."""

from __future__ import annotations

from collections.abc import Callable

from llmrelay.config import ConfigError, ProviderConfig, Settings
from llmrelay.providers.anthropic import AnthropicProvider
from llmrelay.providers.base import Provider
from llmrelay.providers.gemini import GeminiProvider
from llmrelay.providers.http import UpstreamClient
from llmrelay.providers.mock import MockProvider
from llmrelay.providers.openai import AzureOpenAIProvider, OpenAIProvider
from llmrelay.providers.presets import preset_for

ProviderFactory = Callable[[str, ProviderConfig, UpstreamClient], Provider]

_FACTORIES: dict[str, ProviderFactory] = {
    "openai": OpenAIProvider,
    "azure": AzureOpenAIProvider,
    "anthropic": AnthropicProvider,
    "gemini": GeminiProvider,
    "mock": lambda name, config, _client: MockProvider(name, config),
}


def check_providers(settings: Settings) -> list[str]:
    """Problems only the provider layer can see (unknown presets), for ``config check``."""
    problems: list[str] = []
    for name, config in settings.providers.items():
        if config.type not in _FACTORIES:
            problems.append(
                f"providers.{name}.type: {config.type!r} is not available in this build"
            )
            continue
        try:
            preset_for(name, config)
        except ConfigError as exc:
            problems.extend(exc.problems)
    return problems


def build_providers(settings: Settings, client: UpstreamClient) -> dict[str, Provider]:
    problems: list[str] = []
    providers: dict[str, Provider] = {}
    for name, config in settings.providers.items():
        factory = _FACTORIES.get(config.type)
        if factory is None:
            problems.append(
                f"providers.{name}.type: {config.type!r} is not available in this build"
            )
            continue
        try:
            preset_for(name, config)  # a preset that does not exist, or on a type without any
            providers[name] = factory(name, config, client)
        except ConfigError as exc:
            problems.extend(exc.problems)
    if problems:
        raise ConfigError(problems)
    return providers
