"""ODE and memoryless-SDE samplers for flow models (DESIGN.md §1).

Time runs from ``t = 0`` (noise) to ``t = 1`` (data) on the uniform grid
``t_k = k / N``.

* ODE: ``dX = v(X, t) dt``, Euler or Heun, from ``t_0 = 0``.
* Memoryless SDE (Adjoint Matching, Domingo-Enrich et al. 2025, Eq. (9) with the
  memoryless schedule): ``dX = b(X, t) dt + sigma(t) dW`` with
  ``sigma(t) = sqrt(2 (1 - t) / t)`` and base drift ``b = 2 v - x / t``.
  Both are singular at ``t = 0``.  We handle it explicitly: Euler–Maruyama
  starts at ``t_1 = h`` with ``X ~ N(0, I)``, where the factor ``(1 - h / t_1)``
  in front of ``X`` is exactly zero, so no ``1/t`` is ever evaluated at ``t=0``.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Optional

import torch

from .flow import FlowModel

__all__ = ["Trajectory", "time_grid", "sigma_memoryless", "memoryless_drift",
           "sample_ode", "sample_sde", "VelocityFn"]

VelocityFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


@dataclass
class Trajectory:
    """States on a time grid.

    Attributes:
        xs: states, shape ``(K, B, *state_shape)``; ``xs[-1]`` is the sample at ``t = 1``.
        ts: times, shape ``(K,)``, increasing, ``ts[-1] == 1``.
        cond: the per-sample condition used to sample, or ``None``.
    """

    xs: torch.Tensor
    ts: torch.Tensor
    cond: Optional[Any] = None

    @property
    def final(self) -> torch.Tensor:
        """The samples at ``t = 1``, shape ``(B, *state_shape)``."""
        return self.xs[-1]


def time_grid(steps: int, device=None, dtype=torch.float32) -> torch.Tensor:
    """``t_k = k / steps`` for ``k = 0..steps``, shape ``(steps + 1,)``."""
    if steps < 1:
        raise ValueError(f"steps={steps} must be an integer >= 1")
    return torch.arange(steps + 1, device=device, dtype=dtype) / steps


def sigma_memoryless(t: torch.Tensor) -> torch.Tensor:
    """``sigma(t) = sqrt(2 (1 - t) / t)``; infinite at ``t = 0``, zero at ``t = 1``."""
    return torch.sqrt(2.0 * (1.0 - t) / t)


def memoryless_drift(v: torch.Tensor, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """Base drift ``b = 2 v - x / t`` (requires ``t > 0``; ``t`` broadcast over the batch)."""
    tt = _bcast(t, x)
    return 2.0 * v - x / tt


def _bcast(t: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """Reshape a ``(B,)`` or scalar time to broadcast against ``x`` of shape ``(B, ...)``."""
    if t.dim() == 0:
        return t
    return t.reshape(t.shape[0], *([1] * (x.dim() - 1)))


def _vel(model: FlowModel | VelocityFn, x, t, cond):
    tb = t.expand(x.shape[0]) if t.dim() == 0 else t
    if hasattr(model, "velocity"):
        return model.velocity(x, tb, cond)
    return model(x, tb) if cond is None else model(x, tb, cond)


@torch.no_grad()
def sample_ode(model: FlowModel, n: int, steps: int = 50, method: str = "euler",
               generator: Optional[torch.Generator] = None, device=None, cond: Optional[Any] = None,
               x0: Optional[torch.Tensor] = None, return_trajectory: bool = False):
    """Integrate ``dX = v dt`` from noise at ``t = 0`` to data at ``t = 1``.

    Args:
        model: a :class:`FlowModel`.
        n: number of samples.
        steps: number of uniform steps ``N`` (``h = 1/N``).
        method: ``"euler"`` or ``"heun"`` (Heun's last step uses the Euler
            predictor's velocity at ``t = 1`` too, so the model must accept ``t = 1``).
        x0: optional initial noise, shape ``(n, *state_shape)``.

    Returns:
        The samples, shape ``(n, *state_shape)``, or a :class:`Trajectory` if
        ``return_trajectory``.
    """
    if method not in ("euler", "heun"):
        raise ValueError(f"method={method!r} must be one of 'euler', 'heun'")
    x = model.sample_prior(n, generator=generator, device=device) if x0 is None else x0.clone()
    ts = time_grid(steps, device=x.device, dtype=x.dtype)
    h = 1.0 / steps
    xs = [x] if return_trajectory else None
    for k in range(steps):
        t = ts[k]
        v = _vel(model, x, t, cond)
        if method == "heun":
            x_pred = x + h * v
            v2 = _vel(model, x_pred, ts[k + 1], cond)
            x = x + 0.5 * h * (v + v2)
        else:
            x = x + h * v
        if return_trajectory:
            xs.append(x)
    if return_trajectory:
        return Trajectory(torch.stack(xs), ts, cond)
    return x


@torch.no_grad()
def sample_sde(model: FlowModel, n: int, steps: int = 50, generator: Optional[torch.Generator] = None,
               device=None, cond: Optional[Any] = None, x_start: Optional[torch.Tensor] = None,
               return_trajectory: bool = False):
    """Euler–Maruyama on the memoryless SDE ``dX = (2 v - X/t) dt + sigma(t) dW``.

    The grid is ``t_k = k/N``; integration starts at ``t_1 = h`` from
    ``X ~ N(0, I)`` (the marginal at small ``t``), so the first drift's ``-X/t``
    term cancels ``X`` exactly and ``t = 0`` is never evaluated.  The returned
    trajectory therefore has ``N`` states at ``t_1..t_N`` (``ts[0] == h``).

    Returns:
        The samples ``(n, *state_shape)`` or a :class:`Trajectory` with
        ``xs`` of shape ``(N, n, *state_shape)``.
    """
    if steps < 2:
        raise ValueError(f"steps={steps} must be >= 2 for the memoryless SDE")
    x = model.sample_prior(n, generator=generator, device=device) if x_start is None else x_start.clone()
    ts = time_grid(steps, device=x.device, dtype=x.dtype)[1:]  # t_1 .. t_N
    h = 1.0 / steps
    xs = [x] if return_trajectory else None
    for k in range(steps - 1):
        t = ts[k]
        v = _vel(model, x, t, cond)
        drift = 2.0 * v - x / t
        noise = torch.randn(x.shape, generator=generator, dtype=x.dtype,
                            device=generator.device if generator is not None else x.device).to(x.device)
        x = x + h * drift + (h ** 0.5) * sigma_memoryless(t) * noise
        if return_trajectory:
            xs.append(x)
    if return_trajectory:
        return Trajectory(torch.stack(xs), ts, cond)
    return x
