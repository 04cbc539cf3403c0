"""llmrelay.accounting."""
