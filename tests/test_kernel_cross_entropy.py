"""The fused cross-entropy kernel (loss and gradient in one forward) against torch's, on random inputs."""

from __future__ import annotations

import importlib.util
import os

import pytest

torch = pytest.importorskip("torch")
if importlib.util.find_spec("triton") is None:
    pytest.skip("triton is not installed (pip install 'hanlin[gpu]' or triton)", allow_module_level=True)
if not torch.cuda.is_available() and os.environ.get("TRITON_INTERPRET") != "1":
    pytest.skip("no GPU and TRITON_INTERPRET is not 1 (set it before importing hanlin.kernels)", allow_module_level=True)

from hanlin.kernels.cross_entropy import cross_entropy, cross_entropy_ref  # noqa: E402
from tests.test_kernels import DEVICE, rand  # noqa: E402

# loss is a sum over rows of fp32 log-sum-exps; the gradient is a softmax stored in the logits' dtype
TOL = {torch.float32: (1e-4, 1e-5), torch.float16: (2e-3, 2e-3), torch.bfloat16: (1e-2, 1.6e-2)}


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
@pytest.mark.parametrize("rows,vocab", [(1, 37), (5, 1000), (3, 5003)])
def test_loss_and_gradient_match_torch(dtype, rows, vocab) -> None:
    logits = (rand(rows, vocab, seed=rows + vocab) * 4).to(dtype)
    g = torch.Generator().manual_seed(vocab)
    targets = torch.randint(0, vocab, (rows,), generator=g).to(DEVICE)
    if rows > 2:
        targets[1] = -100  # an ignored row: no loss, no gradient
    ref_in = logits.clone().requires_grad_(True)
    expected = cross_entropy_ref(ref_in, targets)
    expected.backward(torch.tensor(0.5, device=DEVICE))
    ours_in = logits.clone().requires_grad_(True)
    loss = cross_entropy(ours_in.clone(), targets)  # the kernel writes over the tensor it is given
    loss.backward(torch.tensor(0.5, device=DEVICE))
    atol, rtol = TOL[dtype]
    torch.testing.assert_close(loss, expected, atol=atol * rows, rtol=rtol)
    torch.testing.assert_close(ours_in.grad.float(), ref_in.grad.float(), atol=atol, rtol=rtol)
    if rows > 2:
        assert torch.count_nonzero(ours_in.grad[1]) == 0


def test_bad_shapes_are_refused() -> None:
    with pytest.raises(ValueError, match="logits \\[tokens, vocab\\]"):
        cross_entropy(rand(2, 3, 4), torch.zeros(2, dtype=torch.long, device=DEVICE))


# ---- RMSNorm for training (forward + backward) -----------------------------------------------------
from hanlin.kernels.rmsnorm_train import rms_norm, rms_norm_ref  # noqa: E402


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
@pytest.mark.parametrize("shape,offset", [((3, 64), 0.0), ((2, 5, 576), 0.0), ((4, 100), 1.0)])
def test_rmsnorm_forward_and_backward_match_torch(dtype, shape, offset) -> None:
    x = rand(*shape, dtype=dtype, seed=shape[-1])
    w = (rand(shape[-1], seed=7) * 0.5 + (0.0 if offset else 1.0)).to(dtype)
    dy = rand(*shape, dtype=dtype, seed=3)
    ref_x, ref_w = x.clone().requires_grad_(True), w.clone().requires_grad_(True)
    ours_x, ours_w = x.clone().requires_grad_(True), w.clone().requires_grad_(True)
    expected = rms_norm_ref(ref_x, ref_w, 1e-6, offset)
    expected.backward(dy)
    got = rms_norm(ours_x, ours_w, 1e-6, offset)
    got.backward(dy)
    atol, rtol = TOL[dtype]
    torch.testing.assert_close(got.float(), expected.float(), atol=atol, rtol=rtol)
    torch.testing.assert_close(ours_x.grad.float(), ref_x.grad.float(), atol=atol * 4, rtol=rtol)
    rows = x.numel() // shape[-1]
    torch.testing.assert_close(ours_w.grad.float(), ref_w.grad.float(), atol=atol * rows, rtol=rtol * 2)
