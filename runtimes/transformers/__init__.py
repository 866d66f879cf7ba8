"""Transformers runtime: the torch reference backend."""
