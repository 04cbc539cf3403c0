"""llmrelay.testing."""
