"""Optimized kernels owned by the runtimes. Imports nothing from the rest of hanlin."""
