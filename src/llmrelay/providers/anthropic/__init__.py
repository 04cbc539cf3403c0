"""Anthropic Messages API: ``provider.py`` (the contract), ``stream.py`` (its event state machine),
``convert.py`` (canonical ⇄ wire, pure)."""

from llmrelay.providers.anthropic.provider import AnthropicProvider

__all__ = ["AnthropicProvider"]
