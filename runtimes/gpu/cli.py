"""`hanlin bench throughput`, `hanlin bench kernels` and `hanlin bench quant-gpu`: the gpu engine's own benchmark
commands."""

from __future__ import annotations

from typing import Annotated, Any

import typer

from hanlin.cli_bench import bench_group, print_tables


def add_commands(cli: Any) -> None:
    group = bench_group(cli)
    if group is None:
        return

    @group.command("throughput")
    def bench_throughput_cmd(
        model: Annotated[str, typer.Option("--model", "-m", help="Model name or HF folder / GGUF path.")] = "smollm2-135m-instruct",
        runtime: Annotated[str, typer.Option("--runtime", "-r", help="hanlin runtime to measure: gpu (the engine, "
                                             "driven directly), transformers or cpu (its ChatModel, a thread per request).")] = "gpu",
        requests: Annotated[int | None, typer.Option(help="Number of requests (default 256 on a GPU, 8 on CPU).")] = None,
        rate: Annotated[float | None, typer.Option(help="Poisson arrival rate per second (default: all at once).")] = None,
        prompt_range: Annotated[str | None, typer.Option("--prompt-range", help="Prompt lengths LO-HI in tokens "
                                                         "(default 100-1024 on a GPU, 16-96 on CPU).")] = None,
        output_range: Annotated[str | None, typer.Option("--output-range", help="Output lengths LO-HI in tokens "
                                                         "(default 100-1024 on a GPU, 8-32 on CPU).")] = None,
        seed: Annotated[int, typer.Option(help="Seed of the workload's lengths, tokens and arrivals.")] = 0,
        decode: Annotated[bool, typer.Option("--decode/--no-decode", help="Also the batch-1 decode table: the gpu "
                                             "engine against the memory-bandwidth bound.")] = True,
        cache_dir: Annotated[str | None, typer.Option("--cache-dir", help="Where a GGUF model's HF conversion is kept "
                                                      "(default $HANLIN_CACHE or ~/.cache/hanlin).")] = None,
        as_json: Annotated[bool, typer.Option("--json", help="Print the tables as JSON.")] = False,
    ) -> None:
        """A hanlin runtime on a synthetic chat workload beside transformers' batched generate, in the same run; then
        the gpu engine's batch-1 decode against the memory-bandwidth bound."""
        from hanlin.runtimes.gpu.bench import run_all

        options = {"suite": "throughput", "model": model, "runtime_name": runtime, "requests": requests, "rate": rate,
                   "prompt_range": prompt_range, "output_range": output_range, "seed": seed, "decode": decode,
                   "cache_dir": cache_dir}
        print_tables(lambda: run_all(**{k: v for k, v in options.items() if v is not None}), as_json)

    @group.command("kernels")
    def bench_kernels_cmd(
        smoke: Annotated[bool, typer.Option("--smoke", help="Tiny shapes (on CPU under the Triton interpreter): checks "
                                            "this benchmark's code and the kernels' results; the timings mean nothing.")] = False,
        dtype: Annotated[str, typer.Option(help="Activation dtype: bfloat16, float16 or float32.")] = "bfloat16",
        as_json: Annotated[bool, typer.Option("--json", help="Print the tables as JSON.")] = False,
    ) -> None:
        """Each Triton kernel checked against its torch reference, then timed beside it (GB/s or TFLOP/s against the
        device's measured peaks)."""
        from hanlin.runtimes.gpu.bench import run_all

        print_tables(lambda: run_all(suite="kernels", tiny=smoke, dtype=dtype), as_json)

    @group.command("quant-gpu")
    def bench_quant_cmd(
        model: Annotated[str, typer.Option("--model", "-m", help="Model name or HF folder / GGUF path.")] = "smollm2-135m-instruct",
        what: Annotated[str, typer.Option(help="Comma-separated: w4a16 (batch-1 decode, int4 vs float weights), "
                                          "kv-int8 (throughput, int8 vs float KV cache), gemm (dequant-GEMM vs "
                                          "torch.matmul), quality (perplexity on CPU).")] = "w4a16,kv-int8,gemm",
        requests: Annotated[int | None, typer.Option(help="kv-int8: requests (default 256 on a GPU, 8 on CPU).")] = None,
        cache_memory: Annotated[str | None, typer.Option("--cache-memory", help="kv-int8: KV cache memory for both "
                                                         "(default 2GiB on a GPU, 16MiB on CPU).")] = None,
        smoke: Annotated[bool, typer.Option("--smoke", help="gemm: tiny shapes under the Triton interpreter (CPU).")] = False,
        awq: Annotated[str | None, typer.Option("--awq", help="quality: also this `hanlin quantize --to awq-w4` "
                                                "folder of the model.")] = None,
        text: Annotated[str | None, typer.Option("--text", help="quality: held-out text file (default: pydantic's "
                                                 "package description).")] = None,
        cache_dir: Annotated[str | None, typer.Option("--cache-dir", help="Where a GGUF model's HF conversion is kept.")] = None,
        as_json: Annotated[bool, typer.Option("--json", help="Print the tables as JSON.")] = False,
    ) -> None:
        """W4A16 and the int8 KV cache, each beside the float engine measured in the same run."""
        from hanlin.runtimes.gpu.bench_quant import run_quant

        options = {"model": model, "requests": requests, "cache_memory": cache_memory, "smoke": smoke,
                   "cache_dir": cache_dir, "awq": awq, "text": text}
        print_tables(lambda: run_quant(what, **{k: v for k, v in options.items() if v is not None}), as_json)
