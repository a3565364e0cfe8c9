"""Terminal rewards as the core sees them: tensors in, tensors out.

A terminal reward scores final states ``x_1`` (shape ``(B, *state_shape)``).
It gives the *true* reward used for the tail indicator, the threshold and
evaluation, and a gradient used as the Adjoint Matching terminal condition.
For a differentiable reward both come from the same function; a molecular
reward takes values from RDKit on decoded molecules and the gradient from a
differentiable surrogate (``tfftmol.chem``), so the core never needs to know.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Optional, Protocol, runtime_checkable

import torch

__all__ = ["TerminalReward", "RewardBatch", "DifferentiableReward"]


@dataclass
class RewardBatch:
    """Rewards of a batch.

    Attributes:
        values: ``(B,)`` float tensor, higher is better (invalid samples carry their penalty).
        valid: ``(B,)`` bool tensor.
        grad: ``(B, *state_shape)`` gradient of the (surrogate) reward w.r.t. ``x``, or ``None``.
    """

    values: torch.Tensor
    valid: torch.Tensor
    grad: Optional[torch.Tensor] = None


@runtime_checkable
class TerminalReward(Protocol):
    """What the fine-tuner needs from a reward."""

    def evaluate(self, x: torch.Tensor) -> RewardBatch:
        """True rewards of final states (no gradient)."""

    def value_and_grad(self, x: torch.Tensor) -> RewardBatch:
        """True rewards plus the gradient used for the terminal adjoint."""


class DifferentiableReward:
    """Wrap a differentiable ``fn(x) -> (B,)`` as a :class:`TerminalReward`.

    Args:
        fn: a torch function of ``x`` of shape ``(B, *state_shape)``.
        name: display name.
    """

    def __init__(self, fn: Callable[[torch.Tensor], torch.Tensor], name: str = "reward"):
        self.fn = fn
        self.name = name

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        return self.fn(x)

    @torch.no_grad()
    def evaluate(self, x: torch.Tensor) -> RewardBatch:
        v = self.fn(x)
        return RewardBatch(v, torch.isfinite(v))

    def value_and_grad(self, x: torch.Tensor) -> RewardBatch:
        with torch.enable_grad():
            xr = x.detach().requires_grad_(True)
            v = self.fn(xr)
            (g,) = torch.autograd.grad(v.sum(), xr)
        return RewardBatch(v.detach(), torch.isfinite(v.detach()), g.detach())
