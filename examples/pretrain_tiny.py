"""Pre-train a tiny Python model from scratch on this machine's own Python, then run it with hanlin.

    python examples/pretrain_tiny.py --out pretrain-tiny            # 10 minutes of training (3.3M params on a CPU)
    python examples/pretrain_tiny.py --out /tmp/pt --quick          # the CI version: small, under a minute

The corpus ships with every Python install and nobody here wrote it: the standard library's source (code and
docstrings) plus the long descriptions in the installed packages' METADATA. One file in 20 is held out. The steps:

1. corpus  -> JSONL shards (train) and one held-out JSONL
2. `hanlin data` cleaning: jsonl reader -> ftfy -> whitespace -> code filter (generated files and data tables such as
   the codecs' mapping tables out: a tiny model trained with them kept completed code with ``0, 0, 0000...``) ->
   length filter -> exact dedup -> cleaned JSONL
3. tokenizer: byte-level BPE trained on the cleaned training text (pretrain_tokenizer.py)
4. `hanlin data` tokenize-and-pack into fixed-length rows, document boundaries kept
5. `hanlin pretrain`: a llama model from the size preset, cosine schedule with warm-up, for a bounded time. On a
   CPU the default is the `3m` preset, not the ~8.4M `tiny`: in 10 minutes on 2 cores a model this small is starved
   of tokens, not of parameters, and `3m` reads twice as many (held-out perplexity 131 against tiny's 227). With CUDA
   the default is `tiny`.
6. held-out perplexity against a unigram model of the training tokens (the bar for having learnt anything)
7. GGUF export, a greedy completion of a function signature by llama.cpp, and the same by `hanlin run --model OUT`
   (plain text: a base model has no chat template), both with a frequency penalty of 0.5 against greedy loops
"""

from __future__ import annotations

import argparse
import importlib.metadata
import json
import subprocess
import sys
import sysconfig
from collections.abc import Iterator
from pathlib import Path

import hanlin  # noqa: F401  (sets up the hanlin namespace and the OpenMP policy before torch loads)

# The prompt stops at the colon. Byte-level BPE glues a word's leading space to the word (" return"), so a prompt that
# ends in its indentation ends in a lone whitespace token the model has hardly seen: through llama.cpp called directly
# the 3m model answered "def read_config(path):\n    " with "1):" and "def read_config(path):" with an indented
# docstring (hanlin's runtimes heal such a prompt: runtimes/token_healing.py; `complete()` below is llama.cpp alone).
SIGNATURE = "def read_config(path):"
# Greedy decoding of a model this small loops on one phrase ('"""Return a list of the list of the list of the');
# OpenAI's frequency penalty, the same in llama.cpp and hanlin, lowers a token by 0.5 per time it was written.
PENALTY = 0.5
TESTS = {"test", "tests", "idle_test"}  # test suites and their data files (some deliberately broken Python)


def corpus(quick: bool) -> tuple[list[dict], list[dict]]:
    """(training docs, held-out docs): stdlib modules and package descriptions, every 20th held out."""
    stdlib = Path(sysconfig.get_paths()["stdlib"])
    files = sorted(p for p in stdlib.rglob("*.py") if not TESTS.intersection(p.relative_to(stdlib).parts[:-1])
                   and "site-packages" not in p.parts)
    if quick:
        files = files[:80]
    docs = [{"id": str(p.relative_to(stdlib)), "text": p.read_text(encoding="utf-8", errors="replace")}
            for p in files]
    if not quick:
        for dist in sorted(importlib.metadata.distributions(), key=lambda d: d.metadata.get("Name") or ""):
            text = dist.metadata.get_payload() if hasattr(dist.metadata, "get_payload") else None
            text = text or dist.metadata.get("Description") or ""
            if len(text) > 200:
                docs.append({"id": f"METADATA:{dist.metadata.get('Name')}", "text": text})
    train = [d for i, d in enumerate(docs) if i % 20 != 7]
    held = [d for i, d in enumerate(docs) if i % 20 == 7]
    return train, held


def write_jsonl(folder: Path, docs: list[dict], shards: int) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for k in range(shards):
        with (folder / f"part-{k:02d}.jsonl").open("w", encoding="utf-8") as fh:
            for doc in docs[k::shards]:
                fh.write(json.dumps(doc, ensure_ascii=False) + "\n")
    return folder


def clean(raw: Path, run_dir: Path) -> tuple[Path, dict]:
    """The cleaning pipeline (the same blocks `hanlin data run` reads from a YAML file): cleaned JSONL shards."""
    from hanlin.plugins.data.pipeline import Pipeline

    blocks = [{"jsonl": {"paths": str(raw)}}, "ftfy", "whitespace", "code", {"length": {"min_chars": 200}},
              "exact_dedup", {"write_jsonl": {"path": "clean"}}]
    report = Pipeline.from_blocks(blocks, run_dir, workers=1).run()
    return run_dir / "clean", report


def pack(cleaned: Path, run_dir: Path, tokenizer: Path, seq_len: int) -> tuple[Path, dict]:
    """Tokenize-and-pack the cleaned shards into fixed-length rows, document boundaries kept."""
    from hanlin.plugins.data.pipeline import Pipeline

    blocks = [{"jsonl": {"paths": str(cleaned)}},
              {"pack": {"tokenizer": str(tokenizer), "seq_len": seq_len, "path": "packed"}}]
    report = Pipeline.from_blocks(blocks, run_dir, workers=1).run()
    return run_dir / "packed", report


def print_report(report: dict) -> None:
    for block in report.get("blocks", []):
        dropped = ", ".join(f"{n} {why}" for why, n in (block.get("dropped") or {}).items())
        print(f"  data block {block.get('name')}: {block.get('docs_in')} in, {block.get('docs_out')} out"
              + (f" (dropped: {dropped})" if dropped else ""))


def texts(folder: Path) -> Iterator[str]:
    for path in sorted(folder.glob("*.jsonl")):
        with path.open(encoding="utf-8") as fh:
            for line in fh:
                yield json.loads(line)["text"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=Path("pretrain-tiny"))
    parser.add_argument("--quick", action="store_true", help="small corpus and model, under a minute (CI)")
    parser.add_argument("--minutes", type=float, default=10.0, help="training time (ignored with --quick)")
    parser.add_argument("--preset", default=None,
                        help="model size preset (default: 3m on a CPU, tiny with CUDA; 1m with --quick)")
    args = parser.parse_args()
    out: Path = args.out
    quick = args.quick
    seq_len, vocab = (128, 2048) if quick else (256, 8192)

    train_docs, held_docs = corpus(quick)
    print(f"corpus: {len(train_docs)} training documents ({sum(len(d['text']) for d in train_docs) / 1e6:.1f} MB), "
          f"{len(held_docs)} held out")
    raw_train = write_jsonl(out / "raw" / "train", train_docs, shards=2 if quick else 4)
    raw_held = write_jsonl(out / "raw" / "heldout", held_docs, shards=1)

    clean_train, report = clean(raw_train, out / "clean-train")
    clean_held, _ = clean(raw_held, out / "clean-heldout")
    print_report(report)

    from hanlin.plugins.finetuners.pretrain_tokenizer import train_tokenizer

    tokenizer = train_tokenizer(texts(clean_train), out / "tokenizer", vocab_size=vocab)  # fitted to what it will read
    print(f"tokenizer: byte-level BPE, {vocab} tokens -> {tokenizer}")
    train_packed, report = pack(clean_train, out / "data-train", tokenizer, seq_len)
    held_packed, _ = pack(clean_held, out / "data-heldout", tokenizer, seq_len)
    print_report(report)

    from hanlin.plugins.finetuners.pretrain import pretrain
    from hanlin.plugins.finetuners.pretrain_cli import print_progress

    model_dir = out / "model"
    budget = {"max_steps": 60} if quick else {"max_minutes": args.minutes}
    preset = args.preset or default_preset(quick)
    result = pretrain(None, data=str(train_packed), eval_data=str(held_packed), tokenizer=str(tokenizer),
                      preset=preset, output_dir=str(model_dir),
                      batch_size=8, learning_rate=3e-3 if preset in ("1m", "3m") else 2e-3, warmup_ratio=0.05,
                      log_every=10,
                      export=["merged", "gguf"], gguf_type="f32" if quick else "f16",
                      eval_sequences=64 if quick else 256,
                      progress=(lambda r: None) if quick else print_progress, **budget)
    print(result.summary)

    tokens = 48 if not quick else 16
    completion = complete(model_dir / "model.gguf", SIGNATURE, tokens)
    print(f"llama.cpp greedy completion of the signature (frequency_penalty {PENALTY}):\n" + SIGNATURE + completion)
    cli = [sys.executable, "-c", "from hanlin.cli import main; main()"]
    # A base model has no chat template, so `hanlin run` continues the text as written (no agent prompt).
    run = subprocess.run([*cli, "run", "--model", str(model_dir), "--max-tokens", str(tokens), "--frequency-penalty",
                          str(PENALTY), SIGNATURE], capture_output=True, text=True, timeout=600)
    print(f"$ hanlin run --model {model_dir} --max-tokens {tokens} --frequency-penalty {PENALTY} {SIGNATURE!r}  "
          f"-> exit {run.returncode}")
    print(run.stdout + run.stderr[-400:])


def default_preset(quick: bool) -> str:
    """The shape that learns most in the time budget on this device (see step 5 above)."""
    if quick:
        return "1m"
    import torch

    return "tiny" if torch.cuda.is_available() else "3m"


def complete(gguf: Path, prompt: str, n: int) -> str:
    import llama_cpp

    llm = llama_cpp.Llama(model_path=str(gguf), n_ctx=512, n_threads=2, verbose=False)
    try:
        out = llm.create_completion(prompt, max_tokens=n, temperature=0.0, top_k=1, frequency_penalty=PENALTY)
    finally:
        llm.close()
    return out["choices"][0]["text"]


if __name__ == "__main__":
    main()
