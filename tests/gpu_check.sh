#!/usr/bin/env bash
# The gpu runtime's check on a machine with an NVIDIA GPU, in one command and under 10 minutes:
#
#   tests/gpu_check.sh [SUMMARY.json]        (default: $OUT/gpu_check.json if $OUT is set, else ./gpu_check.json)
#
# In this order: 1. the kernel tests for real (every Triton kernel against its torch reference in fp32, fp16 and
#    bf16, tolerances from hanlin.kernels.TOLERANCES); 2. `hanlin bench kernels` (GB/s and TFLOP/s against the
#    device's measured peaks); 3. `hanlin bench throughput -m qwen2.5-coder-0.5b-instruct --requests 256` beside
#    transformers' batched generate, with the batch-1 decode table against the memory-bandwidth bound; 4. the engine
#    tests on the GPU (CUDA-graph capture with decode_graphs="auto", the default cache sizing, bf16 against
#    transformers teacher-forced, the scheduler, sampling and serving tests); 5. the finetuners' QLoRA export on a
#    real bitsandbytes 4-bit base. After the throughput benchmark, `hanlin bench quant-gpu` (W4A16 vs bf16 batch-1
#    decode, KV int8 vs bf16 cache throughput on 256 requests in 2 GiB of cache, dequant-GEMM vs torch.matmul at
#    decode shapes); the W4A16 / KV int8 kernel tests run with the kernel tests. One JSON summary: per step its exit status and time, per test run the counts and
#    the failures, every benchmark table, and the targets (>= 10x throughput, >= 50% of the bandwidth bound, every
#    kernel correct and faster than its reference) as met / not met.
#
# The benchmarks run right after the kernel tests, so the measurements are taken whatever the tests after them
# find (those get what is left of the budget). Every step runs whatever the previous ones gave; the exit status is
# 0 only when all passed. Environment: PYTHON (default .venv/bin/python), HANLIN_CACHE (where the GGUF -> HF
# conversion of the model is kept between runs; default ~/.cache/hanlin), GPU_CHECK_BUDGET (seconds for the whole
# run, default 570).
set -uo pipefail
cd "$(dirname "$0")/.."

PY=${PYTHON:-.venv/bin/python}
[ -x "$PY" ] || PY=$(command -v python3)
SUMMARY=${1:-${OUT:+$OUT/gpu_check.json}}
SUMMARY=${SUMMARY:-gpu_check.json}
BUDGET=${GPU_CHECK_BUDGET:-570}
MODEL=qwen2.5-coder-0.5b-instruct
WORK=$(mktemp -d)
START=$(date +%s)
export HANLIN_CACHE=${HANLIN_CACHE:-$HOME/.cache/hanlin}
unset TRITON_INTERPRET  # the kernels run for real (tests/conftest.py turns the interpreter on only without a GPU)
mkdir -p "$HANLIN_CACHE" "$(dirname "$SUMMARY")"
: > "$WORK/steps.tsv"

if ! "$PY" -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)"; then
    echo "gpu_check: torch sees no CUDA device; this script is for a machine with an NVIDIA GPU" >&2
    exit 2
fi

# step NAME LIMIT_S CMD...: runs CMD with its output in $WORK/NAME.log, under the smaller of its limit and what is
# left of the budget, and records "NAME rc seconds".
step() {
    local name=$1 limit=$2 left rc t0
    shift 2
    left=$(( BUDGET - ($(date +%s) - START) ))
    (( left < limit )) && limit=$left
    if (( limit < 10 )); then
        echo -e "$name\t124\t0" >> "$WORK/steps.tsv"
        echo "gpu_check: $name skipped, the budget of ${BUDGET}s is spent" >&2
        return
    fi
    echo "gpu_check: $name (up to ${limit}s)" >&2
    t0=$(date +%s)
    timeout "$limit" "$@" > "$WORK/$name.log" 2> "$WORK/$name.err"
    rc=$?
    echo -e "$name\t$rc\t$(( $(date +%s) - t0 ))" >> "$WORK/steps.tsv"
}

# The model's GGUF -> HF conversion (CPU work) overlaps the kernel tests; the benchmark finds it in HANLIN_CACHE.
timeout "$BUDGET" "$PY" -c "from hanlin.runtimes.gpu.bench import _hf_folder; _hf_folder('$MODEL', None)" \
    > "$WORK/convert.log" 2> "$WORK/convert.err" &
CONVERT=$!

PYTEST=("$PY" -m pytest -q -p no:cacheprovider -o addopts="")
step kernel_tests 150 "${PYTEST[@]}" --junitxml="$WORK/kernel_tests.xml" \
    tests/test_kernels.py tests/test_kernel_cross_entropy.py tests/test_dequant_gemm.py tests/test_kv_int8.py
step bench_kernels 90 "$PY" -m hanlin.cli bench kernels --dtype bfloat16 --json
wait "$CONVERT"
echo -e "convert\t$?\t0" >> "$WORK/steps.tsv"
step bench_throughput 300 "$PY" -m hanlin.cli bench throughput -m "$MODEL" --requests 256 --json
step bench_quant 150 "$PY" -m hanlin.cli bench quant-gpu -m "$MODEL" --json
step engine_tests 240 "${PYTEST[@]}" --junitxml="$WORK/engine_tests.xml" \
    tests/test_gpu_cuda.py tests/test_gpu_runtime.py tests/test_gpu_scheduler.py tests/test_sampling.py \
    tests/test_gpu_serving.py tests/test_penalties.py tests/test_token_healing.py \
    -k "not test_hanlin_run_on_the_gpu_runtime"
step finetune_tests 90 "${PYTEST[@]}" --junitxml="$WORK/finetune_tests.xml" tests/test_qlora_export.py

"$PY" tests/gpu_check_summary.py "$WORK" "$SUMMARY" "$START"
