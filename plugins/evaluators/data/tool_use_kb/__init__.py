"""The invented company documents the tool-use questions search with the knowledge_base tool (package data)."""
