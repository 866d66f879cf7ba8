"""The gpu engine on a real NVIDIA GPU: what only a GPU can check (CUDA-graph capture, the default cache sizing with
room left for the graphs, the Triton kernels inside the whole engine in bf16). Skipped without CUDA; run by
tests/gpu_check.sh, collected everywhere."""

from __future__ import annotations

import gc
import importlib.util

import pytest

torch = pytest.importorskip("torch")
if importlib.util.find_spec("transformers") is None:
    pytest.skip("pip install 'hanlin[gpu]'", allow_module_level=True)

from hanlin.runtimes.gpu.engine import Engine  # noqa: E402
from hanlin.runtimes.gpu.sequence import SamplingParams  # noqa: E402
from tests.test_gpu_runtime import GREEDY, _tiny, assert_like_transformers  # noqa: E402

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs an NVIDIA GPU (tests/gpu_check.sh)")
PROMPTS = [[5, 17, 42, 7, 99, 3, 150, 22, 8, 61, 12, 4, 77], [9, 8, 7], list(range(30, 90))]


@pytest.fixture(autouse=True)
def _give_memory_back():
    """Each test's engines hold their KV cache in torch's allocator: hand it back to the device, so the next
    engine (in this file or the next one of the same run) sizes its cache from truly free memory."""
    yield
    gc.collect()
    torch.cuda.empty_cache()


@pytest.mark.parametrize("family", ["llama", "gemma3"])
def test_captured_decode_graphs_give_the_eager_tokens(family, tmp_path) -> None:
    """decode_graphs="auto" on a GPU captures; in fp32 the replayed graphs must give the eager engine's tokens."""
    _tiny(family, tmp_path)
    options = dict(num_blocks=64, block_size=16, max_seqs=8, max_model_len=128, dtype="float32")
    eager = Engine(tmp_path, decode_graphs="off", **options)
    graphs = Engine(tmp_path, decode_graphs="auto", **options)
    assert graphs.graphs is not None and graphs.graphs.captured and graphs.model.ops.triton
    assert graphs.graphs.sizes == [1, 2, 4, 8] and graphs.graphs.max_context == 128
    assert graphs.generate(PROMPTS, GREEDY) == eager.generate(PROMPTS, GREEDY)


def test_bf16_engine_with_graphs_against_transformers(tmp_path) -> None:
    import transformers

    _tiny("qwen2", tmp_path)
    hf = transformers.AutoModelForCausalLM.from_pretrained(tmp_path, dtype=torch.float32).eval().to("cuda")
    engine = Engine(tmp_path, num_blocks=64, block_size=16, max_seqs=4, max_model_len=128)
    assert engine.dtype == torch.bfloat16 and engine.graphs is not None and engine.graphs.captured
    for prompt, got in zip(PROMPTS, engine.generate(PROMPTS, GREEDY)):
        assert_like_transformers(hf, prompt, got, exact=False)


def test_the_default_cache_leaves_room_for_the_graphs_and_the_steps(tmp_path) -> None:
    """The cache sized from free memory (less a step's workspace), then every graph size captured, then a full
    prefill chunk and a full decode batch: none of it runs out of memory."""
    _tiny("llama", tmp_path)
    # blocks of 128: the tiny model's cache in 90% of a large GPU is still a few million blocks to manage
    engine = Engine(tmp_path, block_size=128, memory_fraction=0.9, max_seqs=64, max_batch_tokens=2048,
                    max_model_len=256)
    assert engine.graphs is not None and engine.graphs.captured and engine.graphs.sizes[-1] == 64
    prompts = [[int(t) for t in torch.randint(10, 290, (32,), generator=torch.Generator().manual_seed(i))]
               for i in range(64)]
    outs = engine.generate(prompts, SamplingParams(max_tokens=8, ignore_eos=True))
    assert all(len(o) == 8 for o in outs)
