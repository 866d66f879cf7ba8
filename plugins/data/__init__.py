"""Data blocks and pipelines (`hanlin data`): readers, cleaners, filters, dedup, writers, tokenize-and-pack."""
