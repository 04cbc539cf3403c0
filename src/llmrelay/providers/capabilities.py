"""What each provider can do: THE table, and the one check of a request against it.

No other module asks ``if provider == ...``: a provider type (and, for OpenAI-compatible hosts, its
preset) is a row of :class:`ProviderCapabilities`, and :func:`check_request` turns every field a
provider cannot honour into a 400 naming the field and the provider, before any upstream call.

The wire-level knobs of OpenAI-compatible hosts (which max-tokens field they read, whether they
accept ``stream_options``, renamed fields) live here too, so a preset is a row and nothing else.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field, replace
from types import MappingProxyType
from typing import Any, Literal

from llmrelay.config import ProviderConfig
from llmrelay.core.catalogue import ModelEntry
from llmrelay.core.errors import UnsupportedParameter
from llmrelay.core.types import ChatRequest

MaxTokensField = Literal["max_tokens", "max_completion_tokens"]


@dataclass(frozen=True, slots=True)
class ProviderCapabilities:
    """One row of the table. Defaults describe OpenAI itself."""

    tools: bool = True
    vision: bool = True
    """Image parts (``image_url``), as ``data:`` URLs or remote URLs."""
    audio_input: bool = True
    """``input_audio`` parts (still refused for a catalogue model not marked ``audio``)."""
    documents: bool = True
    """``file`` parts (PDF and other documents sent inline)."""
    json_object: bool = True
    """``response_format: {"type": "json_object"}``."""
    json_schema: bool = True
    """``response_format: {"type": "json_schema", ...}``."""
    prompt_caching: bool = False
    reasoning: bool = False
    usage_in_stream: bool = True
    """The host honours ``stream_options.include_usage`` (else it must not be sent)."""
    supports_cancellation: bool = True
    max_output_tokens: int | None = None
    multiple_choices: bool = True
    """``n`` > 1."""
    max_stop_sequences: int | None = 4
    unsupported_fields: frozenset[str] = frozenset()
    """Request fields the provider has no way to honour when set to anything but a neutral value."""
    max_tokens_field: MaxTokensField | None = "max_completion_tokens"
    """Which of the two output caps an OpenAI-compatible host reads (the other is not sent);
    None sends the cap under the name the client used."""
    renamed_fields: Mapping[str, str] = field(default_factory=lambda: MappingProxyType({}))
    """Canonical field → the host's own name for it (Mistral's ``random_seed``)."""

    @property
    def json_mode(self) -> bool:
        return self.json_object or self.json_schema


# Fields of the OpenAI request that carry no instruction when they hold these values, so a client
# that sends the defaults explicitly is never refused.
_NEUTRAL: Mapping[str, tuple[Any, ...]] = MappingProxyType(
    {
        "frequency_penalty": (0, 0.0),
        "presence_penalty": (0, 0.0),
        "logprobs": (False,),
        "top_logprobs": (0,),
        "logit_bias": ({},),
        "modalities": (["text"],),
        "parallel_tool_calls": (True,),
        "functions": ([],),
    }
)

# Anthropic and Gemini have no counterpart for these OpenAI features.
_TRANSLATED_UNSUPPORTED = frozenset(
    {"logit_bias", "audio", "web_search_options", "functions", "function_call", "modalities"}
)

_BY_TYPE: Mapping[str, ProviderCapabilities] = MappingProxyType(
    {
        "openai": ProviderCapabilities(prompt_caching=True, reasoning=True),
        "azure": ProviderCapabilities(prompt_caching=True, reasoning=True),
        "anthropic": ProviderCapabilities(
            audio_input=False,
            json_object=False,  # no free-form JSON mode; json_schema maps to output_config.format
            prompt_caching=True,
            reasoning=True,
            multiple_choices=False,
            max_stop_sequences=None,
            unsupported_fields=_TRANSLATED_UNSUPPORTED
            | {"seed", "logprobs", "top_logprobs", "frequency_penalty", "presence_penalty"},
        ),
        # Google's API keeps generating after a client disconnects (and bills it), so the gateway
        # drains it rather than pretending the cancel stopped the meter.
        "gemini": ProviderCapabilities(
            prompt_caching=True,  # implicit caching; reported as cachedContentTokenCount
            reasoning=True,
            supports_cancellation=False,
            max_stop_sequences=5,
            unsupported_fields=_TRANSLATED_UNSUPPORTED | {"logprobs", "top_logprobs"},
        ),
        "mock": ProviderCapabilities(),
    }
)


def base_capabilities(provider_type: str) -> ProviderCapabilities:
    """The row of a provider type, before presets and config overrides."""
    return _BY_TYPE[provider_type]


def capabilities_for(
    config: ProviderConfig, overrides: Mapping[str, Any] | None = None
) -> ProviderCapabilities:
    """The type's row, refined by ``overrides`` (a preset's, an api-version's), then the config."""
    caps = _BY_TYPE[config.type]
    if overrides:
        caps = replace(caps, **overrides)
    if config.supports_cancellation is not None:
        caps = replace(caps, supports_cancellation=config.supports_cancellation)
    return caps


def check_request(
    request: ChatRequest, model: ModelEntry, caps: ProviderCapabilities, provider: str
) -> None:
    """Refuse, with a 400 naming the field and the provider, what ``provider`` cannot honour."""
    # Runs on every request and nearly always passes: the refusal's words are built only when
    # one is raised.
    body = request.body
    n = body.get("n")
    if isinstance(n, int) and n > 1 and not caps.multiple_choices:
        raise _refusal(provider, model, "n", f"'n' = {n} (several choices)")
    if body.get("tools") and not caps.tools:
        raise _refusal(provider, model, "tools", "'tools'")
    stop = body.get("stop")
    if (
        isinstance(stop, list)
        and caps.max_stop_sequences is not None
        and len(stop) > caps.max_stop_sequences
    ):
        raise _refusal(
            provider, model, "stop", f"more than {caps.max_stop_sequences} 'stop' sequences"
        )
    response_format = body.get("response_format")
    if isinstance(response_format, dict):
        kind = response_format.get("type")
        if (kind == "json_object" and not caps.json_object) or (
            kind == "json_schema" and not caps.json_schema
        ):
            hint = " (send a json_schema instead)" if caps.json_schema else ""
            raise _refusal(
                provider, model, "response_format", f"'response_format' of type {kind!r}{hint}"
            )
    if caps.unsupported_fields:
        for name in sorted(caps.unsupported_fields):
            value = body.get(name)
            if value is not None and value not in _NEUTRAL.get(name, ()):
                raise _refusal(provider, model, name, f"'{name}'")
    _check_parts(request, model, caps, provider)


def _refusal(provider: str, model: ModelEntry, param: str, what: str) -> UnsupportedParameter:
    return UnsupportedParameter(
        f"{what} is not supported by provider {provider!r} (model {model.id!r})", param=param
    )


def _check_parts(
    request: ChatRequest, model: ModelEntry, caps: ProviderCapabilities, provider: str
) -> None:
    # A catalogue entry that lists capabilities is taken at its word for media: sending audio to a
    # text-only model fails upstream anyway, and later, with a less useful message.
    declared = model.capabilities
    vision = caps.vision and (not declared or "vision" in declared)
    audio = caps.audio_input and (not declared or "audio" in declared)
    for param, kind in iter_parts(request.messages):
        if kind == "image_url" and not vision:
            raise _refusal(provider, model, param, "an image part")
        if kind == "input_audio" and not audio:
            raise _refusal(provider, model, param, "an audio part")
        if kind == "file" and not caps.documents:
            raise _refusal(provider, model, param, "a file part")


def iter_parts(messages: list[dict[str, Any]]) -> Iterator[tuple[str, str]]:
    """``(param path, part type)`` of every content part of every message."""
    for i, message in enumerate(messages):
        content = message.get("content")
        if isinstance(content, list):
            for j, part in enumerate(content):
                if isinstance(part, dict):
                    yield f"messages[{i}].content[{j}]", str(part.get("type"))
