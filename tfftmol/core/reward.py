"""Terminal rewards as the core sees them: tensors in, tensors out.

A terminal reward scores final states ``x_1`` (shape ``(B, *state_shape)``).
It gives the *true* reward used for the tail indicator, the threshold and
evaluation, and a gradient used as the Adjoint Matching terminal condition.
For a differentiable reward both come from the same function; a molecular
reward takes values from RDKit on decoded molecules and the gradient from a
differentiable surrogate (``tfftmol.chem``), so the core never needs to know.

Optional hooks, declared here and looked up only through the helpers below
(the core never probes a reward for undeclared attributes):

* ``fit_offline(x, values, valid)``: called once on the stage-1 offline batch
  (e.g. to fit a surrogate or warm-start a value model);
* ``grad(x)``: the terminal gradient alone, when cheaper than ``value_and_grad``;
* ``cache_key``: a string that identifies the reward for the offline-batch cache;
* ``state_dict()`` / ``load_state_dict(d)``: reward state that a resumed run must restore;
* ``has_grad``: ``False`` for a reward that gives values only (an RDKit score, a black-box
  oracle): ``value_and_grad`` may then return ``grad=None``, and stage 2 learns a value model
  instead of back-propagating the reward (``AMConfig.stage2 = "auto"``; :mod:`tfftmol.core.value`).
  Absent means ``True``;
* ``value_pairs(n, generator)``: ``(x_t, t, r(x_1))`` pairs of the *pre-trained* process (e.g.
  noised training data, :func:`tfftmol.core.value.noised_pairs`) that warm-start the value model
  of the values-only stage 2, in place of the noised offline batch;
* ``ceiling_scores(x, values, valid)``: out-of-fold scores ``(n,)`` of the offline batch by the
  predictor that drives stage 2 (e.g. a surrogate fitted as a run's first fit, on the other
  folds), for the information ceiling of ``tfftmol plan --ceiling`` (:mod:`tfftmol.core.ceiling`).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Optional, Protocol, runtime_checkable

import torch

__all__ = ["TerminalReward", "RewardBatch", "DifferentiableReward", "OPTIONAL_HOOKS", "reward_hook", "reward_cache_key",
           "reward_has_grad", "stage2_path", "RewardFailureError"]


class RewardFailureError(RuntimeError):
    """Too large a fraction of a batch failed in the reward function itself (it raised or returned NaN/inf).

    Attributes:
        failed, n: how many of the batch's ``n`` samples failed (``None`` when not given).
    """

    def __init__(self, message: str, failed: Optional[int] = None, n: Optional[int] = None):
        super().__init__(message)
        self.failed, self.n = failed, n


@dataclass
class RewardBatch:
    """Rewards of a batch.

    Attributes:
        values: ``(B,)`` float tensor, higher is better (invalid samples carry their penalty).
        valid: ``(B,)`` bool tensor.
        grad: ``(B, *state_shape)`` gradient of the (surrogate) reward w.r.t. ``x``, or ``None``
            (always ``None`` for a reward that declares ``has_grad = False``).
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


OPTIONAL_HOOKS = ("fit_offline", "grad", "cache_key", "state_dict", "load_state_dict", "has_grad", "value_pairs",
                  "ceiling_scores")


def reward_hook(reward: object, name: str):
    """The optional hook ``name`` of a reward (one of :data:`OPTIONAL_HOOKS`), or ``None`` if it has none."""
    if name not in OPTIONAL_HOOKS:
        raise ValueError(f"hook={name!r} is not a declared reward hook; declared: {list(OPTIONAL_HOOKS)}")
    return getattr(reward, name, None)


def reward_has_grad(reward: object) -> bool:
    """Whether a reward supplies a terminal gradient: its declared ``has_grad`` (default ``True``)."""
    flag = reward_hook(reward, "has_grad")
    return True if flag is None else bool(flag)


def stage2_path(stage2: str, reward: object) -> str:
    """The stage-2 path (``"gradient"``, ``"value"`` or ``"weighted"``) the setting ``stage2`` takes for ``reward``:
    ``"auto"`` is ``"value"`` for a reward that declares ``has_grad = False``, else ``"gradient"``."""
    if stage2 in ("value", "weighted"):
        return stage2
    return "value" if stage2 == "auto" and not reward_has_grad(reward) else "gradient"


def reward_cache_key(reward: object) -> str:
    """The reward's ``cache_key`` if declared, else its ``name``, else its class name."""
    key = reward_hook(reward, "cache_key")
    if key is not None:
        return str(key)
    return str(getattr(reward, "name", type(reward).__name__))


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
