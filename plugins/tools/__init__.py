"""Tool plugins."""
