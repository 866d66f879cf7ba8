"""fp32 master weights for trainable parameters stored in bf16 or fp16 (a full fine-tune of a bf16 model).

bf16 keeps 8 bits of mantissa: a weight of 1.0 cannot move by less than 2^-8, so an update of lr * step below
half of that rounds back to the same value on every step and training silently stalls on the small updates that
a low learning rate, a late cosine schedule or a small gradient produce. The optimizer therefore runs on fp32
copies of those parameters: gradients are copied up, clipped and applied in fp32, and the model's low-precision
weights are refreshed from the copies after each step, so updates accumulate until they show. Parameters already
in fp32 (LoRA adapters, fp32 runs) are stepped in place, as before, at no extra cost.

The fp32 copies are part of the optimizer's state (``state_dict``), so a resumed run continues from them rather
than from the rounded weights.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

class MasterWeights:
    """An optimizer built by ``make_optimizer`` over fp32 masters of ``params``; ``step`` clips and applies the
    gradients the model's parameters hold, then writes the result back into them."""

    def __init__(self, params: Sequence[Any], make_optimizer: Callable[[list[Any]], Any]) -> None:
        self.params = list(params)
        self.masters = [_master(p) for p in self.params]
        self.optimizer = make_optimizer(self.masters)  # an LR scheduler is built on this one

    @property
    def low_precision(self) -> int:
        """How many parameters have an fp32 master (the others are stepped in place)."""
        return sum(1 for p, m in zip(self.params, self.masters) if m is not p)

    def step(self, max_grad_norm: float | None = None) -> None:
        import torch

        for p, m in zip(self.params, self.masters):
            if m is not p:
                m.grad = None if p.grad is None else p.grad.detach().float()
        if max_grad_norm:
            torch.nn.utils.clip_grad_norm_(self.masters, max_grad_norm)
        self.optimizer.step()
        self._write_back()

    def zero_grad(self) -> None:
        for p, m in zip(self.params, self.masters):
            p.grad = None
            m.grad = None

    def _write_back(self) -> None:
        import torch

        with torch.no_grad():
            for p, m in zip(self.params, self.masters):
                if m is not p:
                    p.copy_(m)

    def state_dict(self) -> dict[str, Any]:
        masters = [m.detach().cpu() if m is not p else None for p, m in zip(self.params, self.masters)]
        return {"optimizer": self.optimizer.state_dict(), "masters": masters}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restores the optimizer and the fp32 masters (and the model's weights from them)."""
        import torch

        from hanlin.errors import ConfigurationError

        if set(state) != {"optimizer", "masters"} or len(state["masters"]) != len(self.masters):
            raise ConfigurationError("the checkpoint's optimizer state does not match this run's trainable parameters "
                                     "(written by another hanlin version or another model); start fresh in a new "
                                     "output_dir")
        self.optimizer.load_state_dict(state["optimizer"])
        with torch.no_grad():
            for m, saved in zip(self.masters, state["masters"]):
                if saved is not None:
                    m.copy_(saved.to(m.device))
        self._write_back()


def _master(param: Any) -> Any:
    import torch

    if param.dtype not in (torch.bfloat16, torch.float16):
        return param
    return param.detach().float().clone().requires_grad_(True)
