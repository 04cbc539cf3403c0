"""Gemini API (Google AI): ``provider.py`` (the contract), ``stream.py`` (its chunk state machine),
``convert.py`` (canonical ⇄ wire, pure), ``schema.py`` (JSON Schema → Gemini's OpenAPI subset)."""

from llmrelay.providers.gemini.provider import GeminiProvider

__all__ = ["GeminiProvider"]
