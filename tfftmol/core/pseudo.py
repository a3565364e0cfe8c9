"""Terminal transforms of the reward: the TFFT pseudo-rewards and the expected-reward baseline.

Stage 2 of TFFT (docs/design.md §2.5-§2.6) fine-tunes towards ``p*(x) ∝ p_pre(x) exp(g(r(x)) / alpha)``
with a transform ``g`` of the reward ``r``:

* right tail: ``g(r) = (r - eta*)_+ / (1 - beta)``,  ``g'(r) = 1[r > eta*] / (1 - beta)``;
* left tail:  ``h(r) = -(eta* - r)_+ / beta``,       ``h'(r) = 1[r < eta*] / beta``;
* expected-reward baseline: ``g(r) = r``, ``g'(r) = 1``.

The chain rule gives the terminal gradient ``grad_x g = g'(r(x)) grad_x r(x)``,
so a transform only needs its value and its derivative in ``r``.  Both accept
numpy arrays (computed in float64) or torch tensors (dtype and device kept)
of any shape, and return the same type and shape.

An optional ``smoothing = tau > 0`` replaces the hinge ``(z)_+`` by
``tau * softplus(z / tau)``, which has the same asymptotes and tends to the
hinge as ``tau -> 0``; its derivative is ``sigmoid(z / tau)``.  The exact hinge
(``smoothing = 0``) is the default.
"""
from __future__ import annotations

import dataclasses

from dataclasses import dataclass
from typing import Any, Optional, Union

import numpy as np
import torch

from .risk import check_beta, check_tail

__all__ = ["TerminalTransform", "PseudoReward", "ExpectedReward"]

ArrayLike = Union[np.ndarray, torch.Tensor]


def _hinge(z: ArrayLike, tau: float) -> ArrayLike:
    """``(z)_+`` (``tau = 0``) or ``tau * softplus(z / tau)``, elementwise."""
    if isinstance(z, torch.Tensor):
        # logaddexp(z, 0) = softplus(z) without torch's linear switch at z/tau > 20
        return torch.clamp(z, min=0.0) if tau == 0 else tau * torch.logaddexp(z / tau, torch.zeros_like(z))
    return np.maximum(z, 0.0) if tau == 0 else tau * np.logaddexp(0.0, z / tau)


def _step(z: ArrayLike, tau: float) -> ArrayLike:
    """Derivative of :func:`_hinge`: ``1[z > 0]`` (``tau = 0``) or ``sigmoid(z / tau)``."""
    if isinstance(z, torch.Tensor):
        return (z > 0).to(z.dtype) if tau == 0 else torch.sigmoid(z / tau)
    return (z > 0).astype(np.float64) if tau == 0 else np.exp(-np.logaddexp(0.0, -z / tau))


def _as_array(r: Any) -> ArrayLike:
    return r if isinstance(r, torch.Tensor) else np.asarray(r, dtype=np.float64)


class TerminalTransform:
    """A scalar transform ``g(r)`` of the terminal reward, with derivative ``g'(r)``.

    Subclasses implement :meth:`value` and :meth:`grad`; both map rewards of any
    shape (numpy array or torch tensor) to an array of the same shape and type.
    """

    def value(self, r: ArrayLike) -> ArrayLike:
        """``g(r)``, elementwise."""
        raise NotImplementedError

    def grad(self, r: ArrayLike) -> ArrayLike:
        """``g'(r) = dg/dr``, elementwise."""
        raise NotImplementedError

    def regression_weights(self, r: torch.Tensor) -> Optional[torch.Tensor]:
        """Per-trajectory weights (mean 1) of the Adjoint Matching regression for the batch rewards ``r``, or
        ``None`` (the default: every trajectory counts once).  The on-policy threshold tracker uses it for
        its tail balance (:meth:`tfftmol.core.tracking.ThresholdTracker.regression_weights`)."""
        return None

    def __call__(self, r: ArrayLike) -> ArrayLike:
        return self.value(r)


@dataclass(frozen=True)
class ExpectedReward(TerminalTransform):
    """The expected-reward baseline: ``g(r) = r``, ``g'(r) = 1``."""

    def value(self, r: ArrayLike) -> ArrayLike:
        r = _as_array(r)
        return r.clone() if isinstance(r, torch.Tensor) else r.copy()

    def grad(self, r: ArrayLike) -> ArrayLike:
        r = _as_array(r)
        return torch.ones_like(r) if isinstance(r, torch.Tensor) else np.ones_like(r)


@dataclass(frozen=True)
class PseudoReward(TerminalTransform):
    """The TFFT pseudo-reward of stage 2.

    * ``tail="right"``: ``g(r) = (r - eta)_+ / (1 - beta)``, ``g'(r) = 1[r > eta] / (1 - beta)``;
    * ``tail="left"``:  ``h(r) = -(eta - r)_+ / beta``,      ``h'(r) = 1[r < eta] / beta``.

    Both derivatives are ``>= 0``: raising a reward never lowers the pseudo-reward.

    Attributes:
        tail: ``"right"`` or ``"left"``.
        beta: tail level in ``(0, 1)``.
        eta: the stage-1 threshold ``eta*`` (finite).
        smoothing: softplus temperature ``tau >= 0`` replacing the hinge; 0 = exact hinge.

    Example:
        >>> g = PseudoReward("right", beta=0.5, eta=1.0)
        >>> g.value(np.array([0.0, 2.0])).tolist(), g.grad(np.array([0.0, 2.0])).tolist()
        ([0.0, 2.0], [0.0, 2.0])
    """

    tail: str
    beta: float
    eta: float
    smoothing: float = 0.0

    def __post_init__(self):
        check_tail(self.tail)
        object.__setattr__(self, "beta", check_beta(self.beta))
        eta = float(self.eta)
        if not np.isfinite(eta):
            raise ValueError(f"eta={self.eta!r} must be a finite number")
        object.__setattr__(self, "eta", eta)
        tau = float(self.smoothing)
        if not (np.isfinite(tau) and tau >= 0.0):
            raise ValueError(f"smoothing={self.smoothing!r} must be a finite number >= 0 (0 = exact hinge)")
        object.__setattr__(self, "smoothing", tau)

    @classmethod
    def from_threshold(cls, result: Any, smoothing: float = 0.0) -> "PseudoReward":
        """The pseudo-reward of a stage-1 :class:`~tfftmol.core.threshold.ThresholdResult`."""
        return cls(tail=result.tail, beta=result.beta, eta=result.eta, smoothing=smoothing)

    @property
    def scale(self) -> float:
        """``1 / (1 - beta)`` (right) or ``1 / beta`` (left): the slope on the active side."""
        return 1.0 / (1.0 - self.beta) if self.tail == "right" else 1.0 / self.beta

    def value(self, r: ArrayLike) -> ArrayLike:
        r = _as_array(r)
        if self.tail == "right":
            return self.scale * _hinge(r - self.eta, self.smoothing)
        return -self.scale * _hinge(self.eta - r, self.smoothing)

    def grad(self, r: ArrayLike) -> ArrayLike:
        r = _as_array(r)
        z = r - self.eta if self.tail == "right" else self.eta - r  # > 0 on the active side
        return self.scale * _step(z, self.smoothing)

    def active(self, r: ArrayLike) -> ArrayLike:
        """Boolean mask of rewards on the gradient side: ``r > eta`` (right) or ``r < eta`` (left)."""
        r = _as_array(r)
        return r > self.eta if self.tail == "right" else r < self.eta


class AdaptiveHinge(TerminalTransform):
    """The exact pseudo-reward with a batch-adaptive threshold: the ``"adaptive"`` continuation.

    For each on-policy batch the hinge sits at

        right: ``eta_b = min(eta*, Q_batch(1 - a_min))``,   left: ``eta_b = max(eta*, Q_batch(a_min))``,

    so at least a fraction ``a_min`` of the batch is on the gradient side.  While the
    model has too little mass beyond ``eta*``, ``eta_b`` lies inside it and the target
    tilts *more* than ``p*`` (a strong, dense signal toward the tail); once the model's
    own ``a_min``-tail lies beyond ``eta*``, ``eta_b = eta*`` and the target is exactly
    ``p*``.  At the optimum the mass beyond ``eta*`` is ``1 - beta`` (right) or ``beta``
    (left), so with ``a_min`` below it the fixed point is the exact TFFT target.
    """

    def __init__(self, exact: PseudoReward, a_min: float):
        self.exact = exact
        self.a_min = float(a_min)
        self.last_eta = exact.eta

    def _at(self, r) -> PseudoReward:
        rr = r.detach().double() if isinstance(r, torch.Tensor) else torch.as_tensor(r, dtype=torch.float64)
        if self.exact.tail == "right":
            eta_b = min(self.exact.eta, float(torch.quantile(rr, 1 - self.a_min)))
        else:
            eta_b = max(self.exact.eta, float(torch.quantile(rr, self.a_min)))
        self.last_eta = eta_b
        return dataclasses.replace(self.exact, eta=eta_b)

    def value(self, r):
        return self._at(r).value(r)

    def grad(self, r):
        return self._at(r).grad(r)
