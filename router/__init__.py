"""trio-llm-router."""
