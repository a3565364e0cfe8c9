"""Path estimators between a fine-tuned flow and its base: the KL estimate and Girsanov weights.

Under the memoryless SDE (:mod:`tfftmol.core.sde`) a fine-tuned flow has drift
``b_base + sigma u`` with the control ``u = 2 (v_model - v_base) / sigma``.

* **KL**: ``KL(p_model || p_base) = E_Q sum_k 0.5 |u_k|^2 h`` (for the memoryless
  schedule the path KL equals the KL of the final marginals).
* **Importance weights**: ``log dP_base/dQ = -sum_k (u_k · dW_k + 0.5 |u_k|^2 h)``
  with the increments ``dW_k = sqrt(h) eps_k`` that drove the path; its conditional
  expectation given ``X_1`` is ``p_base(X_1) / q(X_1)``, so self-normalised weights
  turn samples of the fine-tuned model into estimates under the pre-trained one.

Both come from one pass of :func:`tfftmol.core.sampling.sample` with ``base=...``.
"""
from __future__ import annotations

from typing import Optional

import torch

from .flow import FlowModel
from .sampling import model_device, sample

__all__ = ["estimate_kl", "sample_importance"]


@torch.no_grad()
def estimate_kl(model: FlowModel, base: FlowModel, n: int = 2000, steps: int = 50, seed: int = 0,
                cond_sampler=None, batch_size: int = 1000) -> float:
    """Control-cost estimate of ``KL(p_model || p_base)``: ``E sum_k 0.5 ||u(X_k, t_k)||^2 h``.

    Trajectories follow ``model`` under the memoryless SDE, seeded by ``seed``; ``u``
    is summed over ``t_1 .. t_{N-1}`` (it is not needed at ``t = 1``).  A model
    against itself gives exactly 0.
    """
    out = sample(model, n, method="sde", steps=steps, generator=torch.Generator().manual_seed(seed),
                 cond_sampler=cond_sampler, batch_size=batch_size, base=base, prior=base,
                 device=model_device(model))
    return out.kl


@torch.no_grad()
def sample_importance(model: FlowModel, base: FlowModel, n: int, steps: int = 50,
                      generator: Optional[torch.Generator] = None, cond_sampler=None, batch_size: int = 2000):
    """Samples of a fine-tuned ``model`` with importance log-weights toward ``base``.

    Returns:
        ``(x1, logw)``: samples ``(n, *state_shape)`` and Girsanov log-weights ``(n,)`` (float64);
        ``E_Q[f(X_1) exp(logw)] = E_base[f]``.
    """
    gen = generator or torch.Generator().manual_seed(0)
    out = sample(model, n, method="sde", steps=steps, generator=gen, cond_sampler=cond_sampler,
                 batch_size=batch_size, base=base, prior=base, device=model_device(model))
    return out.x, out.log_weights
