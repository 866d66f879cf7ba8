"""`hanlin bench throughput` (with its batch-1 decode table, bench_decode.py) and `hanlin bench kernels`
(bench_kernels.py).

Throughput: a synthetic ShareGPT-like workload (prompt and output lengths from a fixed-seed log-normal, clipped),
all requests submitted at once or at Poisson arrival times, served by one hanlin runtime: the gpu engine driven
directly (exact output lengths), or the transformers / cpu runtime's ChatModel through its public streaming API,
one thread per request. The baseline, measured in the same run whatever the runtime, is transformers' batched
``generate`` on the same token ids (left-padded batches, every request decoding to its batch's longest output,
which is what a plain framework loop pays; only each request's own tokens are counted).
"""

from __future__ import annotations

import json
import math
import random
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from hanlin import ConfigurationError
from hanlin.bench import BenchTable

RUNTIMES = ("gpu", "transformers", "cpu")
SUITES = ("throughput", "decode", "kernels")
Job = tuple[list[int], int]  # (prompt token ids, output length)
Range = str | tuple[int, int]  # "LO-HI" or (LO, HI)


# ---- the workload ------------------------------------------------------------------------------------
def workload(n: int, prompt_range: tuple[int, int], output_range: tuple[int, int], vocab: int,
             seed: int = 0) -> list[Job]:
    """(prompt tokens, output length) pairs; lengths log-normal between the bounds, like chat traffic."""
    rng = random.Random(seed)

    def draw(lo: int, hi: int) -> int:
        mu, sigma = math.log(math.sqrt(lo * hi)), math.log(hi / lo) / 4
        return int(min(max(rng.lognormvariate(mu, sigma), lo), hi))

    return [([rng.randrange(10, vocab - 10) for _ in range(draw(*prompt_range))], draw(*output_range)) for _ in range(n)]


def parse_range(value: Range | list[int], what: str) -> tuple[int, int]:
    """``"LO-HI"`` (the CLI's form) or a pair, checked: 1 <= LO <= HI."""
    try:
        lo, hi = (int(v) for v in (value.split("-") if isinstance(value, str) else value))
    except (ValueError, TypeError):
        raise ConfigurationError(f"{what} must look like LO-HI (e.g. 16-96), got {value!r}") from None
    if not 1 <= lo <= hi:
        raise ConfigurationError(f"{what} needs 1 <= LO <= HI, got {lo}-{hi}")
    return lo, hi


def arrivals(n: int, rate: float | None, seed: int = 0) -> list[float]:
    """Seconds after the start at which each request arrives: all at 0, or a Poisson process of ``rate``/s."""
    if rate is not None and rate <= 0:
        raise ConfigurationError(f"rate must be a positive number of requests per second, got {rate}")
    rng, out, t = random.Random(seed), [], 0.0
    for _ in range(n):
        out.append(t)
        t += rng.expovariate(rate) if rate else 0.0
    return out


def _pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(int(q * len(ordered)), len(ordered) - 1)] if ordered else float("nan")


def _summary(first: dict[int, float], done: dict[int, float], counts: dict[int, int], wall: float) -> dict[str, float]:
    """Request-level stats. TTFT from a request's arrival; TPOT over the tokens after the first (a request that
    produced one token or none has no TPOT)."""
    tpot = [(done[i] - first[i]) / (counts[i] - 1) for i in done if i in first and counts.get(i, 0) > 1]
    tokens = sum(counts.values())
    ttft = list(first.values())
    return {"wall": wall, "requests": len(done), "output tokens": tokens, "requests/s": len(done) / wall,
            "output tok/s": tokens / wall, "ttft p50": _pct(ttft, 0.5), "ttft p99": _pct(ttft, 0.99),
            "tpot p50": _pct(tpot, 0.5), "tpot p99": _pct(tpot, 0.99)}


# ---- the drivers ---------------------------------------------------------------------------------------
def run_engine(engine: Any, jobs: list[Job], rate: float | None = None, seed: int = 0) -> dict[str, float]:
    """The gpu engine stepped directly, each request decoding exactly its output length (ignore_eos)."""
    from hanlin.runtimes.gpu.sequence import SamplingParams

    starts = arrivals(len(jobs), rate, seed)
    start = time.perf_counter()
    pending = list(range(len(jobs)))
    ids: dict[int, int] = {}
    first: dict[int, float] = {}
    done: dict[int, float] = {}
    counts: dict[int, int] = {}
    while pending or engine.has_work():
        now = time.perf_counter() - start
        while pending and starts[pending[0]] <= now:
            i = pending.pop(0)
            prompt, out = jobs[i]
            ids[engine.add(prompt, SamplingParams(max_tokens=out, ignore_eos=True))] = i
        if not engine.has_work():
            time.sleep(max(starts[pending[0]] - now, 0)) if pending else None
            continue
        for o in engine.step():
            i = ids.get(o.seq_id)
            if i is None or o.token is None:
                continue
            stamp = time.perf_counter() - start
            first.setdefault(i, stamp - starts[i])
            counts[i] = counts.get(i, 0) + 1
            if o.finished:
                done[i] = stamp - starts[i]
    return _summary(first, done, counts, time.perf_counter() - start)


def run_chat_model(model: Any, texts: list[str], outs: list[int], rate: float | None = None,
                   seed: int = 0) -> dict[str, float]:
    """A ChatModel through its public API, one thread per request (started at its arrival time), each streaming
    ``stream_prompt(text, max_tokens=out, temperature=0)``: the way an application's concurrent callers use it.
    TTFT is the first non-empty chunk; the tokens counted are those the final chunk's usage says were produced
    (a request may stop at EOS before ``out``)."""
    starts = arrivals(len(texts), rate, seed)
    first: dict[int, float] = {}
    done: dict[int, float] = {}
    counts: dict[int, int] = {}
    prompt_tokens: dict[int, int] = {}
    errors: list[BaseException] = []
    t0 = time.perf_counter()

    def call(i: int) -> None:
        try:
            for chunk in model.stream_prompt(texts[i], max_tokens=outs[i], temperature=0):
                if chunk.text and i not in first:
                    first[i] = time.perf_counter() - t0 - starts[i]
                if chunk.usage is not None:
                    counts[i], prompt_tokens[i] = chunk.usage.completion_tokens, chunk.usage.prompt_tokens
            done[i] = time.perf_counter() - t0 - starts[i]
        except BaseException as exc:  # noqa: BLE001 - re-raised in the calling thread below
            errors.append(exc)

    threads = []
    for i in range(len(texts)):
        time.sleep(max(starts[i] - (time.perf_counter() - t0), 0))
        threads.append(threading.Thread(target=call, args=(i,), name=f"bench-request-{i}", daemon=True))
        threads[-1].start()
    for thread in threads:
        thread.join()
    if errors:
        raise errors[0]
    stats = _summary(first, done, counts, time.perf_counter() - t0)
    stats["prompt tokens"] = sum(prompt_tokens.values())
    return stats


def run_transformers(folder: Path, jobs: list[Job], device: str, dtype: Any, batch: int) -> dict[str, float]:
    """The baseline: transformers' batched ``generate`` over left-padded batches of the workload."""
    import torch
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(str(folder), dtype=dtype).to(device).eval()
    pad = 0
    start = time.perf_counter()
    for at in range(0, len(jobs), batch):
        group = jobs[at : at + batch]
        width = max(len(p) for p, _ in group)
        ids = torch.tensor([[pad] * (width - len(p)) + p for p, _ in group], device=device)
        mask = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p, _ in group], device=device)
        longest = max(o for _, o in group)
        with torch.inference_mode():
            model.generate(input_ids=ids, attention_mask=mask, max_new_tokens=longest, min_new_tokens=longest,
                           do_sample=False, pad_token_id=pad)
    wall = time.perf_counter() - start
    useful = sum(o for _, o in jobs)
    return {"wall": wall, "requests/s": len(jobs) / wall, "output tok/s": useful / wall}


# ---- model and device ----------------------------------------------------------------------------------
def _hf_folder(model: str, cache_dir: str | None) -> tuple[Any, Path]:
    """The model's spec and its HF folder (a GGUF converted once, as the gpu and transformers runtimes do)."""
    from hanlin import resolve_model
    from hanlin.runtimes.gguf_convert import convert_gguf

    spec = resolve_model(model)
    path = Path(spec.locate())
    return spec, convert_gguf(path, Path(cache_dir) if cache_dir else None) if path.suffix == ".gguf" else path


def _tokenizer(folder: Path) -> Any:
    from transformers import AutoTokenizer

    try:
        return AutoTokenizer.from_pretrained(str(folder))
    except Exception:  # noqa: BLE001 - a folder without a tokenizer: only the engine can be measured then
        return None


def _vocab(folder: Path, tokenizer: Any) -> int:
    """Token ids the workload may draw: the model's vocabulary, cut to what the tokenizer can decode (a padded
    embedding has rows no text maps to)."""
    config = json.loads((folder / "config.json").read_text())
    vocab = int(config.get("vocab_size") or config.get("text_config", {}).get("vocab_size"))
    return min(vocab, len(tokenizer)) if tokenizer is not None else vocab


def _max_position(folder: Path) -> int:
    from hanlin.runtimes.gpu.config import ModelConfig

    return ModelConfig.from_folder(folder).max_position


def _device_dtype() -> tuple[str, Any]:
    import torch

    if torch.cuda.is_available():
        return "cuda", torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return "cpu", torch.float32


def _release() -> None:
    """Give the memory of a finished measurement (engine KV cache, weights) back before the next one loads on the
    same device: the engine sizes its cache from the device's free memory. Callers drop their references first."""
    import gc

    import torch

    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


# ---- throughput ----------------------------------------------------------------------------------------
def _measure_hanlin(runtime: str, model: str, folder: Path, tokenizer: Any, jobs: list[Job], rate: float | None,
                    cache_dir: str | None, seed: int) -> tuple[dict[str, float], list[str]]:
    """The hanlin row's stats, and the notes it needs."""
    from hanlin import load_model

    device, dtype = _device_dtype()
    if runtime == "gpu":
        from hanlin.runtimes.gpu.engine import Engine

        # the decode grid sized for the workload's longest request, not the checkpoint's context; graphs captured
        # only up to the batch the workload can fill
        longest = max(len(p) + o for p, o in jobs)
        engine = Engine(folder, max_model_len=min(longest, _max_position(folder)), max_seqs=min(len(jobs), 256))
        stats = run_engine(engine, jobs, rate, seed)
        notes = [f"engine: {engine.dtype}, {'Triton kernels' if engine.model.ops.triton else 'torch reference kernels'}"
                 f", preemptions: {engine.scheduler.preemptions}"]
        del engine
        _release()
        return stats, notes
    if tokenizer is None:
        raise ConfigurationError(f"{str(folder)!r} has no tokenizer, which the {runtime} runtime's text prompts need")
    texts = [tokenizer.decode(p, skip_special_tokens=True) for p, _ in jobs]
    options: dict[str, Any] = {}
    if runtime == "transformers":
        options = {"cache_dir": cache_dir, "device": device, "dtype": str(dtype).removeprefix("torch.")}
    chat = load_model(model, runtime=runtime, **options)
    try:
        stats = run_chat_model(chat, texts, [o for _, o in jobs], rate, seed)
    finally:
        chat.close()
        del chat
        _release()
    asked = sum(o for _, o in jobs)
    notes = [f"{runtime} runtime: prompts are the workload's token ids decoded to text and tokenized again by the "
             f"runtime ({stats['prompt tokens']:.0f} prompt tokens vs {sum(len(p) for p, _ in jobs)} in the "
             f"workload); it produced {stats['output tokens']:.0f} of the {asked} output tokens asked (greedy, "
             "stops at EOS) and only produced tokens are counted"]
    if runtime == "cpu":
        notes.append("cpu runtime: llama.cpp runs the GGUF as quantized in the file, the baseline its dequantized "
                     "HF conversion; one llama.cpp context serves one request at a time")
    return stats, notes


def bench_throughput(model: str = "smollm2-135m-instruct", requests: int | None = None, rate: float | None = None,
                     cache_dir: str | None = None, runtime_name: str = "gpu", prompt_range: Range | None = None,
                     output_range: Range | None = None, seed: int = 0, **_: Any) -> BenchTable:
    """One hanlin runtime on the workload beside transformers' batched generate, measured in the same run."""
    if runtime_name not in RUNTIMES:
        raise ConfigurationError(f"unknown runtime {runtime_name!r} for bench throughput; "
                                 f"use one of {', '.join(RUNTIMES)}")
    if requests is not None and requests < 1:
        raise ConfigurationError(f"requests must be at least 1, got {requests}")
    arrivals(1, rate)  # a bad rate fails now, before any model loads
    device, dtype = _device_dtype()
    on_gpu = device == "cuda"
    prompts = parse_range(prompt_range or ((100, 1024) if on_gpu else (16, 96)), "--prompt-range")
    outputs = parse_range(output_range or ((100, 1024) if on_gpu else (8, 32)), "--output-range")
    n = requests or (256 if on_gpu else 8)
    spec, folder = _hf_folder(model, cache_dir)
    tokenizer = _tokenizer(folder)
    jobs = workload(n, prompts, outputs, _vocab(folder, tokenizer), seed)
    ours, notes = _measure_hanlin(runtime_name, model, folder, tokenizer, jobs, rate, cache_dir, seed)
    base = run_transformers(folder, jobs, device, dtype, batch=min(n, 64 if on_gpu else 8))
    _release()
    import torch

    where = torch.cuda.get_device_name() if on_gpu else "CPU"
    arrive = "at once" if not rate else f"Poisson {rate:g}/s"
    table = BenchTable(
        title=f"throughput: hanlin {runtime_name} runtime vs transformers generate; {spec.name}; "
              f"{n} requests {arrive}, prompts {prompts[0]}-{prompts[1]}, outputs {outputs[0]}-{outputs[1]} tokens "
              f"(seed {seed}); {where}",
        columns=["runtime", "requests/s", "output tok/s", "ttft p50 s", "ttft p99 s", "tpot p50 s", "tpot p99 s"],
        target=">= 10 x the transformers baseline on 256 concurrent requests with a ~0.5B model (gpu runtime, H100)",
    )
    label = {"gpu": "hanlin gpu engine", "transformers": "hanlin transformers ChatModel",
             "cpu": "hanlin cpu ChatModel (llama.cpp)"}[runtime_name]
    table.rows.append([label, ours["requests/s"], ours["output tok/s"], ours["ttft p50"], ours["ttft p99"],
                       ours["tpot p50"], ours["tpot p99"]])
    table.rows.append([f"transformers generate (batch {min(n, 64 if on_gpu else 8)})", base["requests/s"],
                       base["output tok/s"], "-", "-", "-", "-"])
    ratio = ours["output tok/s"] / base["output tok/s"]
    table.notes.append(f"ratio hanlin {runtime_name} / transformers generate (output tok/s): {ratio:.2f}")
    table.notes.extend(notes)
    table.notes.append(f"baseline: {dtype} on {device}, left-padded batches each decoding to its longest output; "
                       "only each request's own output tokens are counted" +
                       ("; it has no arrival times: the whole workload is given to it at once" if rate else ""))
    table.met = (ratio >= 10) if runtime_name == "gpu" and on_gpu and n >= 256 else None
    if not on_gpu:
        table.notes.append("no GPU: CPU numbers; the H100 target is unmeasured")
    elif table.met is None:
        table.notes.append("the target is stated for the gpu runtime on >= 256 requests: not judged here")
    return table


def run_all(suite: str = "throughput", **options: Any) -> Iterator[BenchTable]:
    """The gpu runtime's suites: throughput (with the decode table unless ``decode=False``), decode, kernels."""
    if suite not in SUITES:
        raise ConfigurationError(f"unknown benchmark suite {suite!r}; use one of {', '.join(SUITES)}")
    if suite == "kernels":
        from hanlin.runtimes.gpu.bench_kernels import bench_kernels

        yield bench_kernels(**options)
        return
    if suite == "throughput":
        yield bench_throughput(**options)
    if suite == "decode" or options.get("decode", True):
        from hanlin.runtimes.gpu.bench_decode import bench_decode

        yield bench_decode(**options)
