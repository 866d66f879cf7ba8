"""Inference backends (runtimes). Each subpackage registers itself through the plugin manager."""
