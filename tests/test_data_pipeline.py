"""Whole pipelines on real text (the stdlib's module docstrings): YAML to report.json, dedup determinism across
shard layouts and worker counts, resume after a killed run (a real killed process), packed shards that decode
back to the documents, conversion to the finetuners' records and back, and one run on a local Ray."""

from __future__ import annotations

import ast
import functools
import json
import os
import random
import subprocess
import sys
from pathlib import Path

import pytest

from hanlin.errors import ConfigurationError
from hanlin.plugins.data.convert import convert
from hanlin.plugins.data.document import DataError
from hanlin.plugins.data.packed import PackedDataset
from hanlin.plugins.data.pipeline import Pipeline

STDLIB = Path(os.__file__).parent
EOS = "<|endoftext|>"


def stdlib_docstrings(n: int) -> list[str]:
    """Module docstrings of the stdlib (sorted by file name), long enough to shingle: text nobody here wrote."""
    return _docstrings()[:n]


@functools.lru_cache(maxsize=1)
def _docstrings(n: int = 30) -> list[str]:
    out: list[str] = []
    for path in sorted(STDLIB.glob("*.py")):
        try:
            doc = ast.get_docstring(ast.parse(path.read_text(encoding="utf-8")))
        except (SyntaxError, UnicodeDecodeError):
            continue
        if doc and len(doc.split()) >= 40 and doc not in out:
            out.append(doc)
        if len(out) == n:
            break
    return out


def corpus(n: int = 24) -> tuple[list[dict], set[str], set[str]]:
    """Rows with ids; 3 exact copies and 3 near copies (one word changed) planted: (rows, exact ids, near ids)."""
    texts = stdlib_docstrings(n)
    rows = [{"id": f"doc-{i:03d}", "text": t} for i, t in enumerate(texts)]
    exact, near = set(), set()
    for k, i in enumerate((2, 5, 9)):
        rows.append({"id": f"exact-{k}", "text": texts[i]})
        exact.add(f"exact-{k}")
    for k, i in enumerate((3, 7, 11)):
        words = texts[i].split()
        words[len(words) // 2] = "CHANGED"
        rows.append({"id": f"near-{k}", "text": " ".join(words)})
        near.add(f"near-{k}")
    return rows, exact, near


def write_shards(folder: Path, rows: list[dict], shards: int, seed: int) -> None:
    folder.mkdir(parents=True)
    rows = rows[:]
    random.Random(seed).shuffle(rows)
    for s in range(shards):
        with open(folder / f"shard-{s}.jsonl", "w") as fh:
            for r in rows[s::shards]:
                fh.write(json.dumps(r) + "\n")


@pytest.fixture(scope="module")
def tokenizer_dir(tmp_path_factory) -> Path:
    """A real byte-level BPE trained on stdlib text in a second (decodes back to the exact input)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=600, special_tokens=[EOS],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(stdlib_docstrings(30), trainer)
    folder = tmp_path_factory.mktemp("tok")
    tok.save(str(folder / "tokenizer.json"))
    (folder / "tokenizer_config.json").write_text(json.dumps({"eos_token": EOS}))
    return folder


def pipeline_yaml(folder: Path, inputs: str, tokenizer: Path, extra: str = "", output: str = "out") -> Path:
    path = folder / "pipeline.yaml"
    path.write_text(f"""\
output: {output}
workers: 1
blocks:
  - jsonl: {{paths: {inputs}}}
  - whitespace
  - length: {{min_chars: 100}}
  - exact_dedup
  - minhash: {{threshold: 0.8}}
{extra}  - pii
  - write_jsonl: {{path: clean}}
  - pack: {{tokenizer: {tokenizer}, seq_len: 64, shard_tokens: 2000}}
""")
    return path


def outputs(run_dir: Path) -> list[dict]:
    return [json.loads(line) for p in sorted((run_dir / "clean").glob("part-*.jsonl")) for line in p.open()]


def test_yaml_pipeline_report_and_packed_round_trip(tmp_path, tokenizer_dir):
    rows, exact, near = corpus()
    write_shards(tmp_path / "in", rows, 3, seed=0)
    report = Pipeline.from_yaml(pipeline_yaml(tmp_path, "in", tokenizer_dir)).run()
    by_name = {b["name"]: b for b in report["blocks"]}
    assert report["docs_in"] == len(rows) == 30 and report["tasks"] == 3
    assert by_name["exact_dedup"]["dropped"] == {"exact duplicate": 3}
    assert by_name["minhash"]["dropped"] == {"near duplicate": 3}
    assert {e["detail"] for e in by_name["minhash"]["examples"]} == {"duplicate of doc-003", "duplicate of doc-007",
                                                                     "duplicate of doc-011"}
    kept = outputs(tmp_path / "out")
    assert sorted(r["id"] for r in kept) == sorted(r["id"] for r in rows if r["id"] not in exact | near)
    assert report["docs_out"] == len(kept) == 24
    assert json.loads((tmp_path / "out" / "report.json").read_text())["docs_out"] == 24

    from tokenizers import Tokenizer

    tok = Tokenizer.from_file(str(tokenizer_dir / "tokenizer.json"))
    ds = PackedDataset(tmp_path / "out" / "packed")
    assert ds.meta["eos_id"] == tok.token_to_id(EOS) and ds.meta["seq_len"] == 64 and len(ds.meta["shards"]) > 3
    decoded = [tok.decode(d.tolist(), skip_special_tokens=False) for d in ds.documents()]
    assert decoded == [r["text"] for r in kept]  # same documents, same order (task order), nothing lost
    assert len(ds) == ds.num_tokens // 64 and ds.num_docs == 24
    assert not (tmp_path / "out" / "packed" / "parts").exists()
    assert not list((tmp_path / "out" / "work").rglob("task-*.jsonl"))  # intermediates removed after the run


def test_minhash_is_deterministic_across_shard_layouts_and_workers(tmp_path, tokenizer_dir):
    rows, _, _ = corpus()
    results = []
    for name, shards, seed, workers in (("a", 2, 1, 1), ("b", 5, 2, 2), ("c", 3, 3, 2)):
        write_shards(tmp_path / name / "in", rows, shards, seed)
        path = (tmp_path / name / "p.yaml")
        path.write_text("output: out\nblocks:\n  - jsonl: {paths: in}\n  - minhash: {threshold: 0.7}\n"
                        "  - write_jsonl: {path: clean}\n")
        Pipeline.from_yaml(path).run(workers=workers)
        removed = json.loads((tmp_path / name / "out" / "work" / "global-0.json").read_text())["removed"]
        results.append((removed, sorted(r["id"] for r in outputs(tmp_path / name / "out"))))
    assert results[0] == results[1] == results[2]
    removed = results[0][0]
    assert removed["exact-0"] == "doc-002" and removed["near-1"] == "doc-007"  # the smallest id of each cluster stays


def test_resume_after_a_killed_run_writes_identical_shards(tmp_path, tokenizer_dir, monkeypatch):
    rows, _, _ = corpus()
    write_shards(tmp_path / "in", rows, 3, seed=0)
    (tmp_path / "killer.py").write_text(
        "import os\n"
        "def keep(doc):\n"
        f"    if doc.id == 'doc-020' and os.path.exists({str(tmp_path / 'KILL')!r}):\n"
        "        os._exit(9)  # the process dies mid-task, as a killed job would\n"
        "    return True\n")
    yaml_path = pipeline_yaml(tmp_path, "in", tokenizer_dir, extra="  - predicate: {function: 'killer:keep'}\n")
    env = {**os.environ, "PYTHONPATH": str(tmp_path)}
    hanlin = [sys.executable, "-m", "hanlin.cli"] if not (Path(sys.executable).parent / "hanlin").exists() else \
        [str(Path(sys.executable).parent / "hanlin")]
    (tmp_path / "KILL").touch()
    first = subprocess.run([*hanlin, "data", "run", str(yaml_path)], env=env, capture_output=True, text=True)
    assert first.returncode == 9, first.stderr[-2000:]
    final_stage = tmp_path / "out" / "work" / "stage-2"
    done_before = sorted(p.name for p in final_stage.glob("*.done.json"))
    assert 0 < len(done_before) < 3  # killed part way through the last stage
    (tmp_path / "KILL").unlink()
    second = subprocess.run([*hanlin, "data", "run", str(yaml_path)], env=env, capture_output=True, text=True)
    assert second.returncode == 0, second.stderr[-2000:]
    report = json.loads((tmp_path / "out" / "report.json").read_text())
    assert report["tasks_skipped"] == 3 + 3 + len(done_before)  # stages 1 and 2 and the finished part of 3
    monkeypatch.syspath_prepend(str(tmp_path))  # the predicate's module, for the uninterrupted run in this process
    Pipeline.from_yaml(yaml_path, output=str(tmp_path / "fresh")).run()
    for sub in ("clean", "packed"):
        a = sorted(p.relative_to(tmp_path / "out") for p in (tmp_path / "out" / sub).iterdir())
        b = sorted(p.relative_to(tmp_path / "fresh") for p in (tmp_path / "fresh" / sub).iterdir())
        assert a == b and a
        for rel in a:
            assert (tmp_path / "out" / rel).read_bytes() == (tmp_path / "fresh" / rel).read_bytes(), rel
    assert not list((tmp_path / "out").rglob("*.tmp"))


def test_bad_pipeline_and_bad_input_name_the_place(tmp_path):
    (tmp_path / "in.jsonl").write_text('{"text": "fine text here"}\n{"text": oops}\n')
    path = tmp_path / "p.yaml"
    path.write_text("output: out\nblocks:\n  - jsonl: {paths: in.jsonl}\n  - nope: {}\n")
    with pytest.raises(ConfigurationError, match=r"p\.yaml:4: unknown data block 'nope'"):
        Pipeline.from_yaml(path)
    path.write_text("output: out\nblocks:\n  - jsonl: {paths: in.jsonl}\n  - length: {min_char: 3}\n")
    with pytest.raises(ConfigurationError, match=r"p\.yaml:4: block 'length'.*min_char"):
        Pipeline.from_yaml(path)
    path.write_text("output: out\non_error: stop\nblocks:\n  - jsonl: {paths: in.jsonl}\n  - write_jsonl\n")
    with pytest.raises(DataError, match=r"^in\.jsonl:2: broken JSON"):
        Pipeline.from_yaml(path).run()
    report = Pipeline.from_yaml(path, on_error="skip", output=str(tmp_path / "o2")).run()
    assert report["blocks"][0]["dropped"] == {"broken JSON": 1} and report["docs_out"] == 1


def test_convert_chat_round_trip_and_text_records(tmp_path):
    from hanlin.plugins.finetuners.records import load_records

    chats = [{"messages": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"},
                           {"role": "assistant", "content": "Hello."}]},
             {"messages": [{"role": "user", "content": "2+2?"}, {"role": "assistant", "content": "4"}]}]
    (tmp_path / "chat.jsonl").write_text("\n".join(json.dumps(c) for c in chats) + "\n")
    convert([str(tmp_path / "chat.jsonl")], tmp_path / "docs.jsonl", reader="chat", to="jsonl")
    docs = [json.loads(x) for x in (tmp_path / "docs.jsonl").read_text().splitlines()]
    assert docs[1]["text"] == "user: 2+2?\n\nassistant: 4"
    result = convert([str(tmp_path / "docs.jsonl")], tmp_path / "back.jsonl", reader="jsonl", to="chat")
    assert result["written"] == 2
    assert [json.loads(x) for x in (tmp_path / "back.jsonl").read_text().splitlines()] == chats
    convert([str(tmp_path / "chat.jsonl")], tmp_path / "docs.parquet", reader="chat", to="parquet")
    convert([str(tmp_path / "docs.parquet")], tmp_path / "back2.jsonl", reader="parquet", to="chat")
    assert (tmp_path / "back2.jsonl").read_text() == (tmp_path / "back.jsonl").read_text()
    loaded = load_records(tmp_path / "back.jsonl")  # what the finetuners read
    assert [m.content for m in loaded.records[0].messages] == ["Be brief.", "Hi", "Hello."]

    (tmp_path / "notes").mkdir()
    (tmp_path / "notes" / "a.md").write_text("# Notes\n\nSome text.")
    convert([str(tmp_path / "notes")], tmp_path / "text.jsonl", reader="text", to="chat")
    assert json.loads((tmp_path / "text.jsonl").read_text()) == {"text": "# Notes\n\nSome text."}
    assert load_records(tmp_path / "text.jsonl").records[0].text == "# Notes\n\nSome text."

    (tmp_path / "qa.jsonl").write_text('{"question": "Capital of France?", "text": "Paris."}\n{"text": "no q"}\n')
    with pytest.raises(ConfigurationError, match=r"qa\.jsonl:2: no 'question' field"):
        convert([str(tmp_path / "qa.jsonl")], tmp_path / "qa-chat.jsonl", prompt_key="question")
    assert not list(tmp_path.glob("qa-chat*"))  # no half-written file
    (tmp_path / "qa.jsonl").write_text('{"question": "Capital of France?", "text": "Paris."}\n')
    convert([str(tmp_path / "qa.jsonl")], tmp_path / "qa-chat.jsonl", prompt_key="question")
    assert json.loads((tmp_path / "qa-chat.jsonl").read_text()) == {"messages": [
        {"role": "user", "content": "Capital of France?"}, {"role": "assistant", "content": "Paris."}]}


def test_ray_executor_gives_the_local_result(tmp_path):
    pytest.importorskip("ray")
    rows, _, _ = corpus(12)
    write_shards(tmp_path / "in", rows, 3, seed=4)
    path = tmp_path / "p.yaml"
    path.write_text("output: out\nblocks:\n  - jsonl: {paths: in}\n  - exact_dedup\n  - minhash\n"
                    "  - write_jsonl: {path: clean}\n")
    local = Pipeline.from_yaml(path, output=str(tmp_path / "local")).run(workers=1)
    ray_report = Pipeline.from_yaml(path, output=str(tmp_path / "ray")).run(workers=2, executor="ray")
    assert [b["dropped"] for b in ray_report["blocks"]] == [b["dropped"] for b in local["blocks"]]
    for p in sorted((tmp_path / "local" / "clean").iterdir()):
        assert (tmp_path / "ray" / "clean" / p.name).read_bytes() == p.read_bytes()


def test_a_changed_pipeline_does_not_resume_into_an_old_run(tmp_path):
    (tmp_path / "in.jsonl").write_text('{"text": "some text that is long enough"}\n')
    path = tmp_path / "p.yaml"
    text = "output: out\nblocks:\n  - jsonl: {paths: in.jsonl}\n  - length: {min_chars: 5}\n  - write_jsonl\n"
    path.write_text(text)
    assert Pipeline.from_yaml(path).run()["docs_out"] == 1
    path.write_text(text.replace("min_chars: 5", "min_chars: 500"))
    with pytest.raises(ConfigurationError, match="holds a run of a different pipeline"):
        Pipeline.from_yaml(path).run()
