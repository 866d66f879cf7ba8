"""Turn names into objects: models, tools and protocols, all through the plugin manager."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from hanlin.chat_model import ChatModel
from hanlin.errors import ConfigurationError, ModelError
from hanlin.plugin_manager import plugins
from hanlin.specs import ModelSpec, ToolSpec
from hanlin.tools import Tool, as_tools


def resolve_model(name: str | Path) -> ModelSpec:
    """A registered model name or alias, or a local ``.gguf`` file / HF folder path."""
    text = str(name)
    registered = plugins().models()
    if text in registered:
        return registered[text]
    for spec in registered.values():
        if text in spec.aliases:
            return spec
    path = Path(text).expanduser()
    looks_like_path = path.suffix == ".gguf" or "/" in text or text.startswith(".")
    if looks_like_path:
        if path.is_file() and path.suffix == ".gguf":
            return ModelSpec(name=path.stem, format="gguf", locate=lambda: path, installed=path.is_file,
                             description=f"local GGUF file {path}", size_bytes=path.stat().st_size)
        if path.is_dir() and (path / "config.json").is_file():
            return ModelSpec(name=path.name, format="hf", locate=lambda: path, installed=path.is_dir,
                             description=f"local HF folder {path}")
        if path.is_dir() and (gguf := sorted(path.glob("*.gguf"))):
            return resolve_model(gguf[0])
        if not path.exists():
            raise ModelError(f"model path {str(path)!r} does not exist; pass a .gguf file or an HF folder with config.json")
        raise ModelError(
            f"{str(path)!r} is neither a .gguf file nor an HF model folder (no config.json found); "
            "point --model at one of those"
        )
    # Let the plugin manager produce the "unknown model, did you mean" message.
    return plugins().get("models", text)


def load_model(name: str | Path | ChatModel, runtime: str | None = None, **config: Any) -> ChatModel:
    """Load a model by name or path on the best runtime available here (or the one named).

    Raises ModelError naming the extra or package to install when nothing here can serve it.
    """
    if isinstance(name, ChatModel):
        return name
    pm = plugins()
    if runtime is not None and pm.get("runtimes", runtime).accepts_any_name:
        remote = ModelSpec(name=str(name), format="remote", locate=lambda: Path(str(name)), installed=lambda: True)
        return pm.get("runtimes", runtime).load(remote, None, **config)
    spec = resolve_model(name)
    if runtime is not None:
        chosen = pm.get("runtimes", runtime)
        if spec.format not in chosen.formats:
            raise ConfigurationError(
                f"runtime '{runtime}' serves {sorted(chosen.formats)} models, but '{spec.name}' is {spec.format}; "
                "pick another --runtime or leave it out to choose automatically"
            )
        problem = chosen.available()
        if problem:
            raise ModelError(f"runtime '{runtime}' cannot run here: {problem}")
    else:
        candidates = sorted(
            (rt for rt in pm.runtimes().values() if spec.format in rt.formats), key=lambda rt: (rt.priority, rt.name)
        )
        problems = []
        chosen = None
        for rt in candidates:
            problem = rt.available()
            if problem is None:
                chosen = rt
                break
            problems.append(f"{rt.name}: {problem}")
        if chosen is None:
            detail = "; ".join(problems) if problems else "no runtime plugin for this format is registered"
            raise ModelError(
                f"no runtime here can serve the {spec.format} model '{spec.name}' ({detail}). "
                "Install one, e.g. pip install 'hanlin[cpu]' for GGUF models"
            )
    path = spec.locate()
    return chosen.load(spec, path, **config)


def load_tool(name: str, **config: Any) -> Tool:
    """One registered tool by name, built with ``config`` if it is configurable."""
    tools = load_tools([name], **config)
    if len(tools) != 1:
        raise ConfigurationError(
            f"tool '{name}' provides {len(tools)} tools ({', '.join(t.name for t in tools)}); use load_tools"
        )
    return tools[0]


def load_tools(names: list[str], **config: Any) -> list[Tool]:
    """Several registered tools by name; configurable ones get ``config``."""
    out: list[Tool] = []
    for name in names:
        entry = plugins().get("tools", name)
        if isinstance(entry, ToolSpec):
            out.extend(entry.build(**config))
        else:
            if config:
                raise ConfigurationError(f"tool '{name}' takes no configuration, got {sorted(config)}")
            out.extend(as_tools(entry))
    return out


def load_protocol(name: str, **options: Any) -> Any:
    """An agent protocol instance by name ("react", "rewoo", "tools", or a plugin's)."""
    cls = plugins().get("protocols", name)
    return cls(**options)


def tune(config: Any = None, *, resume: bool = False, progress: Any = None, **settings: Any) -> Any:
    """Fine-tune a model with the finetuner plugin named by the config's ``method`` (default ``lora``).

    ``config`` is a YAML path, a dict, or None (then ``settings`` say everything: model, data, ...); settings
    override the file. Returns the finetuner's result (hanlin's own: a TuneResult with losses and exports).
    """
    method = settings.get("method")
    if method is None and config is not None:
        method = _config_method(config)
    finetuner = plugins().get("finetuners", method or "lora").factory()
    return finetuner.tune(config, resume=resume, progress=progress, **settings)


def _config_method(config: Any) -> str | None:
    if isinstance(config, dict):
        return config.get("method")
    return read_yaml_settings(config).get("method")


def read_yaml_settings(path: str | Path) -> dict[str, Any]:
    """A YAML file holding a mapping of settings (empty file: no settings), with errors that name the file."""
    path = Path(path)
    if not path.is_file():
        raise ConfigurationError(f"config file {str(path)!r} does not exist")
    import yaml

    try:
        loaded = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as exc:
        raise ConfigurationError(f"{path} is not valid YAML: {exc}") from None
    if loaded is not None and not isinstance(loaded, dict):
        raise ConfigurationError(f"{path} must hold a mapping of settings, got {type(loaded).__name__}")
    return dict(loaded or {})
