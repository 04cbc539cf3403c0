"""OpenAI-compatible presets: data only, applied through the capability table and `adapt_body`."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from llmrelay.config import ConfigError, ModelConfig, ProviderConfig, Settings
from llmrelay.core.catalogue import ModelEntry
from llmrelay.core.errors import UnsupportedParameter
from llmrelay.core.validate import validate_chat_request
from llmrelay.providers.anthropic import AnthropicProvider
from llmrelay.providers.base import UpstreamRequest
from llmrelay.providers.capabilities import (
    ProviderCapabilities,
    base_capabilities,
    capabilities_for,
)
from llmrelay.providers.gemini import GeminiProvider
from llmrelay.providers.http import UpstreamClient
from llmrelay.providers.openai import AzureOpenAIProvider, OpenAIProvider
from llmrelay.providers.presets import GENERIC, PRESETS, adapt_body, azure_overrides, preset_for
from llmrelay.providers.registry import build_providers
from llmrelay.testing.emulator import EmulatorServer

EXPECTED = {
    "deepseek",
    "groq",
    "together",
    "fireworks",
    "mistral",
    "xai",
    "openrouter",
    "ollama",
    "vllm",
    "lmstudio",
}
# Per OpenRouter's list of providers whose billing stops when the connection is aborted.
NOT_CANCELLABLE = {"groq", "mistral"}


def chat(**fields: Any) -> Any:
    return validate_chat_request(
        {"model": "p/m", "messages": [{"role": "user", "content": "hello there world"}], **fields}
    )


def model(upstream: str) -> ModelEntry:
    return ModelEntry.from_config(ModelConfig(id="p/m", provider="p", upstream=upstream))


def caps_for(preset: str, **config: Any) -> ProviderCapabilities:
    provider_config = ProviderConfig(type="openai", preset=preset, **config)
    found = preset_for("p", provider_config)
    assert found is not None
    return capabilities_for(provider_config, found.capabilities)


def test_every_preset_is_a_row_of_known_capability_fields() -> None:
    assert set(PRESETS) == EXPECTED
    for name, preset in PRESETS.items():
        assert preset.name == name
        assert preset.base_url.startswith(("https://", "http://127.0.0.1:"))
        assert preset.base_url.endswith("/v1")
        caps = caps_for(name)  # an unknown field would raise here
        assert caps.supports_cancellation is (name not in NOT_CANCELLABLE)


def test_config_overrides_the_preset() -> None:
    assert caps_for("groq", supports_cancellation=True).supports_cancellation is True
    config = ProviderConfig(type="openai", preset="groq", base_url="http://127.0.0.1:9/v1")
    provider = OpenAIProvider("g", config, UpstreamClient())
    assert provider.capabilities.supports_cancellation is False
    assert provider.capabilities.multiple_choices is False


def test_unknown_preset_and_preset_on_another_type_are_config_errors() -> None:
    settings = Settings.model_validate(
        {
            "providers": {
                "a": {"type": "openai", "preset": "nope"},
                "b": {"type": "anthropic", "preset": "groq"},
                "c": {"type": "openai", "preset": "groq", "api_key": "k"},
            }
        }
    )
    with pytest.raises(ConfigError) as caught:
        build_providers(settings, UpstreamClient())
    assert caught.value.problems == [
        "providers.a.preset: unknown preset 'nope' (known: deepseek, fireworks, groq, lmstudio, "
        "mistral, ollama, openrouter, together, vllm, xai)",
        "providers.b.preset: presets apply to type openai only",
    ]


def test_every_provider_type_is_registered() -> None:
    settings = Settings.model_validate(
        {
            "providers": {
                "o": {"type": "openai"},
                "z": {"type": "azure", "base_url": "https://r.openai.azure.com"},
                "a": {"type": "anthropic"},
                "g": {"type": "gemini"},
                "m": {"type": "mock"},
            }
        }
    )
    built = build_providers(settings, UpstreamClient())
    assert isinstance(built["o"], OpenAIProvider)
    assert isinstance(built["z"], AzureOpenAIProvider)
    assert isinstance(built["a"], AnthropicProvider)
    assert isinstance(built["g"], GeminiProvider)
    assert built["g"].capabilities.supports_cancellation is False


def test_which_preset_a_config_selects() -> None:
    assert preset_for("o", ProviderConfig(type="openai")) is None
    assert (
        preset_for("o", ProviderConfig(type="openai", base_url="https://api.openai.com/v1/"))
        is None
    )
    local = ProviderConfig(type="openai", base_url="http://127.0.0.1:8000/v1")
    assert preset_for("o", local) is GENERIC
    assert preset_for("z", ProviderConfig(type="azure", base_url="https://x")) is None


@pytest.mark.parametrize(
    ("caps", "fields", "expected"),
    [
        (base_capabilities("openai"), {"max_tokens": 5}, {"max_completion_tokens": 5}),
        (
            base_capabilities("openai"),
            {"max_tokens": 5, "max_completion_tokens": 9},
            {"max_completion_tokens": 9},
        ),
        (caps_for("mistral"), {"max_completion_tokens": 9}, {"max_tokens": 9}),
        (caps_for("mistral"), {"seed": 3}, {"random_seed": 3}),
        (
            capabilities_for(ProviderConfig(type="openai"), GENERIC.capabilities),
            {"max_completion_tokens": 9},
            {"max_completion_tokens": 9},
        ),
        (
            capabilities_for(ProviderConfig(type="openai"), GENERIC.capabilities),
            {"max_tokens": 9},
            {"max_tokens": 9},
        ),
    ],
)
def test_adapt_body_output_caps_and_renames(
    caps: ProviderCapabilities, fields: dict[str, Any], expected: dict[str, Any]
) -> None:
    body = adapt_body(chat(**fields).body, "upstream-name", caps, stream=False)
    assert body["model"] == "upstream-name"
    for name in ("max_tokens", "max_completion_tokens", "seed", "random_seed"):
        assert body.get(name) == expected.get(name)


def test_adapt_body_stream_options() -> None:
    request = chat(
        stream=True, stream_options={"include_usage": False, "include_obfuscation": False}
    )
    openai = adapt_body(request.body, "m", base_capabilities("openai"), stream=True)
    assert openai["stream_options"] == {"include_usage": True, "include_obfuscation": False}
    mistral = adapt_body(request.body, "m", caps_for("mistral"), stream=True)
    assert "stream_options" not in mistral
    assert mistral["stream"] is True
    whole = adapt_body(request.body, "m", base_capabilities("openai"), stream=False)
    assert "stream" not in whole
    assert "stream_options" not in whole
    assert request.body["stream_options"]["include_usage"] is False  # the request is not mutated


def test_azure_api_versions() -> None:
    assert azure_overrides(None) == {}
    assert azure_overrides("preview") == {}
    assert azure_overrides("2024-10-21") == {}
    assert azure_overrides("2024-09-01-preview") == {}
    assert azure_overrides("2024-06-01") == {
        "max_tokens_field": "max_tokens",
        "usage_in_stream": False,
    }


# -- presets driving the emulator ---------------------------------------------------------------


@pytest.fixture
async def emu() -> AsyncIterator[EmulatorServer]:
    async with EmulatorServer() as server:
        yield server


@pytest.fixture
async def client() -> AsyncIterator[UpstreamClient]:
    upstream = UpstreamClient()
    upstream.start()
    yield upstream
    await upstream.close()


async def test_mistral_quirks_on_the_wire(client: UpstreamClient, emu: EmulatorServer) -> None:
    config = ProviderConfig(
        type="openai", preset="mistral", base_url=emu.base_url + "/v1", api_key="k"
    )
    provider = OpenAIProvider("mistral", config, client)
    request = chat(
        max_completion_tokens=30, seed=4, stream=True, stream_options={"include_usage": True}
    )
    chunks = [
        c
        async for c in provider.stream(
            UpstreamRequest(request, model("mistral-large+chunks=3"), "r")
        )
    ]
    (seen,) = await emu.wait_for_requests(1)
    assert seen.json["max_tokens"] == 30
    assert seen.json["random_seed"] == 4
    assert "seed" not in seen.json
    assert "max_completion_tokens" not in seen.json
    assert "stream_options" not in seen.json
    assert seen.headers["authorization"] == "Bearer k"
    assert chunks[-1]["choices"][0]["finish_reason"] == "stop"


async def test_groq_refuses_several_choices_before_calling(
    client: UpstreamClient, emu: EmulatorServer
) -> None:
    config = ProviderConfig(
        type="openai", preset="groq", base_url=emu.base_url + "/v1", api_key="k"
    )
    provider = OpenAIProvider("groq", config, client)
    for fields, param in (({"n": 2}, "n"), ({"logprobs": True}, "logprobs")):
        with pytest.raises(UnsupportedParameter) as caught:
            await provider.complete(UpstreamRequest(chat(**fields), model("llama"), "r"))
        assert caught.value.param == param
        assert "'groq'" in caught.value.message
    assert emu.requests == []


async def test_local_servers_need_no_key(client: UpstreamClient, emu: EmulatorServer) -> None:
    config = ProviderConfig(type="openai", preset="ollama", base_url=emu.base_url + "/v1")
    provider = OpenAIProvider("ollama", config, client)
    # The emulator insists on a bearer key, which is how we see that none was sent.
    with pytest.raises(Exception, match="credentials"):
        await provider.complete(UpstreamRequest(chat(), model("llama3"), "r"))
    (seen,) = await emu.wait_for_requests(1)
    assert "authorization" not in seen.headers


def test_the_documented_presets_table_matches_the_code() -> None:
    docs = Path(__file__).parent.parent / "docs" / "providers.md"
    rows = {}
    for line in docs.read_text(encoding="utf-8").splitlines():
        cells = [cell.strip().strip("`") for cell in line.strip().strip("|").split("|")]
        if len(cells) == 6 and cells[0] in PRESETS:
            rows[cells[0]] = cells[1:5]
    assert set(rows) == set(PRESETS)
    for name, (url, cancellation, cap_field, stream_usage) in rows.items():
        caps = caps_for(name)
        assert url == PRESETS[name].base_url, name
        assert cancellation == ("yes" if caps.supports_cancellation else "no"), name
        assert cap_field == caps.max_tokens_field, name
        assert stream_usage == ("yes" if caps.usage_in_stream else "no"), name
