"""Settings: loaded once from YAML (or embedded defaults), ``${ENV}``-expanded, validated, frozen.

Every problem in a file is reported at once, each naming its key path, so ``llmrelay config check``
can list them all. Unknown keys are errors: a typo must never silently change behaviour.
"""

from __future__ import annotations

import copy
import os
import re
from collections.abc import Mapping
from functools import cache
from importlib import resources
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

ProviderType = Literal["openai", "azure", "anthropic", "gemini", "mock"]
Capability = Literal["tools", "vision", "json", "reasoning", "prompt_caching", "audio"]

_ENV_PATTERN = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}")


class ConfigError(Exception):
    """The configuration is invalid; ``problems`` lists every one, each naming its key path."""

    def __init__(self, problems: list[str]) -> None:
        super().__init__("\n".join(problems))
        self.problems = problems


class _Frozen(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class Timeouts(_Frozen):
    """Seconds. There is deliberately no total-duration cap: a healthy long stream must live."""

    connect: float = Field(10.0, gt=0)
    first_byte: float = Field(300.0, gt=0)
    idle: float = Field(120.0, gt=0)


class ProviderConfig(_Frozen):
    type: ProviderType
    api_key: str | None = None
    base_url: str | None = None
    api_version: str | None = None
    preset: str | None = None
    supports_cancellation: bool | None = None
    timeouts: Timeouts = Timeouts()
    headers: dict[str, str] = Field(default_factory=dict)
    max_connections: int = Field(256, ge=1)


class Price(_Frozen):
    """USD per one million tokens."""

    input: float = Field(0.0, ge=0)
    output: float = Field(0.0, ge=0)
    cached_input: float | None = Field(None, ge=0)
    cache_write: float | None = Field(None, ge=0)


class ModelConfig(_Frozen):
    id: str
    provider: str
    upstream: str | None = None
    price: Price = Price()
    context_window: int | None = Field(None, ge=1)
    max_output_tokens: int | None = Field(None, ge=1)
    capabilities: tuple[Capability, ...] = ()

    @field_validator("id")
    @classmethod
    def _id_has_provider(cls, value: str) -> str:
        if "/" not in value or value.startswith("/") or value.endswith("/"):
            raise ValueError("a model id is 'provider/model'")
        return value

    @property
    def upstream_name(self) -> str:
        return self.upstream or self.id.split("/", 1)[1]


class RouterConfig(_Frozen):
    auto_names: tuple[str, ...] = ("auto", "llmrelay/auto")
    baskets: dict[str, str | tuple[str, ...]] = Field(default_factory=dict)
    default_basket: str = "chat"
    streaming_fallback: str | None = None
    classify_streams: bool = False
    cost_quality: float = Field(0.5, ge=0, le=1)
    long_context_tokens: int = Field(100_000, ge=1)
    min_confidence: float = Field(0.0, ge=0, le=1)


class LedgerConfig(_Frozen):
    batch_size: int = Field(500, ge=1)
    flush_interval_seconds: float = Field(0.2, gt=0)
    buffer_rows: int = Field(100_000, ge=1)
    journal_path: str = "./llmrelay-ledger.journal"


class AccountingConfig(_Frozen):
    """Credits, rate limits and quotas (docs/accounting.md)."""

    enabled: bool = True
    """False: no limits, credits or ledger rows (keys are still checked); for benchmarks."""
    redis_failure_policy: Literal["open", "closed"] = "open"
    """When Redis is unreachable: ``open`` enforces limits and credits in each instance alone
    until it is back; ``closed`` answers 503 instead."""
    redis_key_prefix: str = Field("llmrelay:", min_length=1, max_length=100)
    default_max_tokens: int = Field(4096, ge=1)
    """Output tokens a credit reservation assumes when neither the request nor the model sets
    a maximum."""
    reservation_seconds: float = Field(900.0, gt=0)
    """How long a reservation may stay unsettled (a crashed instance's) before it lapses."""


class Settings(_Frozen):
    database_url: str = "sqlite:///./llmrelay.db"
    redis_url: str | None = None
    keepalive_seconds: float = Field(15.0, gt=0)
    max_request_bytes: int = Field(10 * 1024 * 1024, ge=1024)
    key_cache_seconds: float = Field(5.0, gt=0)
    metrics_key: str | None = None
    """When set, ``GET /metrics`` needs it as a bearer token (or any key header of the contract)."""
    client_body_timeout_seconds: float = Field(30.0, gt=0)
    client_write_timeout_seconds: float = Field(60.0, gt=0)
    providers: dict[str, ProviderConfig] = Field(default_factory=dict)
    models: tuple[ModelConfig, ...] = ()
    router: RouterConfig = RouterConfig()
    fallbacks: dict[str, tuple[str, ...]] = Field(default_factory=dict)
    ledger: LedgerConfig = LedgerConfig()
    accounting: AccountingConfig = AccountingConfig()


def load_settings(
    path: str | os.PathLike[str] | None = None, env: Mapping[str, str] | None = None
) -> Settings:
    """Load a config file (or the embedded defaults when ``path`` is None) and validate it."""
    env = os.environ if env is None else env
    problems: list[str] = []
    if path is None:
        raw = default_config(env)
    else:
        try:
            text = Path(path).read_text(encoding="utf-8")
        except OSError as exc:
            raise ConfigError([f"cannot read {path}: {exc.strerror or exc}"]) from exc
        try:
            loaded = yaml.safe_load(text)
        except yaml.YAMLError as exc:
            raise ConfigError([f"{path}: not valid YAML: {exc}"]) from exc
        if loaded is None:
            loaded = {}
        if not isinstance(loaded, dict):
            raise ConfigError([f"{path}: the top level must be a mapping"])
        # Unset variables are reported with everything else, not instead of it.
        raw = _expand_env(loaded, env, (), problems)
        raw = _with_curated_models(raw)
    for name, key in (
        ("database_url", "LLMRELAY_DATABASE_URL"),
        ("redis_url", "LLMRELAY_REDIS_URL"),
    ):
        if env.get(key):
            raw[name] = env[key]
    settings: Settings | None
    try:
        settings = Settings.model_validate(raw)
    except ValidationError as exc:
        errors = exc.errors()
        problems.extend(_describe(err) for err in errors)
        settings = _validate_pruned(raw, errors)
    if settings is not None:
        problems.extend(check_references(settings))
    if problems or settings is None:
        raise ConfigError(problems)
    return settings


def _validate_pruned(raw: dict[str, Any], errors: list[Any]) -> Settings | None:
    """The settings without the offending keys, so cross-references can still be checked.

    Only mapping keys are dropped (an unknown key, a bad value that has a default); when an
    error cannot be pruned that way, None: the schema problems are reported alone.
    """
    pruned = copy.deepcopy(raw)
    for err in errors:
        *parents, last = err["loc"] or ("",)
        node: Any = pruned
        for part in parents:
            in_dict = isinstance(node, dict) and part in node
            in_list = isinstance(node, list) and isinstance(part, int) and part < len(node)
            if not (in_dict or in_list):
                return None
            node = node[part]
        if err["type"] == "missing" or not isinstance(node, dict) or last not in node:
            return None
        del node[last]
    try:
        return Settings.model_validate(pruned)
    except ValidationError:
        return None


def _describe(err: Any) -> str:
    where = ".".join(str(part) for part in err["loc"]) or "(top level)"
    if err["type"] == "extra_forbidden":
        return f"{where}: unknown key"
    if err["type"] == "missing":
        return f"{where}: required key is missing"
    return f"{where}: {err['msg']}"


def _expand_env(
    value: Any, env: Mapping[str, str], path: tuple[str, ...], problems: list[str]
) -> Any:
    if isinstance(value, str):

        def substitute(match: re.Match[str]) -> str:
            name, default = match.group(1), match.group(2)
            if name in env:
                return env[name]
            if default is not None:
                return default
            where = ".".join(path) or "(top level)"
            problems.append(
                f"{where}: environment variable {name} is not set "
                f"(write ${{{name}:-}} to allow empty)"
            )
            return ""

        return _ENV_PATTERN.sub(substitute, value)
    if isinstance(value, dict):
        return {k: _expand_env(v, env, (*path, str(k)), problems) for k, v in value.items()}
    if isinstance(value, list):
        return [_expand_env(v, env, (*path, str(i)), problems) for i, v in enumerate(value)]
    return value


def check_references(settings: Settings) -> list[str]:
    """Cross-references the schema cannot see: models name providers, routes name models."""
    problems: list[str] = []
    ids = {m.id for m in settings.models}
    seen: set[str] = set()
    for i, model in enumerate(settings.models):
        if model.id in seen:
            problems.append(f"models.{i}.id: duplicate model id {model.id!r}")
        seen.add(model.id)
        if model.provider not in settings.providers:
            problems.append(f"models.{i}.provider: unknown provider {model.provider!r}")
    router = settings.router
    for name in router.auto_names:
        if name in ids:
            problems.append(f"router.auto_names: {name!r} is also a catalogue model id")
    for basket, target in router.baskets.items():
        for model_id in (target,) if isinstance(target, str) else target:
            if model_id not in ids:
                problems.append(f"router.baskets.{basket}: unknown model {model_id!r}")
    if router.baskets and router.default_basket not in router.baskets:
        problems.append(f"router.default_basket: no basket named {router.default_basket!r}")
    if router.streaming_fallback is not None and router.streaming_fallback not in ids:
        problems.append(f"router.streaming_fallback: unknown model {router.streaming_fallback!r}")
    for source, targets in settings.fallbacks.items():
        if source not in ids:
            problems.append(f"fallbacks.{source}: unknown model {source!r}")
        for target in targets:
            if target not in ids:
                problems.append(f"fallbacks.{source}: unknown model {target!r}")
    for name, provider in settings.providers.items():
        if provider.type == "azure" and not provider.base_url:
            problems.append(f"providers.{name}.base_url: an azure provider needs its endpoint")
    if not (
        settings.database_url.startswith("sqlite:///")
        or settings.database_url.startswith(("postgresql://", "postgres://"))
    ):
        problems.append("database_url: use sqlite:///PATH or postgresql://...")
    if settings.redis_url is not None and not settings.redis_url.startswith(
        ("redis://", "rediss://", "unix://")
    ):
        problems.append("redis_url: use redis://host:port/db, rediss://... or unix://...")
    return problems


@cache
def _defaults_document() -> dict[str, Any]:
    text = resources.files("llmrelay").joinpath("defaults.yaml").read_text(encoding="utf-8")
    loaded: dict[str, Any] = yaml.safe_load(text)
    return loaded


def curated_models(provider_name: str, provider_type: str) -> list[dict[str, Any]]:
    """The curated catalogue of a provider type, with ids under the given provider name."""
    entries: list[dict[str, Any]] = _defaults_document()["catalogue"].get(provider_type, [])
    return [
        {**entry, "id": f"{provider_name}/{entry['id']}", "provider": provider_name}
        for entry in entries
    ]


def _with_curated_models(raw: dict[str, Any]) -> dict[str, Any]:
    """A provider that no configured model names gets its type's curated catalogue."""
    providers = raw.get("providers")
    if not isinstance(providers, dict):
        return raw
    models = raw.get("models") or []
    if not isinstance(models, list):
        return raw
    named = {m.get("provider") for m in models if isinstance(m, dict)}
    extra: list[dict[str, Any]] = []
    for name, provider in providers.items():
        if (
            name not in named
            and isinstance(provider, dict)
            and isinstance(provider.get("type"), str)
        ):
            extra.extend(curated_models(str(name), provider["type"]))
    return {**raw, "models": [*models, *extra]} if extra else raw


def default_config(env: Mapping[str, str]) -> dict[str, Any]:
    """The embedded defaults: mock, plus each real provider whose key is in the environment."""
    document = _defaults_document()
    providers: dict[str, Any] = {"mock": {"type": "mock"}}
    for name, spec in document["env_providers"].items():
        if all(env.get(var) for var in spec["requires"]):
            providers[name] = {
                key: _ENV_PATTERN.sub(lambda m: env.get(m.group(1), ""), value)
                for key, value in spec["config"].items()
            }
    models: list[dict[str, Any]] = []
    for name, provider in providers.items():
        models.extend(curated_models(name, provider["type"]))
    return {"providers": providers, "models": models, "router": document["default_router"]}
