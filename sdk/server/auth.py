"""The API key: where `hanlin serve` gets it, and how a request proves it has it.

Where from: a key on the command line is visible to every local user in ``ps``, so `hanlin serve` also takes it
from a file (``--api-key-file``) or the ``HANLIN_API_KEY`` environment variable. How: the Bearer token is compared
in constant time (``hmac.compare_digest``), and the routes check it before they read the body, so an
unauthenticated client cannot make the server read, parse or validate anything it sends.
"""

from __future__ import annotations

import hmac
import os
from collections.abc import Mapping
from pathlib import Path

from fastapi import Request

from hanlin.errors import ConfigurationError
from hanlin.server.errors import APIError

ENV_VAR = "HANLIN_API_KEY"


def resolve_api_key(api_key: str | None = None, api_key_file: str | Path | None = None,
                    environ: Mapping[str, str] | None = None) -> str | None:
    """The key the server requires: ``--api-key``, else the first line of ``--api-key-file``, else ``$HANLIN_API_KEY``;
    None (no key required) when none is given. Giving both the key and a key file is refused as ambiguous."""
    environ = os.environ if environ is None else environ
    if api_key is not None and api_key_file is not None:
        raise ConfigurationError("give the API key once: --api-key or --api-key-file, not both (prefer the file: "
                                 "a key on the command line is visible in `ps`)")
    if api_key_file is not None:
        try:
            lines = Path(api_key_file).read_text(encoding="utf-8").splitlines()
        except (OSError, UnicodeDecodeError) as exc:
            raise ConfigurationError(f"cannot read the API key file {str(api_key_file)!r}: {exc}") from None
        key, source = (lines[0].strip() if lines else ""), f"the API key file {str(api_key_file)!r}"
    elif api_key is not None:
        key, source = api_key.strip(), "--api-key"
    elif environ.get(ENV_VAR) is not None:
        key, source = environ[ENV_VAR].strip(), f"${ENV_VAR}"
    else:
        return None
    if not key:
        raise ConfigurationError(f"{source} gives an empty API key; put the key in it, or give none to serve without one")
    if any(ord(c) < 0x21 or ord(c) == 0x7F for c in key):
        raise ConfigurationError(f"the API key from {source} contains spaces or control characters, which an HTTP "
                                 "header cannot carry; use printable characters only")
    return key


class KeyCheck:
    """Checks ``Authorization: Bearer <key>`` in constant time; with no key configured every request passes."""

    def __init__(self, api_key: str | None) -> None:
        self._expected = api_key.encode("utf-8") if api_key is not None else None

    def __call__(self, request: Request) -> None:
        if self._expected is None:
            return
        header = request.headers.get("authorization")
        scheme, _, token = (header or "").strip().partition(" ")
        # Starlette decodes header bytes as latin-1; encoding back gives the bytes the client sent.
        given = token.strip().encode("latin-1", errors="replace")
        # compare_digest runs on every path, so a wrong scheme costs the same time as a wrong key
        matches = hmac.compare_digest(given, self._expected)
        if not (matches and scheme.lower() == "bearer"):
            problem = "missing" if not header else "wrong"
            raise APIError(401, f"{problem} API key: send 'Authorization: Bearer <key>'", type="authentication_error",
                           code="invalid_api_key")
