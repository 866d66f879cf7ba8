"""The gpu runtime's benchmarks (`hanlin bench throughput` / `kernels`): the workload, the engine and ChatModel
drivers, the batch-1 decode bound's arithmetic, the kernels table as a correctness smoke under the Triton
interpreter, and the CLI. Timings are never asserted, only that the numbers are real and consistent."""

from __future__ import annotations

import importlib.util
import math
import time
from collections.abc import Iterator

import pytest

from hanlin import ChatModel, Chunk, ConfigurationError, GenerationParams, Usage
from tests.conftest import requires_smollm2

torch = pytest.importorskip("torch")
if importlib.util.find_spec("transformers") is None:
    pytest.skip("pip install 'hanlin[gpu]'", allow_module_level=True)

from hanlin.runtimes.gpu import bench, bench_decode  # noqa: E402
from hanlin.runtimes.gpu.engine import Engine  # noqa: E402
from tests.test_gpu_runtime import LOGIC, _tiny  # noqa: E402


# ---- the workload ------------------------------------------------------------------------------------
def test_workload_is_deterministic_and_in_range() -> None:
    jobs = bench.workload(40, (8, 40), (2, 6), vocab=300, seed=3)
    assert jobs == bench.workload(40, (8, 40), (2, 6), vocab=300, seed=3)  # fixed seed, same workload
    assert jobs != bench.workload(40, (8, 40), (2, 6), vocab=300, seed=4)
    assert all(8 <= len(p) <= 40 and 2 <= o <= 6 for p, o in jobs)
    assert all(10 <= t < 290 for p, _ in jobs for t in p)
    assert len({len(p) for p, _ in jobs}) > 5  # a spread of lengths, not one size
    assert bench.parse_range("16-96", "x") == (16, 96) and bench.parse_range((3, 3), "x") == (3, 3)
    for bad in ("96-16", "0-4", "16", "a-b"):
        with pytest.raises(ConfigurationError, match="--prompt-range"):
            bench.parse_range(bad, "--prompt-range")


def test_arrivals_are_all_at_once_or_poisson() -> None:
    assert bench.arrivals(5, None) == [0.0] * 5
    times = bench.arrivals(2000, 50.0, seed=1)
    assert times == bench.arrivals(2000, 50.0, seed=1) and times == sorted(times) and times[0] == 0.0
    assert 0.9 / 50 < times[-1] / 1999 < 1.1 / 50  # mean gap 1/rate
    with pytest.raises(ConfigurationError, match="rate must be a positive"):
        bench.arrivals(3, -1.0)


# ---- the drivers ---------------------------------------------------------------------------------------
def test_throughput_workload_and_engine_run(tmp_path) -> None:
    jobs = bench.workload(6, (8, 40), (2, 6), vocab=300, seed=3)
    _tiny("llama", tmp_path)
    stats = bench.run_engine(Engine(tmp_path, num_blocks=64, **LOGIC), jobs, rate=50.0)
    assert stats["requests"] == 6 and stats["output tokens"] == sum(o for _, o in jobs)  # ignore_eos: exact
    assert stats["requests/s"] > 0 and math.isclose(stats["output tok/s"], stats["output tokens"] / stats["wall"])
    assert 0 < stats["ttft p50"] <= stats["ttft p99"] and 0 < stats["tpot p50"] <= stats["tpot p99"]


class _Paced(ChatModel):
    """A ChatModel whose timing is known: an empty chunk, then a token every ``gap`` seconds; it stops one token
    short of max_tokens (as at an EOS), so a driver that counts what was asked instead of what came is caught."""

    def __init__(self, gap: float) -> None:
        self.gap = gap
        self.prompts: list[str] = []

    def _stream_prompt(self, prompt: str, params: GenerationParams) -> Iterator[Chunk]:
        self.prompts.append(prompt)
        yield Chunk(text="")
        n = params.max_tokens - 1
        for _ in range(n):
            time.sleep(self.gap)
            yield Chunk(text="x")
        yield Chunk(finish_reason="stop", usage=Usage(prompt_tokens=len(prompt.split()), completion_tokens=n))


def test_chat_model_driver_counts_produced_tokens_and_times_from_arrival() -> None:
    model = _Paced(gap=0.02)
    texts, outs = ["a b c", "d e", "f"], [4, 6, 3]
    stats = bench.run_chat_model(model, texts, outs, rate=20.0, seed=2)
    assert sorted(model.prompts) == sorted(texts)
    assert stats["requests"] == 3 and stats["output tokens"] == sum(o - 1 for o in outs)
    assert stats["prompt tokens"] == 6
    assert 0.02 <= stats["ttft p50"] <= stats["ttft p99"] < 0.5  # the first non-empty chunk, one gap in
    assert 0.015 < stats["tpot p50"] <= stats["tpot p99"] < 0.2


@requires_smollm2
def test_chat_model_driver_on_smollm2(tf_model) -> None:
    tok = tf_model.tokenizer
    jobs = bench.workload(3, (6, 12), (2, 4), vocab=len(tok), seed=1)
    texts = [tok.decode(p, skip_special_tokens=True) for p, _ in jobs]
    stats = bench.run_chat_model(tf_model, texts, [o for _, o in jobs])
    assert stats["requests"] == 3 and 0 < stats["output tokens"] <= sum(o for _, o in jobs)
    assert stats["prompt tokens"] > 0 and 0 < stats["ttft p50"] <= stats["ttft p99"] < stats["wall"]


# ---- batch-1 decode against the bandwidth bound --------------------------------------------------------
@pytest.mark.parametrize("family", ["llama", "qwen2"])  # tied and untied embeddings
def test_weight_bytes_count_every_weight_once(family, tmp_path) -> None:
    import transformers

    _tiny(family, tmp_path)
    engine = Engine(tmp_path, num_blocks=8, **LOGIC)
    hf = transformers.AutoModelForCausalLM.from_pretrained(tmp_path, dtype=torch.float32)
    params = sum(p.numel() for p in hf.parameters())  # a tied head is one parameter in HF too
    embed = hf.get_input_embeddings().weight
    if family == "qwen2":  # untied: the embedding table is indexed (one row per token), the head read whole
        params += embed.shape[1] - embed.numel()
    assert bench_decode.weight_bytes_per_token(engine) == params * 4
    unique = {t.data_ptr(): t.nbytes for t in engine.model.w.values()}
    assert (family == "llama") == (bench_decode.weight_bytes_per_token(engine) == sum(unique.values()))


def test_kv_bytes_follow_layers_heads_and_windows(tmp_path) -> None:
    _tiny("llama", tmp_path / "llama")
    _tiny("gemma3", tmp_path / "gemma3")
    llama = Engine(tmp_path / "llama", num_blocks=8, **LOGIC).config
    gemma = Engine(tmp_path / "gemma3", num_blocks=8, **LOGIC).config
    # 3 layers x (k, v) x 2 kv heads x head_dim 16 x fp32
    assert bench_decode.kv_bytes_per_token(llama, 100, 4) == 3 * 2 * 100 * 2 * 16 * 4
    # two sliding layers read only their window of 8
    assert bench_decode.kv_bytes_per_token(gemma, 100, 4) == 2 * 2 * 16 * 4 * (8 + 8 + 100)
    assert bench_decode.kv_bytes_per_token(gemma, 5, 4) == 2 * 2 * 16 * 4 * 15


def test_decode_table_arithmetic(tmp_path) -> None:
    _tiny("llama", tmp_path)
    table = bench_decode.bench_decode(model=str(tmp_path), context=12, new_tokens=6)
    (row,) = table.rows
    mean_ctx, weights_mb, kv_mb, gbs, bound, tok_s, pct = row
    dtype = "bfloat16" if torch.cuda.is_available() else "float32"  # what bench_decode's engine runs
    engine = Engine(tmp_path, num_blocks=8, **{**LOGIC, "dtype": dtype})
    assert mean_ctx == 12 + 6 / 2
    assert math.isclose(weights_mb * 1e6, bench_decode.weight_bytes_per_token(engine))
    assert math.isclose(kv_mb * 1e6, bench_decode.kv_bytes_per_token(engine.config, mean_ctx, engine.dtype.itemsize))
    assert gbs > 0 and tok_s > 0
    assert math.isclose(bound, gbs * 1e9 / ((weights_mb + kv_mb) * 1e6))
    assert math.isclose(pct, 100 * tok_s / bound)
    if not torch.cuda.is_available():
        assert table.met is None and any("unmeasured" in n for n in table.notes)


# ---- kernels -------------------------------------------------------------------------------------------
def test_kernels_smoke_checks_every_kernel() -> None:
    from hanlin.runtimes.gpu.bench_kernels import KERNELS, bench_kernels

    table = bench_kernels(device="cpu", tiny=True)
    col = {c: i for i, c in enumerate(table.columns)}
    assert [r[0] for r in table.rows if "loop" in r[2] or "_ref" in r[2]] == list(KERNELS)  # a reference row each
    for row in table.rows:
        assert row[col["check"]] == "ok", row
        ours, theirs = row[col["triton ms"]], row[col["torch ms"]]
        assert ours > 0 and theirs > 0 and math.isclose(row[col["speedup"]], theirs / ours)
        assert row[col["achieved"]] > 0 and row[col["% of peak"]] > 0
    units = {r[0]: r[col["unit"]] for r in table.rows}
    assert units["prefill_attention"] == "TFLOP/s" and units["add_rmsnorm"] == "GB/s"
    assert table.met is None and any("SMOKE" in n for n in table.notes)


def test_a_wrong_kernel_is_marked_and_not_timed(monkeypatch) -> None:
    from hanlin.kernels import add_rmsnorm as norm
    from hanlin.runtimes.gpu import bench_kernels as bk

    real = norm.add_rmsnorm
    monkeypatch.setattr(norm, "add_rmsnorm", lambda x, w, r: tuple(t * 1.1 for t in real(x, w, r)))
    (case,) = bk._norm_cases(bk.TINY, torch.bfloat16, torch.device("cpu"), "bfloat16")
    row = bk._row(case, torch.device("cpu"), {"GB/s": 1.0, "TFLOP/s": 1.0}, warmup=0, reps=1, flush=None)
    assert row[3].startswith("WRONG") and row[4:] == ["-"] * 6


def test_kernels_without_a_gpu_say_so() -> None:
    from hanlin.runtimes.gpu.bench_kernels import bench_kernels

    if torch.cuda.is_available():
        pytest.skip("a GPU is here: the full table runs instead")
    table = bench_kernels()
    assert not table.rows and table.met is None and "needs a CUDA GPU" in table.notes[0]


# ---- the CLI -------------------------------------------------------------------------------------------
def test_cli_names_the_valid_runtimes() -> None:
    from typer.testing import CliRunner

    from hanlin.cli import app
    from hanlin.plugin_manager import plugins

    plugins().add_commands(app)  # `bench throughput` is the gpu plugin's command
    result = CliRunner().invoke(app, ["bench", "throughput", "--runtime", "vllm"])
    assert result.exit_code == 2 and "use one of gpu, transformers, cpu" in result.output


@requires_smollm2
def test_cli_throughput_on_the_transformers_runtime(tf_cache) -> None:
    from typer.testing import CliRunner

    from hanlin.cli import app
    from hanlin.plugin_manager import plugins

    plugins().add_commands(app)
    args = ["bench", "throughput", "--runtime", "transformers", "--model", "smollm2", "--requests", "2",
            "--prompt-range", "6-10", "--output-range", "2-3", "--no-decode", "--cache-dir", str(tf_cache)]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    assert "throughput: hanlin transformers runtime vs transformers generate" in result.output
    assert "hanlin transformers ChatModel" in result.output and "transformers generate (batch 2)" in result.output
    assert "ratio hanlin transformers / transformers generate" in result.output
    ours = next(line for line in result.output.splitlines() if line.startswith("hanlin transformers ChatModel"))
    assert float(ours.split()[-5]) > 0  # output tok/s, a real number
    assert "-> n/a" in result.output  # the target is only judged for the gpu runtime on a GPU
