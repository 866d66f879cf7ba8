"""The shared sampler (hanlin.runtimes.sampling): the distribution it draws from, its cuts, row independence, no
host reads, and that nothing in a runtime touches torch's global RNG."""

from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")

from hanlin.runtimes.sampling import new_generator, sample, sample_token  # noqa: E402

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"


def _draw(logits, n, **cut):
    g = new_generator(DEVICE, 0)
    rows = logits.expand(n, -1).contiguous()
    args = {"top_k": [0] * n, "top_p": [1.0] * n, "min_p": [0.0] * n}
    args.update({k: [v] * n for k, v in cut.items()})
    return sample(rows, [1.0] * n, generators=[g] * n, **args)


def test_draws_follow_the_softmax() -> None:
    probs = torch.tensor([0.5, 0.3, 0.15, 0.05])
    tokens = _draw(probs.log().to(DEVICE)[None], 20000)
    freq = torch.bincount(tokens.cpu(), minlength=4).float() / 20000
    assert torch.allclose(freq, probs, atol=0.015), freq


def test_cuts_keep_only_what_they_allow() -> None:
    logits = torch.tensor([[3.0, 2.5, 2.0, 0.0, -1.0]], device=DEVICE)
    assert set(_draw(logits, 3000, top_k=2).tolist()) == {0, 1}
    assert set(_draw(logits, 3000, top_p=0.5).tolist()) == {0, 1}  # 0.46 before token 1: it stays, token 2 not
    assert set(_draw(logits, 3000, min_p=0.5).tolist()) == {0, 1}  # exp(-1) of the top: token 2 is under half
    assert set(_draw(logits, 3000).tolist()) == {0, 1, 2, 3, 4}


def test_greedy_rows_and_sampled_rows_share_a_batch() -> None:
    logits = torch.randn(3, 50, generator=torch.Generator().manual_seed(0)).to(DEVICE)
    gens = [new_generator(DEVICE, 5) for _ in range(3)]
    out = sample(logits, [0.0, 1.0, 0.0], [0] * 3, [1.0] * 3, [0.0] * 3, gens)
    assert out[0] == logits[0].argmax() and out[2] == logits[2].argmax()


def test_a_seeded_row_gives_the_same_tokens_whatever_shares_the_batch() -> None:
    logits = torch.randn(4, 100, generator=torch.Generator().manual_seed(1)).to(DEVICE)

    def run(rows: list[int]) -> list[int]:
        gens = [new_generator(DEVICE, 42 + r) for r in rows]
        picked = []
        for _ in range(20):
            n = len(rows)
            picked.append(sample(logits[rows], [0.8] * n, [10] * n, [0.9] * n, [0.05] * n, gens).tolist())
        return [[step[i] for step in picked] for i in range(len(rows))]

    together = run([0, 1, 2, 3])
    assert [run([r])[0] for r in range(4)] == together


def test_sampling_never_reads_the_device_per_row(monkeypatch) -> None:
    """The token choice stays a device tensor: no .item()/.tolist()/.cpu() inside (the caller reads the batch
    once). On a GPU each of those would be a sync per row."""
    logits = torch.randn(8, 64, generator=torch.Generator().manual_seed(2)).to(DEVICE)
    gens = [new_generator(DEVICE, i) for i in range(8)]

    def boom(*args, **kwargs):
        raise AssertionError("a host read inside sample()")

    for name in ("item", "tolist", "cpu", "__int__", "__bool__", "__float__"):
        monkeypatch.setattr(torch.Tensor, name, boom)
    out = sample(logits, [0.7] * 8, [5] * 8, [0.9] * 8, [0.05] * 8, gens)
    monkeypatch.undo()
    assert out.shape == (8,) and out.device == logits.device


def test_sample_token_is_seeded_on_the_cpu() -> None:
    logits = torch.randn(100, generator=torch.Generator().manual_seed(3))
    one = [sample_token(logits, 1.0, None, None, torch.Generator().manual_seed(7)) for _ in range(3)]
    assert len(set(one)) == 1 and sample_token(logits, 0.0, None, None, None) == int(logits.argmax())


def test_the_gpu_engine_leaves_torchs_rng_alone(tmp_path) -> None:
    """An unseeded request used to seed its generator with torch.seed(), which reseeds the process's RNG."""
    pytest.importorskip("transformers")
    from hanlin.runtimes.gpu.engine import Engine
    from hanlin.runtimes.gpu.sequence import SamplingParams
    from tests.test_gpu_runtime import _tiny

    _tiny("llama", tmp_path)
    engine = Engine(tmp_path, num_blocks=32, block_size=4, kernels="torch", dtype="float32")
    torch.manual_seed(123)
    state = torch.random.get_rng_state()
    engine.generate([[1, 2, 3]], SamplingParams(max_tokens=4, temperature=1.0, ignore_eos=True))
    assert torch.equal(torch.random.get_rng_state(), state)
    seeded = SamplingParams(max_tokens=6, temperature=1.0, seed=9, ignore_eos=True)
    assert engine.generate([[1, 2, 3]], seeded) == engine.generate([[1, 2, 3], [4, 5]], seeded)[:1]
