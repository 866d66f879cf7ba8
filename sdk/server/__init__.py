"""`hanlin serve`: any hanlin model (or agent) behind an OpenAI-compatible HTTP API.

FastAPI is imported here, never by `import hanlin`: the server is an extra.
"""

from hanlin.server.app import create_app

__all__ = ["create_app"]
