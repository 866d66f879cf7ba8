"""What an app plugin gets from `hanlin serve` to add its routes and pages: the served model and the server's guards.

``register_routes(app)`` hooks read ``app.state.hanlin`` (a ``ServerContext``). Going through it, an app's routes
share the server's API key, its admission limit (429 when full), its body limit and its metrics, so the server
applies one policy whatever plugin a route came from. An app page is an ES module the web UI imports when its tab
is opened; the module's folder is served under ``/ui/apps/<name>/`` with the page's security headers.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import Response

from hanlin.chat_model import ChatModel
from hanlin.errors import ConfigurationError
from hanlin.server.admission import Admission
from hanlin.server.errors import APIError
from hanlin.server.metrics import Metrics

_PAGE_TYPES = {".js": "text/javascript; charset=utf-8", ".css": "text/css; charset=utf-8"}


@dataclass(frozen=True, slots=True)
class AppPage:
    """A tab of the web UI: ``module`` exports ``page(element, config)``, called once when the tab is first opened."""

    name: str
    title: str
    module: str


@dataclass
class ServerContext:
    model: ChatModel
    model_name: str
    authenticate: Callable[[Request], None]
    admission: Admission
    metrics: Metrics
    max_body_bytes: int
    app_options: Mapping[str, str] = field(default_factory=dict)
    pages: list[AppPage] = field(default_factory=list)
    claimed: set[str] = field(default_factory=set)

    def options_for(self, app_name: str) -> dict[str, str]:
        """The ``--app NAME.KEY=VALUE`` options given for one app, without the ``NAME.`` prefix (the app claims them:
        options no app claims are an error, so a misspelt app name is not silently ignored)."""
        self.claimed.add(app_name)
        prefix = f"{app_name}."
        return {k[len(prefix):]: v for k, v in self.app_options.items() if k.startswith(prefix)}

    def add_page(self, app: FastAPI, name: str, title: str, folder: Path, module: str = "page.js") -> None:
        """Serve ``folder``'s .js/.css files under ``/ui/apps/<name>/`` and list ``module`` as a tab of the UI."""
        from hanlin.server.ui import SECURITY_HEADERS

        if not name.isidentifier():
            raise ConfigurationError(f"an app page name must be a plain identifier, got {name!r}")
        files = {p.name: p for p in folder.iterdir() if p.suffix in _PAGE_TYPES}
        if module not in files:
            raise ConfigurationError(f"app page {name!r}: {folder / module} does not exist")

        @app.get(f"/ui/apps/{name}/{{file}}", include_in_schema=False)
        async def app_file(file: str) -> Response:
            path = files.get(file)
            if path is None:
                raise APIError(404, f"no UI file named {file!r} for app {name!r}")
            return Response(path.read_bytes(), media_type=_PAGE_TYPES[path.suffix], headers=SECURITY_HEADERS)

        self.pages.append(AppPage(name=name, title=title, module=f"/ui/apps/{name}/{module}"))


def check_claimed(context: ServerContext) -> None:
    """Refuse ``--app`` options that no app read: a typo in the app's name must not start a server without it."""
    unclaimed = sorted({key.partition(".")[0] for key in context.app_options} - context.claimed)
    if unclaimed:
        raise ConfigurationError(f"--app options for {', '.join(unclaimed)}, which no app reads; apps: "
                                 f"{', '.join(sorted(context.claimed)) or '(none)'} (see `hanlin plugins`)")


def server_context(app: FastAPI) -> ServerContext:
    """The context `hanlin serve` put on ``app`` (a plugin's ``register_routes`` starts here)."""
    context = getattr(app.state, "hanlin", None)
    if not isinstance(context, ServerContext):
        raise ConfigurationError("this FastAPI app was not built by hanlin.server.create_app: it has no ServerContext")
    return context


def parse_app_options(pairs: list[str] | None) -> dict[str, str]:
    """``["research.search=local:docs", ...]`` -> a dict; a malformed pair is an error that shows the expected form."""
    options: dict[str, str] = {}
    for pair in pairs or []:
        key, sep, value = pair.partition("=")
        app_name, dot, option = key.strip().partition(".")
        if not sep or not dot or not app_name or not option:
            raise ConfigurationError(f"--app {pair!r}: expected APP.OPTION=VALUE, e.g. assistant.kb=./kb-index")
        options[key.strip()] = value.strip()
    return options


def app_pages(context: ServerContext) -> list[dict[str, Any]]:
    return [{"name": p.name, "title": p.title, "module": p.module} for p in context.pages]
