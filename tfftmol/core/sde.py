"""The memoryless SDE of Adjoint Matching: every sign and time direction in one place.

Conventions (docs/design.md §3.1-§3.3): time runs from ``t = 0`` (noise) to ``t = 1`` (data)
on the uniform grid ``t_k = k / N`` with step ``h = 1 / N``.

* noise schedule ``sigma(t) = sqrt(2 (1 - t) / t)`` (Domingo-Enrich et al. 2025,
  the memoryless schedule): infinite at ``t = 0``, zero at ``t = 1``;
* base drift ``b(x, t) = 2 v(x, t) - x / t`` (singular at ``t = 0``);
* a fine-tuned velocity ``v_ft`` defines the control
  ``u = 2 (v_ft - v_base) / sigma``, so the controlled drift is ``b_base + sigma u``;
* one Euler–Maruyama step ``x' = x + h (2 v - x / t) + sqrt(h) sigma(t) eps``.

The ``t = 0`` singularity is handled by the grid: Euler–Maruyama starts at
``t_1 = h`` from ``X ~ N(0, I)``, where the factor ``(1 - h / t_1)`` in front of
``X`` is exactly zero, so ``1 / t`` is never evaluated at ``t = 0``.  A grid that
started below ``h`` would flip the sign of that factor (and of the ``-I / t``
term of the adjoint's drift Jacobian, see :func:`adjoint_step`).
"""
from __future__ import annotations

import torch

__all__ = ["time_grid", "sde_grid", "sigma_memoryless", "memoryless_drift", "control", "em_step",
           "adjoint_step", "bcast_time", "expand_time"]


def time_grid(steps: int, device=None, dtype=torch.float32) -> torch.Tensor:
    """``t_k = k / steps`` for ``k = 0..steps``, shape ``(steps + 1,)`` (the ODE grid)."""
    if not isinstance(steps, int) or steps < 1:
        raise ValueError(f"steps={steps!r} must be an integer >= 1")
    return torch.arange(steps + 1, device=device, dtype=dtype) / steps


def sde_grid(steps: int, device=None, dtype=torch.float32) -> torch.Tensor:
    """``t_1 = h, ..., t_N = 1``, shape ``(steps,)``: the memoryless-SDE grid (``t = 0`` left out)."""
    if not isinstance(steps, int) or steps < 2:
        raise ValueError(f"steps={steps!r} must be an integer >= 2 for the memoryless SDE")
    return time_grid(steps, device=device, dtype=dtype)[1:]


def sigma_memoryless(t: torch.Tensor) -> torch.Tensor:
    """``sigma(t) = sqrt(2 (1 - t) / t)``; infinite at ``t = 0``, zero at ``t = 1``."""
    return torch.sqrt(2.0 * (1.0 - t) / t)


def bcast_time(t: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """Reshape a scalar or ``(B,)`` time to broadcast against ``x`` of shape ``(B, *S)``."""
    if t.dim() == 0:
        return t
    return t.reshape(t.shape[0], *([1] * (x.dim() - 1)))


def expand_time(t: torch.Tensor, n: int) -> torch.Tensor:
    """A scalar time as a ``(n,)`` batch of times; a ``(n,)`` time unchanged."""
    return t.expand(n) if t.dim() == 0 else t


def memoryless_drift(v: torch.Tensor, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """Base drift ``b = 2 v - x / t`` (requires ``t > 0``)."""
    return 2.0 * v - x / bcast_time(t, x)


def control(v_ft: torch.Tensor, v_base: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """Control ``u = 2 (v_ft - v_base) / sigma(t)`` of a fine-tuned flow; ``t`` scalar or ``(B,)``, ``0 < t < 1``.

    The fine-tuned SDE's drift is ``b_base + sigma u``; its path KL to the base is
    ``E sum_k 0.5 |u_k|^2 h``.
    """
    return 2.0 * (v_ft - v_base) / bcast_time(sigma_memoryless(t), v_ft)


def em_step(x: torch.Tensor, v: torch.Tensor, t: torch.Tensor, h: float, eps: torch.Tensor) -> torch.Tensor:
    """One Euler–Maruyama step of ``dX = (2 v - X / t) dt + sigma(t) dW`` from time ``t`` to ``t + h``.

    Args:
        x: states ``(B, *S)`` at time ``t`` (scalar tensor, ``t >= h``).
        v: the velocity at ``(x, t)`` of the model being sampled.
        eps: standard normal draws of the same shape (``dW = sqrt(h) eps``).
    """
    return x + h * (2.0 * v - x / t) + (h ** 0.5) * sigma_memoryless(t) * eps


def adjoint_step(a: torch.Tensor, vjp: torch.Tensor, t: torch.Tensor, h: float,
                 exponential: bool = False) -> torch.Tensor:
    """One backward step of the lean adjoint ``da/dt = -J_b^T a`` with ``J_b = 2 J_v - I / t``.

    ``a_k = a_{k+1} + h (2 J_v(X_k, t_k)^T a_{k+1} - a_{k+1} / t_k)``, where ``vjp``
    is ``J_v^T a_{k+1}``; time runs backwards from ``t = 1`` to ``t_1 = h``.

    ``exponential=True`` integrates the stiff ``-I / t`` part exactly over ``[t_k, t_k + h]``:
    ``a_k = (t_k / (t_k + h)) a_{k+1} + 2 h J_v^T a_{k+1}``.  Euler's factor ``1 - h / t_k`` is 0 at
    ``t_1`` and 1/2 at ``t_2`` where the flow's own factor is 1/2 and 2/3 (docs/design.md §4.7).
    """
    if exponential:
        return (t / (t + h)) * a + 2.0 * h * vjp
    return a + h * (2.0 * vjp - a / t)
