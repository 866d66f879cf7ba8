"""`hanlin tune` on the command line: its options reach the tuning settings under the names every command uses."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import pytest


@pytest.mark.parametrize("flag", ["--out", "-o", "--output-dir"])
def test_out_names_the_output_folder_as_in_every_command(flag: str, tmp_path: Path, monkeypatch) -> None:
    """`hanlin eval` and `hanlin kb build` write to --out; tune takes the same name, and keeps --output-dir (its
    config key) as an alias so existing scripts still run."""
    import hanlin.loading
    from typer.testing import CliRunner

    from hanlin.cli import app
    from hanlin.plugin_manager import plugins

    seen: dict = {}

    def fake_tune(config, *, resume, progress, **settings):
        seen.update(settings)
        return SimpleNamespace(summary="done")

    monkeypatch.setattr(hanlin.loading, "tune", fake_tune)
    plugins().add_commands(app)
    ran = CliRunner().invoke(app, ["tune", "-m", "smollm2", "-d", "x.jsonl", flag, str(tmp_path / "o")])
    assert ran.exit_code == 0, ran.output
    assert seen["output_dir"] == str(tmp_path / "o")
