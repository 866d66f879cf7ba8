"""Integrations with other ecosystems: LangChain and MCP, both ways."""
