"""llmrelay.api."""
