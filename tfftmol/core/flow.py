"""The flow-model interface every model in tfftmol implements.

Convention (DESIGN.md §1): interpolant ``x_t = t x_1 + (1 - t) x_0`` with
``x_0 ~ N(0, I)`` (noise) at ``t = 0`` and data at ``t = 1``; ``velocity``
returns ``dx_t/dt`` of the marginal flow.  The core only ever sees tensors of
shape ``(B, *state_shape)`` and callables: a molecular model packs its graph
into such a tensor, a 2D model uses ``state_shape == (2,)``.
"""
from __future__ import annotations

from typing import Any, Optional, Protocol, Sequence, runtime_checkable

import torch
from torch import nn

__all__ = ["FlowModel", "VelocityModule", "gaussian_prior"]


@runtime_checkable
class FlowModel(Protocol):
    """Anything that can be sampled from and fine-tuned by tfftmol.

    Attributes:
        state_shape: shape of one sample, without the batch dimension.

    Methods:
        velocity(x, t, cond=None): ``(B, *state_shape)`` tensor of velocities at
            states ``x`` (same shape) and times ``t`` (shape ``(B,)``, in [0, 1],
            0 = noise, 1 = data).  ``cond`` is an optional per-sample condition
            (e.g. a class label, shape ``(B,)``) or ``None``.
        sample_prior(n, generator=None, device=None): ``n`` draws of ``x_0``.
        decode(x): optional; maps a batch of final states to domain objects
            (molecules, images).  Models without a decoder may omit it.
    """

    state_shape: Sequence[int]

    def velocity(self, x: torch.Tensor, t: torch.Tensor, cond: Optional[Any] = None) -> torch.Tensor: ...

    def sample_prior(self, n: int, generator: Optional[torch.Generator] = None,
                     device: Optional[torch.device | str] = None) -> torch.Tensor: ...


def gaussian_prior(n: int, state_shape: Sequence[int], generator: Optional[torch.Generator] = None,
                   device: Optional[torch.device | str] = None, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """Standard normal draws of shape ``(n, *state_shape)``: the ``t = 0`` end of the path."""
    if generator is not None and device is not None and torch.device(device).type != generator.device.type:
        x = torch.randn((n, *state_shape), generator=generator, dtype=dtype)
        return x.to(device)
    return torch.randn((n, *state_shape), generator=generator, device=device, dtype=dtype)


class VelocityModule(nn.Module):
    """Base class for trainable flows: an ``nn.Module`` that is also a :class:`FlowModel`.

    Subclasses implement ``forward(x, t, cond=None)`` returning the velocity;
    ``velocity`` is an alias so the fine-tuner can treat modules and closed-form
    models alike.  ``state_shape`` must be set in ``__init__``.
    """

    state_shape: Sequence[int] = ()

    def velocity(self, x: torch.Tensor, t: torch.Tensor, cond: Optional[Any] = None) -> torch.Tensor:
        return self(x, t, cond)

    def sample_prior(self, n: int, generator: Optional[torch.Generator] = None,
                     device: Optional[torch.device | str] = None) -> torch.Tensor:
        if device is None:
            p = next(self.parameters(), None)
            device = p.device if p is not None else "cpu"
        return gaussian_prior(n, self.state_shape, generator=generator, device=device)
