"""The error hierarchy.

Every error hanlin raises on purpose is a ``HanlinError``, so an app can catch
one type. Messages say what was wrong, with which value, and what to do about
it: an error is the first documentation a user reads.
"""

from __future__ import annotations


class HanlinError(Exception):
    """Root of every error hanlin raises deliberately."""


class ConfigurationError(HanlinError, ValueError):
    """A setting, argument or name that hanlin cannot use as given."""


class PluginError(HanlinError):
    """A plugin failed to load, or registered something malformed."""


class ModelError(HanlinError):
    """A model could not be found, loaded or run."""


class ModelNotInstalledError(ModelError):
    """A known model whose weights package is missing; the message names the pip command."""


class ContextOverflowError(ModelError):
    """The prompt (plus the tokens asked for) does not fit the model's context window."""


class ToolError(HanlinError):
    """A tool was defined wrongly or could not be found.

    Failures *inside* a tool call are not raised: they come back as a
    ``ToolResult`` with ``is_error=True`` so the agent loop can show them to the
    model.
    """


class ToolInputError(HanlinError, ValueError):
    """Raised inside a tool for input it cannot use; the message goes to the model as-is, without a traceback."""


class ParseError(HanlinError):
    """Model output that does not follow the protocol's format.

    ``hint`` is the short corrective text the agent shows the model so it can
    try again.
    """

    def __init__(self, message: str, *, hint: str | None = None, text: str = "") -> None:
        super().__init__(message)
        self.hint = hint or message
        self.text = text


class ProtocolError(HanlinError):
    """An agent protocol was misused (unknown name, unsupported model)."""
