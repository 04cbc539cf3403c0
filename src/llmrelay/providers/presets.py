"""OpenAI-compatible hosts as data: a base URL and the capability rows that differ from OpenAI's.

``providers: {groq: {type: openai, preset: groq, api_key: ...}}`` selects a preset; ``base_url``
and ``supports_cancellation`` in the config still override it. The quirks are capability fields
(:mod:`llmrelay.providers.capabilities`), so they are applied by one mechanism: :func:`adapt_body`
for the wire, :func:`~llmrelay.providers.capabilities.check_request` for what must be refused.

Cancellation follows OpenRouter's published list (which hosts stop billing when the connection is
aborted); the rest follows each host's API reference. Azure's row depends on its ``api-version``.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

from llmrelay.config import ConfigError, ProviderConfig
from llmrelay.core.types import JSONObject
from llmrelay.providers.canonical import max_output_tokens
from llmrelay.providers.capabilities import ProviderCapabilities

OPENAI_BASE_URL = "https://api.openai.com/v1"
_STREAM_USAGE: Mapping[str, bool] = MappingProxyType({"include_usage": True})
# Hosts that take neither audio nor documents inline; most open-model hosts.
_TEXT_AND_IMAGES: Mapping[str, Any] = {"audio_input": False, "documents": False}


@dataclass(frozen=True, slots=True)
class Preset:
    name: str
    base_url: str
    capabilities: Mapping[str, Any] = field(default_factory=lambda: MappingProxyType({}))
    """Fields of :class:`ProviderCapabilities` that differ from OpenAI's row."""


def _preset(name: str, base_url: str, **capabilities: Any) -> Preset:
    return Preset(name, base_url, MappingProxyType(capabilities))


PRESETS: Mapping[str, Preset] = MappingProxyType(
    {
        preset.name: preset
        for preset in (
            _preset(
                "deepseek",
                "https://api.deepseek.com/v1",
                **_TEXT_AND_IMAGES,
                vision=False,
                json_schema=False,
                multiple_choices=False,
                max_tokens_field="max_tokens",
                reasoning=True,
                prompt_caching=True,
            ),
            _preset(
                "groq",
                "https://api.groq.com/openai/v1",
                **_TEXT_AND_IMAGES,
                supports_cancellation=False,
                multiple_choices=False,
                reasoning=True,
                unsupported_fields=frozenset({"logprobs", "top_logprobs", "logit_bias"}),
            ),
            _preset(
                "together",
                "https://api.together.xyz/v1",
                **_TEXT_AND_IMAGES,
                max_tokens_field="max_tokens",
                reasoning=True,
            ),
            _preset(
                "fireworks",
                "https://api.fireworks.ai/inference/v1",
                **_TEXT_AND_IMAGES,
                max_tokens_field="max_tokens",
                reasoning=True,
            ),
            _preset(
                "mistral",
                "https://api.mistral.ai/v1",
                **_TEXT_AND_IMAGES,
                supports_cancellation=False,
                # Mistral refuses stream_options and reports usage on the last chunk anyway.
                usage_in_stream=False,
                max_tokens_field="max_tokens",
                renamed_fields=MappingProxyType({"seed": "random_seed"}),
            ),
            _preset(
                "xai",
                "https://api.x.ai/v1",
                **_TEXT_AND_IMAGES,
                max_tokens_field="max_tokens",
                reasoning=True,
                prompt_caching=True,
            ),
            # OpenRouter aborts the upstream where that upstream allows it (see its list).
            _preset(
                "openrouter",
                "https://openrouter.ai/api/v1",
                max_tokens_field="max_tokens",
                reasoning=True,
                prompt_caching=True,
            ),
            _preset(
                "ollama",
                "http://127.0.0.1:11434/v1",
                **_TEXT_AND_IMAGES,
                multiple_choices=False,
                max_tokens_field="max_tokens",
                reasoning=True,
            ),
            _preset(
                "vllm",
                "http://127.0.0.1:8000/v1",
                **_TEXT_AND_IMAGES,
                max_tokens_field="max_tokens",
                reasoning=True,
                prompt_caching=True,
            ),
            _preset(
                "lmstudio",
                "http://127.0.0.1:1234/v1",
                **_TEXT_AND_IMAGES,
                multiple_choices=False,
                max_tokens_field="max_tokens",
            ),
        )
    }
)

# ``type: openai`` at a base URL that is not OpenAI's and names no preset: an unknown server, so
# the output cap goes under whichever name the client used.
GENERIC = _preset("openai-compatible", "", max_tokens_field=None, prompt_caching=False)


def preset_for(name: str, config: ProviderConfig) -> Preset | None:
    """The preset a provider config selects (explicitly, or the generic one), else None."""
    if config.preset is not None:
        if config.type != "openai":
            raise ConfigError([f"providers.{name}.preset: presets apply to type openai only"])
        preset = PRESETS.get(config.preset)
        if preset is None:
            known = ", ".join(sorted(PRESETS))
            raise ConfigError(
                [f"providers.{name}.preset: unknown preset {config.preset!r} (known: {known})"]
            )
        return preset
    base = (config.base_url or OPENAI_BASE_URL).rstrip("/")
    if config.type == "openai" and base != OPENAI_BASE_URL:
        return GENERIC
    return None


def azure_overrides(api_version: str | None) -> dict[str, Any]:
    """What an Azure ``api-version`` lacks: before 2024-09-01-preview, no max_completion_tokens
    and no stream_options (Azure answers 400 to them)."""
    if api_version is None or not api_version[:1].isdigit() or api_version >= "2024-09-01":
        return {}
    return {"max_tokens_field": "max_tokens", "usage_in_stream": False}


def adapt_body(
    body: JSONObject, model: str, caps: ProviderCapabilities, *, stream: bool
) -> JSONObject:
    """The canonical request as an OpenAI-compatible host with ``caps`` takes it."""
    wire = dict(body)
    wire["model"] = model
    if caps.max_tokens_field is not None:
        cap = max_output_tokens(body)
        wire.pop("max_tokens", None)
        wire.pop("max_completion_tokens", None)
        if cap is not None:
            wire[caps.max_tokens_field] = cap
    if stream:
        wire["stream"] = True
        options = wire.get("stream_options")
        if caps.usage_in_stream:
            # The gateway always asks for usage, so it can bill, whatever the client asked.
            wire["stream_options"] = {
                **(options if isinstance(options, dict) else {}),
                **_STREAM_USAGE,
            }
        else:
            wire.pop("stream_options", None)
    else:
        wire.pop("stream", None)
        wire.pop("stream_options", None)
    for canonical, native in caps.renamed_fields.items():
        if canonical in wire:
            wire[native] = wire.pop(canonical)
    return wire
