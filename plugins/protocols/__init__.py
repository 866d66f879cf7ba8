"""Agent protocols: react, rewoo and native tool calling."""
