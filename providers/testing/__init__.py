"""Testing support."""
