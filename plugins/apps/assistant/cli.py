"""``hanlin assistant ask | tune | serve``."""

from __future__ import annotations

from pathlib import Path
from typing import Any

DEFAULT_MODEL = "qwen2.5-coder-0.5b-instruct"


def add_assistant_command(cli: Any) -> None:
    import typer

    app = typer.Typer(help="A knowledge assistant for group chats: answers questions its docs cover, with sources, "
                           "and stays silent otherwise.", no_args_is_help=True)

    def fail(message: str) -> None:
        typer.echo(f"error: {message}", err=True)
        raise typer.Exit(2)

    def build(kb: Path, model: str, rewrite: bool, banned: list[str], rate: int, per_s: float) -> Any:
        from hanlin import load_model
        from hanlin.plugins.apps.assistant.groups import Groups
        from hanlin.plugins.apps.assistant.pipeline import Assistant

        return Assistant(load_model(model), kb, rewrite=rewrite, banned=banned, groups=Groups(rate=rate, per_s=per_s))

    @app.command()
    def ask(message: str = typer.Argument(..., help="The chat message."),
            kb: Path = typer.Option(..., "--kb", help="Knowledge-base index folder (hanlin kb build DOCS --out DIR)."),
            model: str = typer.Option(DEFAULT_MODEL, "--model", "-m"),
            group: str = typer.Option("default", help="Group id."),
            sender: str = typer.Option("user", help="Sender."),
            rewrite: bool = typer.Option(False, help="Resolve pronouns from the group history first."),
            banned: list[str] = typer.Option([], "--banned", help="A topic the answer must not touch (repeatable)."),
            as_json: bool = typer.Option(False, "--json", help="Print the whole decision as JSON.")) -> None:
        """Decide on one message: print the answer, or '(silent)' with the stage and reason."""
        from hanlin.errors import HanlinError
        from hanlin.plugins.apps.assistant.records import ChatMessage

        try:
            decision = build(kb, model, rewrite, banned, 1000, 60.0).handle(
                ChatMessage(group=group, sender=sender, text=message))
        except HanlinError as exc:
            fail(str(exc))
            return
        if as_json:
            typer.echo(decision.model_dump_json(indent=2))
            return
        for record in decision.records:
            typer.echo(f"  {record.stage}: {'pass' if record.passed else 'stop'} - {record.reason}", err=True)
        if decision.answered:
            typer.echo(decision.answer)
            for p in decision.passages:
                if p.number in decision.citations:
                    typer.echo(f"[{p.number}] {p.source}")
        else:
            typer.echo(f"(silent) {decision.stage}: {decision.reason}")

    @app.command()
    def tune(kb: Path = typer.Option(..., "--kb", help="Knowledge-base index folder."),
             good: Path = typer.Option(..., help="JSONL of messages that should be answered: {\"text\": ...}."),
             bad: Path = typer.Option(..., help="JSONL of messages that should get silence."),
             model: str = typer.Option(DEFAULT_MODEL, "--model", "-m")) -> None:
        """Tune the question, retrieval, coverage and relevance thresholds for F1; write them to KB/assistant.json."""
        from hanlin import load_model
        from hanlin.errors import HanlinError
        from hanlin.plugins.apps.assistant.pipeline import open_kb
        from hanlin.plugins.apps.assistant.settings import save_thresholds
        from hanlin.plugins.apps.assistant.tune import read_messages, report, score_rows, search, thresholds_of

        try:
            goods, bads = read_messages(good, True), read_messages(bad, False)
            toolkit = open_kb(kb)
            rows = score_rows(load_model(model), toolkit, goods, bads)
            tuned = search(rows)
            path = save_thresholds(kb, thresholds_of(tuned), report(tuned, rows))
        except HanlinError as exc:
            fail(str(exc))
            return
        typer.echo(f"question >= {tuned.question:g}, retrieval >= {tuned.written:.4f}, coverage >= "
                   f"{tuned.coverage:g}, relevance >= {tuned.relevance:g}: precision {tuned.precision:.3f} "
                   f"recall {tuned.recall:.3f} F1 {tuned.f1:.3f} on {len(rows)} messages")
        typer.echo(f"wrote {path}")

    @app.command()
    def serve(kb: Path = typer.Option(..., "--kb", help="Knowledge-base index folder."),
              model: str = typer.Option(DEFAULT_MODEL, "--model", "-m"),
              host: str = typer.Option("127.0.0.1"), port: int = typer.Option(8000),
              api_key: str | None = typer.Option(None, envvar="HANLIN_API_KEY", help="Require this bearer key."),
              rate: int = typer.Option(5, help="Messages handled per group per window."),
              per_s: float = typer.Option(60.0, help="The rate window in seconds."),
              rewrite: bool = typer.Option(False), banned: list[str] = typer.Option([], "--banned")) -> None:
        """Serve the assistant: an OpenAI-compatible model (hanlin-assistant) and POST /v1/assistant/webhook."""
        import uvicorn

        from hanlin.errors import HanlinError
        from hanlin.plugins.apps.assistant.server import create_assistant_app

        try:
            assistant = build(kb, model, rewrite, banned, rate, per_s)
        except HanlinError as exc:
            fail(str(exc))
            return
        uvicorn.run(create_assistant_app(assistant, api_key=api_key), host=host, port=port)

    cli.add_typer(app, name="assistant")


