"""Evaluators: datasets, answer extraction, sandboxed code execution, metrics and the `hanlin eval` command.

``plugin`` registers each built-in dataset with the plugin manager and adds the command; everything else is
imported only when an evaluation runs, so registering this plugin costs nothing to API users.
"""
