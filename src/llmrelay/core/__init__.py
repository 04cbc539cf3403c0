"""llmrelay.core."""
