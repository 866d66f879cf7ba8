"""`hanlin quantize` without a model run: calibration files are read or refused with file:line, an unknown type lists
the known ones, a bad request fails before anything loads, and the report's verdict is what --strict acts on."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from hanlin.errors import ConfigurationError
from hanlin.plugins.quantizers.base import LayerNote, QualityCheck, QuantizeReport
from hanlin.plugins.quantizers.calibration import held_out_text, load_calibration


def _cli(*args: str):
    from typer.testing import CliRunner

    from hanlin.cli import app
    from hanlin.plugin_manager import plugins

    plugins().add_commands(app)
    return CliRunner().invoke(app, list(args))


# ---- calibration files ----------------------------------------------------------------------------------------
def test_jsonl_text_messages_and_prompt_rows_are_read(tmp_path: Path) -> None:
    calib = tmp_path / "c.jsonl"
    rows = [{"text": "plain text"}, {"messages": [{"role": "system", "content": ""},
                                                  {"role": "user", "content": "Hi"},
                                                  {"role": "assistant", "content": [{"type": "text", "text": "Yo"}]}]},
            {"prompt": "Q: 2+2? ", "completion": "4"}]
    calib.write_text("\n".join(json.dumps(r) for r in rows[:2]) + "\n\n" + json.dumps(rows[2]) + "\n")
    samples = load_calibration(calib)
    assert [s.text for s in samples] == ["plain text", "Hi\n\nYo", "Q: 2+2? 4"]
    assert [s.line for s in samples] == [1, 2, 4]
    assert samples[1].messages == ({"role": "system", "content": ""}, {"role": "user", "content": "Hi"},
                                   {"role": "assistant", "content": "Yo"})
    assert len(load_calibration(calib, limit=2)) == 2


def test_txt_samples_are_paragraphs(tmp_path: Path) -> None:
    calib = tmp_path / "c.txt"
    calib.write_text("first line\nstill first\n\n\nsecond\n")
    assert [(s.text, s.line) for s in load_calibration(calib)] == [("first line\nstill first", 1), ("second", 5)]


@pytest.mark.parametrize(("name", "content", "message"), [
    ("empty.jsonl", "  \n\n", r"empty.jsonl is empty; give it text"),
    ("bad.jsonl", '{"text": "ok"}\n{"text": "unterminated\n', r"bad.jsonl:2: not valid JSON \(Unterminated string"),
    ("keys.jsonl", '{"text": "ok"}\n{"question": "q", "answer": "a"}\n',
     r"keys.jsonl:2: no 'text', 'messages' or 'prompt' field \(found keys: answer, question\)"),
    ("list.jsonl", '["a", "b"]\n', r"list.jsonl:1: expected a JSON object with 'text' or 'messages', got list"),
    ("blank.jsonl", '{"text": "   "}\n', r"blank.jsonl:1: 'text' must be a non-empty string"),
    ("roles.jsonl", '{"messages": [{"content": "no role"}]}\n', r"roles.jsonl:1: messages\[0\] must be an object"),
    ("silent.jsonl", '{"messages": [{"role": "user", "content": ""}]}\n', r"silent.jsonl:1: every message's content"),
    ("data.csv", "text\nhello\n", r"suffix '.csv'; use .jsonl"),
])
def test_bad_calibration_files_name_file_line_and_the_fix(tmp_path: Path, name: str, content: str,
                                                          message: str) -> None:
    (tmp_path / name).write_text(content)
    with pytest.raises(ConfigurationError, match=message):
        load_calibration(tmp_path / name)


def test_a_hub_dataset_name_is_refused_as_not_local(tmp_path: Path) -> None:
    with pytest.raises(ConfigurationError, match="'pileval' is not a local file: hanlin never downloads"):
        load_calibration("pileval")
    with pytest.raises(ConfigurationError, match=r"missing\.jsonl does not exist; pass a local"):
        load_calibration(tmp_path / "missing.jsonl")
    with pytest.raises(ConfigurationError, match="is a folder"):
        load_calibration(tmp_path)


def test_held_out_text_ships_with_the_machine() -> None:
    label, text = held_out_text(2000)
    assert label.startswith("held-out: pydantic ") and len(text) == 2000


# ---- the command ----------------------------------------------------------------------------------------------
def test_unknown_type_lists_the_registered_ones(tmp_path: Path) -> None:
    ran = _cli("quantize", "smollm2", "--to", "q4_k", "--out", str(tmp_path / "x.gguf"))
    assert ran.exit_code == 2
    assert "unknown quantizer 'q4_k'" in ran.output and "Did you mean 'q4_k_m'?" in ran.output
    for name in ("q4_k_m", "q5_k_m", "q6_k", "q8_0", "q4_0"):
        assert name in ran.output.split("Known quantizers:")[1]
    assert not (tmp_path / "x.gguf").exists()


def test_bad_inputs_fail_with_exit_2_before_any_model_loads(tmp_path: Path) -> None:
    missing = _cli("quantize", str(tmp_path / "nope.gguf"), "--to", "q8_0", "--out", str(tmp_path / "o.gguf"))
    assert missing.exit_code == 2 and "does not exist" in missing.output
    fake = tmp_path / "fake.gguf"
    fake.write_bytes(b"not a gguf at all")
    not_gguf = _cli("quantize", str(fake), "--to", "q8_0", "--out", str(tmp_path / "o.gguf"))
    assert not_gguf.exit_code == 2 and "is not a GGUF file or an HF folder" in not_gguf.output
    same = _cli("quantize", str(fake), "--to", "q8_0", "--out", str(fake))
    assert same.exit_code == 2 and "is the source model itself" in same.output
    suffix = _cli("quantize", str(fake), "--to", "q8_0", "--out", str(tmp_path / "o.bin"))
    assert suffix.exit_code == 2 and "name it *.gguf or pass a folder" in suffix.output
    dat = tmp_path / "m.dat"
    dat.write_bytes(b"\0")
    imatrix = _cli("quantize", str(fake), "--to", "q8_0", "--out", str(tmp_path / "o.gguf"), "--imatrix", str(dat))
    assert imatrix.exit_code == 2 and "not a GGUF file" in imatrix.output  # the source is checked first
    assert not list(tmp_path.glob("*o.gguf*"))


def test_a_tune_output_folder_quantizes_its_merged_folder(tmp_path: Path) -> None:
    from hanlin.plugins.quantizers.cli import source_path

    (tmp_path / "merged").mkdir()
    (tmp_path / "merged" / "config.json").write_text("{}")
    (tmp_path / "model.gguf").write_bytes(b"GGUF")
    assert source_path(tmp_path) == tmp_path / "merged"
    (tmp_path / "merged" / "config.json").unlink()
    assert source_path(tmp_path) == tmp_path / "model.gguf"


def test_gguf_options_are_checked(tmp_path: Path) -> None:
    from hanlin.plugins.quantizers.gguf import GGUFQuantizer

    with pytest.raises(ConfigurationError, match="no option 'group_size'; its options are imatrix"):
        GGUFQuantizer("q8_0").quantize(tmp_path / "a.gguf", tmp_path / "b.gguf", calib=None,
                                       options={"group_size": 128})


def test_tune_quant_needs_a_gguf_export_and_a_gguf_type(tmp_path: Path) -> None:
    from hanlin.plugins.finetuners.config import load_config
    from hanlin.plugins.quantizers.cli import gguf_method

    with pytest.raises(ConfigurationError, match="gguf_quant 'q4_k_m' quantizes the GGUF export: add gguf"):
        load_config(None, model="smollm2", data=["d.jsonl"], export=["merged"], gguf_quant="q4_k_m")
    assert load_config(None, model="m", data=["d"], export=["gguf"], gguf_quant="q4_k_m").gguf_quant == "q4_k_m"
    with pytest.raises(ConfigurationError, match="unknown quantizer 'q3'"):
        gguf_method("q3")


# ---- the report -----------------------------------------------------------------------------------------------
def test_report_is_flagged_by_a_failed_check_or_a_layer_warning() -> None:
    ok = QualityCheck(metric="perplexity", text="t", tokens=10, source=10.0, quantized=10.4, max_increase=0.05)
    bad = ok.model_copy(update={"quantized": 10.6})
    nan = ok.model_copy(update={"quantized": float("nan")})
    assert ok.passed and not bad.passed and not nan.passed
    assert "+6.0%" in bad.line() and "DEGRADED beyond +5%" in bad.line()
    report = QuantizeReport(method="q8_0", source="a", out="b", size_bytes_in=100, size_bytes_out=25, seconds=1.0,
                            checks=[ok])
    assert not report.flagged and report.size_ratio == 0.25
    assert report.model_copy(update={"checks": [bad]}).flagged
    noted = report.model_copy(update={"layers": [LayerNote(layer="blk.0.attn_q.weight", message="fell back")]})
    assert not noted.flagged  # an info note is not a problem
    warned = report.model_copy(update={"layers": [LayerNote(layer="blk.1.ffn_down.weight", level="warning",
                                                            message="NaN")]})
    assert warned.flagged and "blk.1.ffn_down.weight: NaN" in warned.summary()
    assert QuantizeReport.model_validate_json(warned.model_dump_json()) == warned


class _CopyMethod:
    """A third party's method as a plugin registers it: it writes ``out`` and reports a failed check."""

    def quantize(self, source: Path, out: Path, *, calib: Path | None, options: dict) -> QuantizeReport:
        out.write_bytes(source.read_bytes())
        check = QualityCheck(metric="nll", text=str(calib), tokens=3, source=1.0, quantized=2.0, max_increase=0.1)
        return QuantizeReport(method="copy-w4", source=str(source), out=str(out), size_bytes_in=4, size_bytes_out=4,
                              seconds=0.0, calibration=str(calib), checks=[check], details={"options": options})


class _CopyPlugin:
    from hanlin import ComponentSpec, hookimpl

    @hookimpl
    def register_quantizers(self, register):  # noqa: ANN001
        register(self.ComponentSpec(name="copy-w4", factory=_CopyMethod, description="test method"))


def test_a_registered_method_gets_the_command_json_and_strict(tmp_path: Path) -> None:
    from hanlin.plugin_manager import plugins
    from hanlin.plugins.quantizers.cli import gguf_method

    (tmp_path / "m.gguf").write_bytes(b"GGUF")
    calib = tmp_path / "c.txt"
    calib.write_text("some text")
    with plugins().registered(_CopyPlugin(), "copy-plugin"):
        args = ["quantize", str(tmp_path / "m.gguf"), "--to", "copy-w4", "--out", str(tmp_path / "o"), "--calib",
                str(calib), "--threads", "3"]
        ran = _cli(*args, "--json")
        assert ran.exit_code == 0, ran.output
        report = json.loads(ran.output)
        assert report["details"]["options"] == {"check": True, "threads": 3} and report["calibration"] == str(calib)
        strict = _cli(*args, "--strict")
        assert strict.exit_code == 1 and "DEGRADED beyond +10%" in strict.output
        with pytest.raises(ConfigurationError, match="'copy-w4' does not write GGUF; the GGUF export quantizes"):
            gguf_method("copy-w4")
    assert (tmp_path / "o").read_bytes() == b"GGUF"


def test_bench_refuses_unknown_types_before_loading() -> None:
    ran = _cli("bench", "quantize", "--types", "q8_0,q3_k")
    assert ran.exit_code == 2 and "q3_k not GGUF types to compare with f16; pick from q4_k_m" in ran.output
    assert _cli("bench", "quantize", "--types", "f16").exit_code == 2  # f16 is the baseline, not a row
