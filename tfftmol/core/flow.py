"""The flow-model interface every model in tfftmol implements.

Convention (docs/design.md §1): interpolant ``x_t = t x_1 + (1 - t) x_0`` with
``x_0 ~ N(0, I)`` (noise) at ``t = 0`` and data at ``t = 1``; ``velocity``
returns ``dx_t/dt`` of the marginal flow.  The core only ever sees tensors of
shape ``(B, *state_shape)`` and callables: a molecular model packs its graph
into such a tensor, a 2D model uses ``state_shape == (2,)``.
"""
from __future__ import annotations

import math
from typing import Any, Optional, Protocol, Sequence, runtime_checkable

import torch
from torch import nn

__all__ = ["FlowModel", "VelocityModule", "gaussian_prior", "model_device", "time_features", "sinusoidal_embedding", "TIME_FEATURES",
           "zero_output_mlp"]


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
        p = next((q for q in self.parameters() if q.is_floating_point()), None)
        if device is None:
            device = p.device if p is not None else "cpu"
        # in the parameters' dtype: a float64 flow (``model.double()``) samples in float64
        return gaussian_prior(n, self.state_shape, generator=generator, device=device,
                              dtype=p.dtype if p is not None else torch.float32)


TIME_FEATURES = 17  # width of time_features(t) at its default n = 8


def time_features(t: torch.Tensor, n: int = 8) -> torch.Tensor:
    """Fourier features of ``t`` in [0, 1]: ``[t, sin(k pi t), cos(k pi t)]`` for ``k = 1..n``.

    Args:
        t: times, shape ``(B,)``.
    Returns:
        ``(B, 2 n + 1)``; the time input of the MLP flows and of the residual correction.
    """
    freqs = torch.arange(1, n + 1, device=t.device, dtype=t.dtype) * math.pi
    return torch.cat([t[:, None], torch.sin(t[:, None] * freqs), torch.cos(t[:, None] * freqs)], 1)


def sinusoidal_embedding(t: torch.Tensor, dim: int, scale: float = 1000.0) -> torch.Tensor:
    """Transformer-style sinusoidal embedding of ``t`` in [0, 1] (``t`` scaled by ``scale``), shape ``(B, dim)``.

    Frequencies ``exp(-log(scale) k / (dim/2 - 1))`` for ``k = 0..dim/2-1``; sines then cosines.
    """
    half = dim // 2
    freqs = torch.exp(torch.arange(half, device=t.device, dtype=t.dtype) * (-math.log(scale) / max(half - 1, 1)))
    ang = (t[:, None] * scale) * freqs[None]
    return torch.cat([torch.sin(ang), torch.cos(ang)], dim=-1)


def model_device(model: Any) -> torch.device:
    """Device of a module's first parameter (CPU for closed-form models)."""
    p = next(model.parameters(), None) if isinstance(model, nn.Module) else None
    return p.device if p is not None else torch.device("cpu")


def zero_output_mlp(d_in: int, d_out: int, hidden: int, layers: int) -> nn.Sequential:
    """``layers`` SiLU layers of width ``hidden``, then a linear output initialised to zero.

    The zero output makes a residual correction (or a value model) start as exactly nothing,
    so a fine-tuned flow begins as the pre-trained one.
    """
    dims = [d_in] + [hidden] * layers
    mods: list[nn.Module] = []
    for a, b in zip(dims[:-1], dims[1:]):
        mods += [nn.Linear(a, b), nn.SiLU()]
    last = nn.Linear(dims[-1], d_out)
    nn.init.zeros_(last.weight)
    nn.init.zeros_(last.bias)
    return nn.Sequential(*mods, last)
