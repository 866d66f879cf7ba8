"""The tool-use evaluation set (``tool_use.jsonl``), shipped as package data so an installed wheel has it."""
