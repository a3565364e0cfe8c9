"""What scoring a batch returns (:class:`RewardResult`), and the one place a failing score becomes NaN.

Scoring one valid molecule ends in an :data:`Outcome` ``(value, reason,
message)``: ``(v, "ok", "")``, or ``(nan, "reward_error", "<exception>")`` if
the reward raised, or ``(nan, "reward_nan", ...)`` if it returned NaN or
+-inf.  :func:`outcome` is the only code that makes that decision; the reasons
are :mod:`tfftmol.chem.mol`'s.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Callable

import numpy as np

from tfftmol.chem.mol import OK, REASONS, REWARD_ERROR, REWARD_NAN

__all__ = ["REASONS", "Outcome", "outcome", "RewardResult"]

#: ``(value, reason, message)`` of one molecule; ``value`` is NaN unless ``reason == "ok"``.
Outcome = tuple[float, str, str]


#: Longest traceback kept in a message (the first failure of a batch carries one; see :func:`outcome`).
MAX_TRACEBACK = 4000


def outcome(score: Callable[[], float], with_traceback: bool = False) -> Outcome:
    """Run ``score()`` on one valid molecule and classify the result (never raises).

    An exception (including ``SystemExit``, e.g. a config's ``fn: sys:exit``; not
    ``KeyboardInterrupt``) becomes ``reward_error``; with ``with_traceback`` its message
    ends with the formatted traceback (the first failure of a batch, for the run's log).
    """
    try:
        v = float(score())
    except (Exception, SystemExit) as e:  # noqa: BLE001 - a failing reward is counted, not fatal
        msg = f"{type(e).__name__}: {e}"
        if with_traceback:
            import traceback
            tb = "".join(traceback.format_exception(e))
            msg += "\n" + (tb if len(tb) <= MAX_TRACEBACK else "..." + tb[-MAX_TRACEBACK:])
        return (float("nan"), REWARD_ERROR, msg)
    if not math.isfinite(v):
        return (float("nan"), REWARD_NAN, f"reward returned {v}")
    return (v, OK, "")


@dataclass
class RewardResult:
    """Rewards of a batch of ``n`` samples.

    Attributes:
        values: ``(n,)`` float64; the reward, with the penalty where invalid.
        valid: ``(n,)`` bool; ``True`` iff the reason is ``"ok"``.
        raw: ``(n,)`` float64; the reward where valid, ``np.nan`` where invalid
            (use it for statistics over valid molecules only).
        reasons: length ``n``; one of :data:`tfftmol.chem.mol.REASONS` per sample.
        counts: reason -> number of samples, every reason in ``REASONS`` present.
        messages: reason -> the first error message seen for it (for reports).
        penalty: the penalty used for invalid samples.
    """

    values: np.ndarray
    valid: np.ndarray
    raw: np.ndarray
    reasons: list[str]
    counts: dict[str, int]
    messages: dict[str, str] = field(default_factory=dict)
    penalty: float = float("nan")

    def __len__(self) -> int:
        return len(self.values)

    @property
    def validity(self) -> float:
        """Fraction of valid samples in [0, 1] (``nan`` for an empty batch)."""
        return float(self.valid.mean()) if len(self.valid) else float("nan")

    def summary(self) -> str:
        """One line: counts by reason and the mean reward with and without invalid samples."""
        parts = [f"{k}={v}" for k, v in self.counts.items() if v or k == OK]
        mean_all = float(np.mean(self.values)) if len(self.values) else float("nan")
        mean_ok = float(np.nanmean(self.raw)) if self.valid.any() else float("nan")
        return f"n={len(self)} " + " ".join(parts) + f" mean={mean_all:.4g} mean_valid={mean_ok:.4g}"
