"""The one flow-matching pre-training loop (Lipman et al. 2023, conditional flow matching).

Interpolant ``x_t = t x_1 + (1 - t) x_0`` with ``x_0 ~ N(0, I)`` (``t = 0`` noise,
``t = 1`` data); the network regresses the velocity ``x_1 - x_0`` with a squared
error summed over the state and averaged over the batch.  Adam with cosine decay to
``lr * lr_final_fraction``.  With labels, each label is replaced by ``null_label``
with probability ``p_uncond`` (classifier-free guidance training).

Random draws per step, from one generator seeded by ``seed``, in this order: the
minibatch indices, the label-dropout uniforms (with labels), ``x_0``, ``t``.
"""
from __future__ import annotations

from typing import Callable, Optional

import numpy as np
import torch
from torch import nn

__all__ = ["train_flow_matching"]


def train_flow_matching(velocity: Callable[..., torch.Tensor], params, data: torch.Tensor,
                        labels: Optional[torch.Tensor] = None, *, steps: int = 3000, batch_size: int = 512,
                        lr: float = 2e-3, lr_final_fraction: float = 0.02, seed: int = 0, p_uncond: float = 0.0,
                        null_label: int = -1, progress: bool = False, log_every: int = 0,
                        log: Callable[[str], None] = print, desc: str = "flow matching") -> list[float]:
    """Train ``velocity(x_t, t[, labels])`` by flow matching on ``data`` ``(n, *state_shape)``.

    Args:
        velocity: the network's velocity, ``f(x_t, t)`` or ``f(x_t, t, labels)`` with ``t`` of shape ``(B,)``.
        params: the parameters to optimise.
        labels: optional ``(n,)`` integer labels (conditional flows).
        p_uncond, null_label: label dropout for classifier-free guidance.

    Returns:
        the loss of every step.
    """
    if not isinstance(steps, int) or steps < 1:
        raise ValueError(f"steps={steps!r} must be an integer >= 1")
    gen = torch.Generator().manual_seed(seed)
    opt = torch.optim.Adam(params, lr=lr)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, steps, eta_min=lr * lr_final_fraction)
    losses: list[float] = []
    it = range(steps)
    if progress:
        from tqdm.auto import tqdm
        it = tqdm(it, desc=desc, mininterval=10)
    for s in it:
        idx = torch.randint(0, len(data), (batch_size,), generator=gen)
        x1 = data[idx]
        c = None
        if labels is not None:
            c = labels[idx].clone()
            c[torch.rand(batch_size, generator=gen) < p_uncond] = null_label
        x0 = torch.randn(x1.shape, generator=gen)
        t = torch.rand(batch_size, generator=gen)
        tt = t.reshape(-1, *([1] * (x1.dim() - 1)))
        xt = tt * x1 + (1 - tt) * x0
        pred = velocity(xt, t) if c is None else velocity(xt, t, c)
        loss = ((pred - (x1 - x0)) ** 2).flatten(1).sum(1).mean()  # velocity target: data - noise
        opt.zero_grad()
        loss.backward()
        opt.step()
        sched.step()
        losses.append(float(loss.detach()))
        if log_every and (s + 1) % log_every == 0:
            log(f"step {s + 1}: loss {np.mean(losses[-log_every:]):.4f}")
    return losses
