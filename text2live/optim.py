"""MADGRAD with one operation per update for all parameters.

:class:`MADGRAD` is the ``madgrad`` package's optimiser (the reference's) with the dense update of
``madgrad.MADGRAD.step`` written with ``torch._foreach_*`` operations: one dispatched operation (one fused kernel
on CUDA) per line of the update instead of one per parameter tensor. The arithmetic is the package's, operation for
operation, so the parameters follow the same trajectory bit for bit (tests/test_optim.py), and its state dict is
the package's, so checkpoints load in either. Sparse gradients and half-precision parameters take the package's
own loop.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import madgrad
import torch


class MADGRAD(madgrad.MADGRAD):
    """``madgrad.MADGRAD`` (same arguments, same state), stepping all parameters of a group at once."""

    @torch.no_grad()
    def step(self, closure: Callable[[], float] | None = None) -> float | None:
        params = [p for group in self.param_groups for p in group["params"] if p.grad is not None]
        if any(p.grad.is_sparse or p.dtype != torch.float32 or p.grad.dtype != torch.float32 for p in params):
            return super().step(closure)
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        if "k" not in self.state:
            self.state["k"] = torch.tensor([0], dtype=torch.long)
        k = self.state["k"].item()
        for group in self.param_groups:
            self._step_group(group, k)
        self.state["k"] += 1
        return loss

    def _step_group(self, group: dict, k: int) -> None:
        params = [p for p in group["params"] if p.grad is not None]
        if not params:
            return
        eps, lr, decay, momentum = group["eps"], group["lr"], group["weight_decay"], group["momentum"]
        if lr != 0.0:
            lr = lr + eps  # for stability, as the package
        decouple_decay = group.get("decouple_decay", False)
        ck = 1 - momentum
        lamb = lr * math.pow(k + 1, 0.5)
        for p in params:
            state = self.state[p]
            if "grad_sum_sq" not in state:
                state["grad_sum_sq"] = torch.zeros_like(p).detach()
                state["s"] = torch.zeros_like(p).detach()
                if momentum != 0:
                    state["x0"] = torch.clone(p).detach()
        grads = [p.grad for p in params]
        sums = [self.state[p]["grad_sum_sq"] for p in params]
        ss = [self.state[p]["s"] for p in params]
        if decay != 0 and not decouple_decay:
            torch._foreach_add_(grads, params, alpha=decay)
        if momentum == 0:
            rms = torch._foreach_pow(sums, 1 / 3)
            torch._foreach_add_(rms, eps)
            x0 = torch._foreach_addcdiv(params, ss, rms, value=1)
        else:
            x0 = [self.state[p]["x0"] for p in params]
        torch._foreach_addcmul_(sums, grads, grads, value=lamb)
        rms = torch._foreach_pow(sums, 1 / 3)
        torch._foreach_add_(rms, eps)
        if eps == 0:
            for r in rms:
                r[r == 0] = float("inf")
        torch._foreach_add_(ss, grads, alpha=lamb)
        old = [p.clone() for p in params] if decay != 0 and decouple_decay else None
        z = torch._foreach_addcdiv(x0, ss, rms, value=-1)
        if momentum == 0:
            torch._foreach_copy_(params, z)
        else:
            torch._foreach_mul_(params, 1 - ck)
            torch._foreach_add_(params, z, alpha=ck)
        if old is not None:
            torch._foreach_add_(params, old, alpha=-lr * decay)
