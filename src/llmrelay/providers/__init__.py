"""llmrelay.providers."""
