"""fp32 master weights: updates below bf16's resolution accumulate instead of rounding away, fp32 parameters are
stepped exactly as before, and the masters survive a checkpoint round trip."""

from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")


def _adamw(lr: float):
    return lambda params: torch.optim.AdamW(params, lr=lr, weight_decay=0.0)


def _steps(layer: torch.nn.Module, optimizer, n: int) -> None:
    for _ in range(n):
        layer.weight.grad = torch.ones_like(layer.weight)  # AdamW then moves every weight by lr per step
        optimizer.step()
        optimizer.zero_grad()


def test_updates_below_bf16_resolution_accumulate() -> None:
    """Weights of 1.0 in bf16 (spacing 2^-8 just below 1.0) and ten AdamW steps of 1e-3: each step alone rounds back
    to 1.0, as a bf16 optimizer shows; with fp32 masters the ten add up to -0.01 and the bf16 weight follows."""
    from hanlin.plugins.finetuners.master_weights import MasterWeights

    plain = torch.nn.Linear(4, 4, bias=False).to(torch.bfloat16)
    torch.nn.init.ones_(plain.weight)
    _steps(plain, torch.optim.AdamW(plain.parameters(), lr=1e-3, weight_decay=0.0), 10)
    assert torch.equal(plain.weight, torch.ones_like(plain.weight))  # the problem: every update rounded away

    layer = torch.nn.Linear(4, 4, bias=False).to(torch.bfloat16)
    torch.nn.init.ones_(layer.weight)
    master = MasterWeights(list(layer.parameters()), _adamw(1e-3))
    assert master.low_precision == 1
    _steps(layer, master, 10)
    assert layer.weight.dtype == torch.bfloat16
    torch.testing.assert_close(master.masters[0], torch.full((4, 4), 0.99), rtol=0, atol=1e-4)
    torch.testing.assert_close(layer.weight, torch.full((4, 4), 0.99, dtype=torch.bfloat16), rtol=0, atol=0)


def test_fp32_parameters_are_stepped_in_place_as_before() -> None:
    from hanlin.plugins.finetuners.master_weights import MasterWeights

    torch.manual_seed(0)
    a = torch.nn.Linear(4, 4)
    b = torch.nn.Linear(4, 4)
    b.load_state_dict(a.state_dict())
    master = MasterWeights(list(a.parameters()), _adamw(1e-2))
    assert master.low_precision == 0 and all(m is p for m, p in zip(master.masters, a.parameters()))
    reference = torch.optim.AdamW(b.parameters(), lr=1e-2, weight_decay=0.0)
    x = torch.randn(8, 4)
    for _ in range(3):
        for layer, opt in ((a, master), (b, reference)):
            layer(x).square().sum().backward()
            if opt is master:
                opt.step(1.0)
            else:
                torch.nn.utils.clip_grad_norm_(b.parameters(), 1.0)
                opt.step()
            opt.zero_grad()
    for pa, pb in zip(a.parameters(), b.parameters()):
        torch.testing.assert_close(pa, pb, rtol=0, atol=0)


def test_masters_survive_a_checkpoint() -> None:
    """A resumed run continues from the fp32 masters, not from the rounded bf16 weights."""
    from hanlin.errors import ConfigurationError
    from hanlin.plugins.finetuners.master_weights import MasterWeights

    first = torch.nn.Linear(4, 4, bias=False).to(torch.bfloat16)
    torch.nn.init.ones_(first.weight)
    master = MasterWeights(list(first.parameters()), _adamw(1e-3))
    _steps(first, master, 3)  # masters at 0.997, weights still 1.0 in bf16
    state = master.state_dict()

    second = torch.nn.Linear(4, 4, bias=False).to(torch.bfloat16)
    torch.nn.init.ones_(second.weight)
    resumed = MasterWeights(list(second.parameters()), _adamw(1e-3))
    resumed.load_state_dict(state)
    torch.testing.assert_close(resumed.masters[0], master.masters[0], rtol=0, atol=0)
    _steps(second, resumed, 7)
    _steps(first, master, 7)
    torch.testing.assert_close(second.weight, first.weight, rtol=0, atol=0)
    torch.testing.assert_close(second.weight, torch.full((4, 4), 0.99, dtype=torch.bfloat16), rtol=0, atol=0)
    with pytest.raises(ConfigurationError, match="optimizer state"):
        resumed.load_state_dict(state["optimizer"])  # a plain optimizer's state, as older checkpoints hold
