"""The Jinja2 environment of the dashboard: package templates, autoescape on, strict names."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from jinja2 import Environment, PackageLoader, StrictUndefined


def usd(value: float | None) -> str:
    if value is None:
        return "unlimited"
    if value == 0:
        return "$0"
    if abs(value) < 0.01:
        return f"${value:.6f}"
    return f"${value:,.4f}"


def utc(value: float | None) -> str:
    if value is None:
        return "-"
    return datetime.fromtimestamp(value, UTC).strftime("%Y-%m-%d %H:%M:%S")


def number(value: float | None) -> str:
    if value is None:
        return "-"
    return f"{value:,.0f}"


def millis(value: float | None) -> str:
    if value is None:
        return "-"
    return f"{value / 1000:.2f} s" if value >= 1000 else f"{value:.0f} ms"


def percent(value: float | None) -> str:
    return "-" if value is None else f"{value * 100:.1f}%"


class Templates:
    def __init__(self) -> None:
        self._env = Environment(
            loader=PackageLoader("llmrelay.ui", "templates"),
            autoescape=True,  # every template, whatever its name
            undefined=StrictUndefined,
            trim_blocks=True,
            lstrip_blocks=True,
        )
        self._env.filters.update(usd=usd, utc=utc, number=number, millis=millis, percent=percent)

    def render(self, name: str, **context: Any) -> str:
        return self._env.get_template(name).render(**context)
