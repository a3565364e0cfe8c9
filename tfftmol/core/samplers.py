"""ODE and memoryless-SDE sampling in the call forms of earlier releases.

The one sampling loop is :func:`tfftmol.core.sampling.sample`; the SDE maths is
in :mod:`tfftmol.core.sde`.  ``sample_ode`` and ``sample_sde`` remain as thin
wrappers with their earlier signatures and the same random draws.
"""
from __future__ import annotations

from typing import Any, Callable, Optional

import torch

from .flow import FlowModel
from .sampling import Trajectory, sample
from .sde import memoryless_drift, sigma_memoryless, time_grid

__all__ = ["Trajectory", "time_grid", "sigma_memoryless", "memoryless_drift",
           "sample_ode", "sample_sde", "VelocityFn"]

VelocityFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def _result(out, return_trajectory: bool):
    return out.trajectory if return_trajectory else out.x


def sample_ode(model: FlowModel, n: int, steps: int = 50, method: str = "euler",
               generator: Optional[torch.Generator] = None, device=None, cond: Optional[Any] = None,
               x0: Optional[torch.Tensor] = None, return_trajectory: bool = False):
    """Integrate ``dX = v dt`` from noise at ``t = 0`` to data at ``t = 1`` (``method`` "euler" or "heun").

    Returns the samples ``(n, *state_shape)`` or, with ``return_trajectory``, a
    :class:`~tfftmol.core.sampling.Trajectory` on ``t_0 .. t_N``.
    """
    if method not in ("euler", "heun"):
        raise ValueError(f"method={method!r} must be one of 'euler', 'heun'")
    if steps < 1:
        raise ValueError(f"steps={steps} must be an integer >= 1")
    out = sample(model, n, method=method, steps=steps, generator=generator, device=device, cond=cond,
                 x0=x0, return_trajectory=return_trajectory)
    return _result(out, return_trajectory)


def sample_sde(model: FlowModel, n: int, steps: int = 50, generator: Optional[torch.Generator] = None,
               device=None, cond: Optional[Any] = None, x_start: Optional[torch.Tensor] = None,
               return_trajectory: bool = False):
    """Euler–Maruyama on the memoryless SDE from ``t_1 = h`` (see :mod:`tfftmol.core.sde`).

    Returns the samples ``(n, *state_shape)`` or a trajectory with ``N`` states on ``t_1 .. t_N``.
    """
    if steps < 2:
        raise ValueError(f"steps={steps} must be >= 2 for the memoryless SDE")
    out = sample(model, n, method="sde", steps=steps, generator=generator, device=device, cond=cond,
                 x0=x_start, return_trajectory=return_trajectory)
    return _result(out, return_trajectory)
