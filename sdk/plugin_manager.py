"""The plugin manager: a typed facade over ``pluggy``.

Call sites never touch ``pm.hook``: they ask ``plugins().models()`` or
``plugins().runtime("cpu")`` and get typed records back. Built-ins come from
an explicit list (a plain checkout works); third parties come from the
``hanlin`` entry-point group. A plugin that fails to import or to register is
recorded with its error and skipped, so one broken package never takes the
program down.
"""

from __future__ import annotations

import contextlib
import difflib
import importlib
import importlib.metadata
import os
import threading
import traceback
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any, Literal

import pluggy

from hanlin import hookspecs
from hanlin.errors import ConfigurationError, PluginError
from hanlin.specs import ComponentSpec, ModelSpec, RuntimeSpec, ToolSpec

ENTRY_POINT_GROUP = "hanlin"

# Built-in plugins, by module. The sdk names them as strings and imports them
# through this manager only, so the core never imports plugins directly.
BUILTIN_PLUGINS: tuple[str, ...] = (
    "hanlin.plugins.protocols.react",
    "hanlin.plugins.protocols.rewoo",
    "hanlin.plugins.protocols.native",
    "hanlin.plugins.protocols.code",
    "hanlin.plugins.tools.calculator",
    "hanlin.plugins.tools.python",
    "hanlin.plugins.tools.web_search",
    "hanlin.plugins.tools.web_fetch",
    "hanlin.plugins.tools.files",
    "hanlin.plugins.tools.knowledge_base",
    "hanlin.plugins.tools.kb_cli",
    "hanlin.plugins.integrations.mcp",
    "hanlin.plugins.models.catalog",
    "hanlin.plugins.evaluators.plugin",
    "hanlin.plugins.finetuners.plugin",
    "hanlin.plugins.quantizers.plugin",
    "hanlin.plugins.data.plugin",
    "hanlin.runtimes.cpu.plugin",
    "hanlin.runtimes.transformers.plugin",
    "hanlin.runtimes.gpu.plugin",
    "hanlin.runtimes.remote.plugin",
    "hanlin.plugins.apps.research.plugin",
    "hanlin.plugins.apps.assistant.plugin",
)

Source = Literal["builtin", "entry_point", "registered"]
Status = Literal["loaded", "failed", "disabled"]


@dataclass(slots=True)
class PluginInfo:
    """What ``hanlin plugins`` shows for one plugin."""

    name: str
    source: Source
    status: Status = "loaded"
    kinds: list[str] = field(default_factory=list)
    error: str | None = None

    def as_dict(self) -> dict[str, Any]:
        return {"name": self.name, "kinds": self.kinds, "source": self.source, "status": self.status, "error": self.error}


def _env_names(var: str) -> set[str] | None:
    raw = os.environ.get(var)
    if raw is None:
        return None
    return {part.strip() for part in raw.split(",") if part.strip()}


def _short_error(exc: BaseException) -> str:
    last = traceback.extract_tb(exc.__traceback__)[-1:] if exc.__traceback__ else []
    where = f" (at {last[0].filename}:{last[0].lineno})" if last else ""
    return f"{type(exc).__name__}: {exc}{where}"


class PluginManager:
    """Loads plugins once, collects their registrations per kind, answers typed queries."""

    def __init__(self, *, builtins: tuple[str, ...] = BUILTIN_PLUGINS, entry_points: bool = True) -> None:
        self._pm = pluggy.PluginManager(hookspecs.PROJECT)
        self._pm.add_hookspecs(hookspecs)
        self._builtins = builtins
        self._use_entry_points = entry_points
        self._infos: dict[str, PluginInfo] = {}
        self._registry: dict[str, dict[str, tuple[Any, str]]] | None = None
        self._loaded = False
        self._lock = threading.RLock()
        self._extended_clis: set[int] = set()
        self._command_errors: dict[str, list[str]] = {}

    # ---- loading -----------------------------------------------------------------------
    def load(self) -> None:
        with self._lock:
            if self._loaded:
                return
            self._loaded = True
            disabled = _env_names("HANLIN_DISABLE_PLUGINS") or set()
            for module_name in self._builtins:
                if module_name in disabled:
                    self._infos[module_name] = PluginInfo(module_name, "builtin", "disabled")
                    continue
                self._load_one(module_name, "builtin", lambda m=module_name: importlib.import_module(m))
            if self._use_entry_points:
                allowed = _env_names("HANLIN_PLUGINS")
                for ep in importlib.metadata.entry_points(group=ENTRY_POINT_GROUP):
                    if ep.name in disabled or (allowed is not None and ep.name not in allowed):
                        self._infos[ep.name] = PluginInfo(ep.name, "entry_point", "disabled")
                        continue
                    self._load_one(ep.name, "entry_point", ep.load)

    def _load_one(self, name: str, source: Source, importer: Callable[[], Any]) -> None:
        try:
            plugin = importer()
        except BaseException as exc:  # noqa: BLE001 - a plugin must never take the program down
            if isinstance(exc, (KeyboardInterrupt, SystemExit)):
                raise
            self._infos[name] = PluginInfo(name, source, "failed", error=f"import failed: {_short_error(exc)}")
            return
        self._add(plugin, name, source)

    def _add(self, plugin: Any, name: str, source: Source) -> None:
        info = PluginInfo(name, source)
        unknown = [
            attr
            for attr in dir(plugin)
            if attr.startswith("register_")
            and self._pm.parse_hookimpl_opts(plugin, attr) is not None
            and not hasattr(self._pm.hook, attr)
        ]
        if unknown:
            hints = [
                f"'{u}'" + (f" (did you mean '{m[0]}'?)" if (m := difflib.get_close_matches(u, self._hook_names(), 1)) else "")
                for u in unknown
            ]
            info.status, info.error = "failed", f"implements unknown hook(s) {', '.join(hints)}"
            self._infos[name] = info
            return
        try:
            self._pm.register(plugin, name=name)
        except Exception as exc:
            info.status, info.error = "failed", f"could not register: {_short_error(exc)}"
            self._infos[name] = info
            return
        info.kinds = [
            kind for kind in hookspecs.KINDS if any(i.plugin is plugin for i in getattr(self._pm.hook, f"register_{kind}").get_hookimpls())
        ]
        for extension in ("commands", "routes"):
            if any(i.plugin is plugin for i in getattr(self._pm.hook, f"register_{extension}").get_hookimpls()):
                info.kinds.append(extension)
        self._infos[name] = info
        self._registry = None

    def _hook_names(self) -> list[str]:
        return [f"register_{k}" for k in hookspecs.KINDS] + list(hookspecs.EXTENSION_HOOKS)

    def add_commands(self, cli: Any) -> None:
        """Let plugins add CLI sub-commands; a plugin whose hook raises is recorded as failed, the CLI still starts."""
        self.load()
        if id(cli) in self._extended_clis:  # typer would list a twice-added group twice
            return
        self._extended_clis.add(id(cli))
        for impl in self._pm.hook.register_commands.get_hookimpls():
            plugin_name = self._pm.get_name(impl.plugin) or "?"
            try:
                impl.function(cli=cli)
            except Exception as exc:
                message = f"register_commands raised {_short_error(exc)}"
                self._command_errors.setdefault(plugin_name, []).append(message)
                self._record_error(plugin_name, message)

    def add_routes(self, app: Any) -> None:
        """Let plugins add server routes. A plugin whose hook fails is recorded as failed and the server starts without
        it, except for a ConfigurationError (the user's options for that app are wrong), which stops the start."""
        self.load()
        for impl in self._pm.hook.register_routes.get_hookimpls():
            plugin_name = self._pm.get_name(impl.plugin) or "?"
            try:
                impl.function(app=app)
            except ConfigurationError:
                raise  # the user's options for that app are wrong: say so rather than serve without it
            except Exception as exc:
                message = f"register_routes raised {_short_error(exc)}"
                self._command_errors.setdefault(plugin_name, []).append(message)
                self._record_error(plugin_name, message)

    # ---- temporary registration (tests, apps) ----------------------------------------
    def register(self, plugin: Any, name: str | None = None) -> str:
        """Add a plugin object at run time; returns its name. Its errors are recorded like any other."""
        self.load()
        with self._lock:
            name = name or getattr(plugin, "__name__", None) or f"plugin-{id(plugin):x}"
            self._add(plugin, name, "registered")
            return name

    def unregister(self, name: str) -> None:
        with self._lock:
            plugin = self._pm.get_plugin(name)
            if plugin is not None:
                self._pm.unregister(plugin)
            self._infos.pop(name, None)
            self._registry = None

    @contextlib.contextmanager
    def registered(self, plugin: Any, name: str | None = None) -> Iterator[str]:
        """``with plugins().registered(obj):`` — the plugin exists only inside the block."""
        name = self.register(plugin, name)
        try:
            yield name
        finally:
            self.unregister(name)

    # ---- collecting registrations ------------------------------------------------------
    def _collect(self) -> dict[str, dict[str, tuple[Any, str]]]:
        self.load()
        with self._lock:
            if self._registry is not None:
                return self._registry
            registry: dict[str, dict[str, tuple[Any, str]]] = {kind: {} for kind in hookspecs.KINDS}
            # Registration errors are found again by this rebuild: start the plugins that loaded from a clean slate
            # (their CLI errors are kept: commands are added once), so no message is listed twice.
            for name, info in self._infos.items():
                if info.status != "disabled" and self._pm.get_plugin(name) is not None:
                    info.status, info.error = "loaded", None
                    for message in self._command_errors.get(name, []):
                        self._record_error(name, message)
            for kind in hookspecs.KINDS:
                hook = getattr(self._pm.hook, f"register_{kind}")
                # get_hookimpls() lists in registration order: built-ins first, so they win name clashes.
                for impl in hook.get_hookimpls():
                    plugin_name = self._pm.get_name(impl.plugin) or "?"
                    register = self._registrar(kind, registry[kind], plugin_name)
                    try:
                        impl.function(register=register)
                    except Exception as exc:
                        self._record_error(plugin_name, f"register_{kind} raised {_short_error(exc)}")
            self._registry = registry
            return registry

    def _record_error(self, plugin_name: str, message: str) -> None:
        info = self._infos.get(plugin_name)
        if info is None:
            return
        info.status = "failed"
        if not info.error:
            info.error = message
        elif message not in info.error.split("; "):
            info.error = f"{info.error}; {message}"

    def _registrar(self, kind: str, table: dict[str, tuple[Any, str]], plugin_name: str) -> Callable[..., None]:
        def register(item: Any, *extra: Any, **options: Any) -> None:
            try:
                entries = _normalise(kind, item, *extra, **options)
            except PluginError as exc:
                self._record_error(plugin_name, str(exc))
                return
            for entry_name, entry in entries:
                if entry_name in table and table[entry_name][1] != plugin_name:
                    owner = table[entry_name][1]
                    self._record_error(
                        plugin_name, f"{kind} '{entry_name}' is already registered by plugin '{owner}'; kept that one"
                    )
                    continue
                table[entry_name] = (entry, plugin_name)

        return register

    # ---- typed queries -------------------------------------------------------------------
    def infos(self) -> list[PluginInfo]:
        self._collect()
        return list(self._infos.values())

    def _table(self, kind: str) -> dict[str, Any]:
        return {name: item for name, (item, _) in self._collect()[kind].items()}

    def owner(self, kind: str, name: str) -> str | None:
        entry = self._collect()[kind].get(name)
        return entry[1] if entry else None

    def models(self) -> dict[str, ModelSpec]:
        return self._table("models")

    def runtimes(self) -> dict[str, RuntimeSpec]:
        return self._table("runtimes")

    def tools(self) -> dict[str, Any]:
        """Tool name -> Tool or ToolSpec."""
        return self._table("tools")

    def protocols(self) -> dict[str, type]:
        return self._table("protocols")

    def finetuners(self) -> dict[str, ComponentSpec]:
        return self._table("finetuners")

    def evaluators(self) -> dict[str, ComponentSpec]:
        return self._table("evaluators")

    def data_blocks(self) -> dict[str, ComponentSpec]:
        """Data block name -> spec (readers, cleaners, filters, dedup, writers, packers)."""
        return self._table("data")

    def quantizers(self) -> dict[str, ComponentSpec]:
        return self._table("quantizers")

    def get(self, kind: str, name: str) -> Any:
        """One registration by name, or a ConfigurationError listing what exists (and failed plugins)."""
        table = self._table(kind)
        if name in table:
            return table[name]
        if kind == "models":
            for spec in table.values():
                if name in spec.aliases:
                    return spec
        known = sorted(table)
        close = difflib.get_close_matches(name, known, 1)
        hint = f" Did you mean '{close[0]}'?" if close else ""
        failed = [i.name for i in self._infos.values() if i.status == "failed"]
        broken = f" Plugins that failed to load: {', '.join(failed)} (see `hanlin plugins`)." if failed else ""
        singular = {"data": "data block"}.get(kind, kind[:-1])
        raise ConfigurationError(
            f"unknown {singular} '{name}'.{hint} Known {kind}: {', '.join(known) or '(none)'}.{broken}"
        )


def _normalise(kind: str, item: Any, *extra: Any, **options: Any) -> list[tuple[str, Any]]:
    """Check one registration's type and return (name, entry) pairs."""
    from hanlin.tools import Tool, Toolkit  # local: tools imports pydantic machinery we need anyway

    if extra or options:
        raise PluginError(f"register() for {kind} takes one object, got extra arguments {extra!r} {options!r}")
    expected: dict[str, tuple[type, ...]] = {
        "models": (ModelSpec,),
        "runtimes": (RuntimeSpec,),
        "finetuners": (ComponentSpec,),
        "evaluators": (ComponentSpec,),
        "data": (ComponentSpec,),
        "quantizers": (ComponentSpec,),
    }
    if kind in expected:
        if not isinstance(item, expected[kind]):
            names = " or ".join(t.__name__ for t in expected[kind])
            raise PluginError(f"register_{kind} must register {names} objects, got {type(item).__name__}: {item!r}")
        return [(item.name, item)]
    if kind == "tools":
        if isinstance(item, (Tool, ToolSpec)):
            return [(item.name, item)]
        if isinstance(item, Toolkit):
            return [(t.name, t) for t in item.tools()]
        raise PluginError(f"register_tools must register Tool, Toolkit or ToolSpec objects, got {type(item).__name__}")
    if kind == "protocols":
        name = getattr(item, "name", None)
        if not isinstance(item, type) or not isinstance(name, str):
            raise PluginError(f"register_protocols must register a protocol class with a 'name', got {item!r}")
        return [(name, item)]
    raise PluginError(f"unknown plugin kind {kind!r}")


_manager: PluginManager | None = None
_manager_lock = threading.Lock()


def plugins() -> PluginManager:
    """The process-wide plugin manager, created (and plugins loaded) on first use."""
    global _manager
    with _manager_lock:
        if _manager is None:
            _manager = PluginManager()
        return _manager


def reset_plugins() -> None:
    """Forget the loaded plugins; the next ``plugins()`` call loads them again (used after installs, in tests)."""
    global _manager
    with _manager_lock:
        _manager = None
