"""Stage 2 converges to the self-consistent threshold: on-policy tracking of ``eta`` and its guards.

**Why.**  Stage 1 solves ``eta*`` on samples of the *pre-trained* model (docs/design.md §2.4; this module: §5.5-§5.6).
When ``alpha (1 - beta)`` (right) or ``alpha beta`` (left) is small against the reward's
spread, those samples barely see the tilted tail and the estimate is biased (low, for
the right tail).  The tilt ``exp((r - eta)_+ / (alpha (1 - beta)))`` is exponential in
``eta``: an error ``delta`` multiplies the tilted tail mass by about
``exp(delta / (alpha (1 - beta)))``, so a small bias sends almost all mass into the tail.

**The self-consistency condition.**  With ``m(eta) = P_{p_eta}(r > eta)`` the tail mass of
the target ``p_eta ∝ p_pre exp(g_eta / alpha)`` at threshold ``eta``, the stage-1 objective has
``F'(eta) = 1 - m(eta) / (1 - beta)``; ``F`` is convex, so ``m`` decreases in ``eta`` and
``eta*`` is the *unique* root of ``m(eta) = 1 - beta`` (left: ``P_{p_eta}(r < eta) = beta``).
Stage 2 samples its own model on-policy, every step, under the memoryless SDE: as the model
approaches ``p_eta`` its batch shows ``m``.  :class:`ThresholdTracker` finds the root by a
Robbins-Monro step on the log-odds of the batch's mass beyond ``eta`` (``mode="mass"``)::

    eta <- eta + gain * alpha (1 - beta) * (logit(mass) - logit(1 - beta))      (right; minus for left)

in the tilt's own scale ``alpha (1 - beta)`` (the tilted tail's odds change by about
``exp(-delta / (alpha (1 - beta)))`` when ``eta`` moves by ``delta``).  Its fixed point
``(model = p_eta, mass beyond eta = 1 - beta)`` is exactly ``(p*, eta*)``: the final target is
the exact TFFT optimum, not a surrogate.  ``mode="quantile"`` moves ``eta`` toward the batch's
beta-quantile instead (same fixed point); measured with a model that samples ``p_eta`` exactly
(batch 2000), its ``eta`` fluctuates 8x more in the right tail (sd 0.0095 vs 0.0012): where the
tilt is strong the target's density at ``eta*`` is low, so the quantile map overshoots
(slope about -8 on the measured case) and amplifies batch noise.

Early in stage 2 the model is still near ``p_pre``, whose beta-quantile lies below ``eta*`` in
both tails; following it would over-tilt the right tail (the runaway again) and under-tilt the
left one.  So for the first ``hold`` fraction of the steps ``eta`` may only move *up* from the
stage-1 value (the direction of the stage-1 bias); afterwards it moves freely.

**Catch-up** (right tail, ``TrackingConfig.catch_up``).  The mass rule climbs by a bounded step; at
small ``alpha (1 - beta)`` the model can outrun it: with most of the batch beyond ``eta`` the hinge
is a linear tilt of most of the batch, the whole distribution moves (a runaway), ``eta`` then climbs
past it, the hinge goes flat and the model collapses back to ``p_pre``, where the gradient spikes of
the swing leave Adam's second moments inflated and the model frozen (docs/design.md §5.5).  So when
``catch_up_batches`` consecutive batches (default 2) have more mass beyond ``eta`` than the band's
upper end, ``eta`` jumps to the batch's beta-quantile at once; the fixed point is unchanged.  A
runaway persists from batch to batch; a single batch of 64 crosses the band on noise alone (the
demo config jumped on such batches and realised 0.49 and 0.45 of stage 1's gain on seeds 0 and 2,
against 0.53 and 0.50 without the jumps).

**Tail balance** (``TrackingConfig.balance``; ``TFFTConfig.track_balance``).  The runaway and the collapse
come from a feedback inside Adjoint Matching: its regression target is an expectation under the *current*
model, and for a hinge tilt it grows with the current model's mass beyond ``eta``, so a model with too much
tail mass gets a stronger target and one with too little a weaker one.  With a tracked ``eta`` this turns
into a cycle of runaway, catch-up, collapse and regrowth that never settles (docs/design.md §5.5).  The
tracker therefore hands the trainer per-trajectory weights (:meth:`ThresholdTracker.regression_weights`):
``kappa / m`` for the batch's trajectories beyond ``eta`` and ``(1 - kappa) / (1 - m)`` for the others, ``m``
the batch's mass beyond ``eta`` and ``kappa`` the target's.  The weighted batch has exactly the target's
tail mass; at the self-consistent optimum every weight is 1, so the fixed point is unchanged.

The dead-hinge continuation is kept: the hinge actually used on a batch is
``min(eta, Q_batch(1 - a_min))`` (right) / ``max(eta, Q_batch(a_min))`` (left), as in
:class:`~tfftmol.core.tfft.AdaptiveHinge`; with ``a_min`` below the target tail mass it
equals ``eta`` at the fixed point.

**Guards** (checked every step on exponential moving averages, after ``warmup``):

* the on-policy mass beyond ``eta`` must stay within ``band`` (relative) of ``1 - beta``
  (left: ``beta``), except a left tail whose mass is still above the band: that model lags its
  target, and the snap below would weaken the tilt toward it, so the lag is reported, not
  corrected (:meth:`ThresholdTracker._lagging`);
* the KL estimate (control cost of the batch) must stay below ``kl_factor`` times the KL that
  stage 1 predicts for the CVaR the model reaches: at the optimum ``CVaR(p*) - alpha KL(p*)``
  equals stage 1's optimal value ``F(eta*)``, so ``KL_pred = (CVaR_batch - F(eta*)) / alpha``
  (floored by stage 1's own ``predicted_kl`` and by ``kl_floor`` nats).  Stage 1's
  ``predicted_kl`` alone is no reference where it is starved: it is computed on pre-trained
  samples that barely see the tail (measured: 0.55 nats against an exact 3.97).

A breach is corrected: if tracking was off (``mode="off"``) ``eta`` snaps to the smoothed
on-policy quantile and tracking turns on; if it was on, tracking is already moving ``eta`` and
the breach is logged.  If the breach persists for ``patience`` consecutive steps,
:class:`ThresholdGuardError` stops the run with a message naming the quantities.

:func:`threshold_trust` is the stage-1 diagnostic: it says when the bootstrap interval on
``eta*`` is too wide at this ``alpha`` and names the ``alpha`` from which it is trustworthy.
"""
from __future__ import annotations

import dataclasses
import math
import warnings
from dataclasses import dataclass, field
from typing import Any, Callable, Optional

import numpy as np
import torch

from .pseudo import PseudoReward, TerminalTransform
from .threshold import ThresholdResult, TfftWarning, solve_eta

__all__ = ["TrackingConfig", "ThresholdTracker", "ThresholdGuardError", "threshold_trust", "TrustReport"]


@dataclass
class TrackingConfig:
    """Settings of the on-policy threshold tracking and its guards.

    Attributes:
        mode: ``"mass"`` (Robbins-Monro on the log-odds of the on-policy mass beyond ``eta``),
            ``"quantile"`` (exponential average toward the batch's beta-quantile) or ``"off"``
            (keep the stage-1 value; the guards still run and turn ``"mass"`` tracking on when
            they fire).
        gain: ``"mass"``: ``eta += gain * alpha * m_t * (logit(mass) - logit(m_t))`` (right; minus
            for left; ``m_t`` the target tail mass); ``"quantile"``: ``eta += gain * (Q - eta)``.
        hold: fraction of the stage-2 steps during which ``eta`` only moves away from the
            over-tilt of the early on-policy quantile (up from stage 1, both tails).
        a_min: the dead-hinge floor on the batch's active fraction (0 = three quarters of the
            target tail mass; ``None`` = off).
        band: ``(low, high)`` allowed ratio of the on-policy tail mass to ``1 - beta`` / ``beta``.
        kl_factor: allowed multiple of the KL stage 1 predicts for the on-policy CVaR,
            ``max((CVaR_batch - F(eta*)) / alpha, predicted_kl, kl_floor)``.
        kl_floor: lower bound of the KL limit, nats.
        smooth: decay of the exponential averages of the mass and the KL used by the guards.
        warmup: fraction of the steps before the guards are checked.
        patience: consecutive steps a breach may persist (after its correction) before the run stops.
        catch_up: right tail, tracking on: when a batch's mass beyond ``eta`` exceeds the band's upper
            end, ``eta`` jumps to the batch's beta-quantile at once (module docstring, "Catch-up").
        catch_up_batches: consecutive batches that must exceed the band's upper end before the jump: a
            runaway persists, a batch that crosses on noise (small batches, few distinct rewards) does not.
    """

    mode: str = "mass"
    gain: float = 0.2
    hold: float = 0.3
    a_min: Optional[float] = 0.0
    band: tuple = (0.5, 2.0)
    kl_factor: float = 3.0
    kl_floor: float = 0.5
    smooth: float = 0.9
    warmup: float = 0.5
    patience: int = 60
    catch_up: bool = True
    catch_up_batches: int = 2
    balance: bool = True

    def __post_init__(self):
        if self.mode not in ("mass", "quantile", "off"):
            raise ValueError(f"mode={self.mode!r} must be one of 'mass', 'quantile', 'off'")
        if not (0 < self.gain <= 1):
            raise ValueError(f"gain={self.gain} must be in (0, 1]")
        if not (0 <= self.hold <= 1):
            raise ValueError(f"hold={self.hold} must be in [0, 1]")
        if not (isinstance(self.catch_up_batches, int) and self.catch_up_batches >= 1):
            raise ValueError(f"catch_up_batches={self.catch_up_batches!r} must be an integer >= 1")
        lo, hi = self.band
        if not (0 < lo < 1 < hi):
            raise ValueError(f"band={self.band} must satisfy 0 < low < 1 < high")
        if not (self.kl_factor > 1):
            raise ValueError(f"kl_factor={self.kl_factor} must be > 1")
        if not (0 <= self.smooth < 1):
            raise ValueError(f"smooth={self.smooth} must be in [0, 1)")
        if not (0 <= self.warmup <= 1):
            raise ValueError(f"warmup={self.warmup} must be in [0, 1]")
        if not (isinstance(self.patience, int) and self.patience >= 1):
            raise ValueError(f"patience={self.patience!r} must be an integer >= 1")
        if self.a_min is not None and self.a_min < 0:
            raise ValueError(f"a_min={self.a_min} must be >= 0 (0 = 0.75 x target tail mass) or None (off)")


class ThresholdGuardError(RuntimeError):
    """Stage 2 left the self-consistent regime and tracking could not correct it.

    Attributes:
        quantities: the numbers the message names (mass, band, KL, limit, eta, stage-1 eta, step).
        trainer: the trainer at the moment of the stop (set by the driver), or ``None``.
    """

    def __init__(self, message: str, quantities: dict):
        super().__init__(message)
        self.quantities = quantities
        self.trainer = None


def _quantile(r: torch.Tensor, q: float) -> float:
    return float(torch.quantile(r.detach().double().flatten(), q))


class ThresholdTracker(TerminalTransform):
    """The TFFT pseudo-reward with an on-policy, self-consistent threshold (module docstring).

    Use it as the trainer's terminal transform; call :meth:`update` once after every training
    step (with the step's KL estimate).  ``value``/``grad`` record the batch rewards they see;
    the threshold is constant within a step.

    Args:
        stage1: the stage-1 :class:`ThresholdResult` (its ``eta``, tail, beta, alpha, predicted KL).
        config: :class:`TrackingConfig`.
        total_steps: the stage-2 step budget (for ``hold`` and ``warmup``).
        smoothing: softplus temperature of the hinge (0 = exact).
        log: where corrections are reported.
    """

    def __init__(self, stage1: ThresholdResult, config: TrackingConfig | None = None, total_steps: int = 1000,
                 smoothing: float = 0.0, log: Callable[[str], None] = print):
        self.cfg = config or TrackingConfig()
        self.stage1 = stage1
        self.tail, self.beta, self.alpha = stage1.tail, stage1.beta, stage1.alpha
        self.eta = float(stage1.eta)
        self.eta0 = float(stage1.eta)
        self.smoothing = float(smoothing)
        self.total = int(total_steps)
        self.target_mass = 1.0 - self.beta if self.tail == "right" else self.beta
        a = self.cfg.a_min
        self.a_min = None if a is None else (0.75 * self.target_mass if a == 0 else float(a))
        if self.a_min is not None and not (0 < self.a_min < self.target_mass):
            raise ValueError(f"a_min={self.a_min} must be in (0, {self.target_mass:g}) (below the target tail mass)")
        self.tracking = self.cfg.mode != "off"
        self.rule = self.cfg.mode if self.cfg.mode != "off" else "mass"
        self.log = log
        self.kl_limit = self.cfg.kl_factor * max(float(stage1.predicted_kl), self.cfg.kl_floor)
        self.cvar_avg: Optional[float] = None
        self.last_rewards: Optional[torch.Tensor] = None
        self.last_eta = self.eta
        self.mass_avg: Optional[float] = None
        self.kl_avg: Optional[float] = None
        self.q_avg: Optional[float] = None
        self.steps_seen = 0
        self.corrections = 0
        self.catch_ups = 0
        self.high_run = 0   # consecutive batches with mass beyond eta above the band (catch-up)
        self.breach_since: Optional[int] = None
        self.last_correction_step: Optional[int] = None
        self.flags: list[str] = []
        self.trace: list[dict] = []

    # -- the transform ------------------------------------------------------------
    def _pseudo(self, r) -> PseudoReward:
        rr = r if isinstance(r, torch.Tensor) else torch.as_tensor(np.asarray(r, dtype=np.float64))
        self.last_rewards = rr.detach()
        eta_b = self.eta
        if self.a_min is not None and rr.numel() > 1:
            if self.tail == "right":
                eta_b = min(eta_b, _quantile(rr, 1 - self.a_min))
            else:
                eta_b = max(eta_b, _quantile(rr, self.a_min))
        self.last_eta = eta_b
        return PseudoReward(self.tail, self.beta, eta_b, self.smoothing)

    def value(self, r):
        return self._pseudo(r).value(r)

    def grad(self, r):
        return self._pseudo(r).grad(r)

    def regression_weights(self, r) -> Optional[torch.Tensor]:
        """Tail balance (``TrackingConfig.balance``): per-trajectory weights, mean 1, that give the batch
        the target's tail mass ``kappa`` beyond ``eta`` (module docstring, "Tail balance"); ``None`` when off.

        A batch with mass ``m`` beyond ``eta`` weights its tail trajectories by ``kappa / m`` and the others by
        ``(1 - kappa) / (1 - m)`` (``m`` clipped to ``[1/B, 1 - 1/B]``).  At the self-consistent optimum
        ``m = kappa`` and every weight is 1.
        """
        if not self.cfg.balance:
            return None
        rr = (r if isinstance(r, torch.Tensor) else torch.as_tensor(np.asarray(r, dtype=np.float64))).detach()
        flat = rr.double().flatten()
        n = flat.numel()
        if n < 2:
            return None
        beyond = self._beyond_mask(flat, self.eta)
        m = min(max(float(beyond.double().mean()), 1.0 / n), 1.0 - 1.0 / n)
        k = self.target_mass
        w = torch.where(beyond, torch.full_like(flat, k / m), torch.full_like(flat, (1.0 - k) / (1.0 - m)))
        return (w / w.mean()).reshape(rr.shape)

    def exact(self) -> PseudoReward:
        """The pseudo-reward at the current tracked threshold (no batch floor)."""
        return PseudoReward(self.tail, self.beta, self.eta, self.smoothing)

    # -- after each step ----------------------------------------------------------
    def _beyond_mask(self, r: torch.Tensor, eta: float) -> torch.Tensor:
        """Which rewards lie in the tail beyond ``eta`` (above it, right; below it, left)."""
        return r > eta if self.tail == "right" else r < eta

    def _beyond(self, r: torch.Tensor, eta: float) -> float:
        return float(self._beyond_mask(r, eta).double().mean())

    def update(self, step: int, kl: Optional[float] = None) -> dict:
        """Move ``eta`` with the last batch, update the guard averages and check the guards.

        Returns the step's record (``eta``, batch quantile, mass beyond ``eta``, averages).
        Raises :class:`ThresholdGuardError` when a breach cannot be corrected.
        """
        r = self.last_rewards
        if r is None or r.numel() < 2:
            return {}
        c = self.cfg
        s = c.smooth
        q = _quantile(r, self.beta)  # right: P(r > q) = 1 - beta; left: P(r < q) = beta
        mass = self._beyond(r, self.eta)
        self.q_avg = q if self.q_avg is None else s * self.q_avg + (1 - s) * q
        self.mass_avg = mass if self.mass_avg is None else s * self.mass_avg + (1 - s) * mass
        rs = torch.sort(r.detach().double().flatten()).values
        k = max(1, int(round(self.target_mass * rs.numel())))
        cv = float(rs[-k:].mean() if self.tail == "right" else rs[:k].mean())  # batch CVaR, own tail
        self.cvar_avg = cv if self.cvar_avg is None else s * self.cvar_avg + (1 - s) * cv
        kl_pred = (self.cvar_avg - float(self.stage1.value)) / self.alpha
        self.kl_limit = self.cfg.kl_factor * max(kl_pred, float(self.stage1.predicted_kl), self.cfg.kl_floor)
        if kl is not None and math.isfinite(kl):
            self.kl_avg = kl if self.kl_avg is None else s * self.kl_avg + (1 - s) * kl
        self.steps_seen += 1
        if self.tracking:
            if self.rule == "quantile":
                new = self.eta + c.gain * (q - self.eta)
            else:  # Robbins-Monro on the log-odds of the mass beyond eta, in the tilt's own scale
                n = r.numel()
                mh = min(max(mass, 0.5 / n), 1 - 0.5 / n)
                tm = self.target_mass
                z = math.log(mh / (1 - mh)) - math.log(tm / (1 - tm))
                step_ = c.gain * self.alpha * tm * z
                new = self.eta + (step_ if self.tail == "right" else -step_)
            if step < c.hold * self.total:  # early: only away from the over-tilt (up, both tails)
                new = max(new, self.eta)
            self.high_run = self.high_run + 1 if mass > c.band[1] * self.target_mass else 0
            if c.catch_up and self.tail == "right" and self.high_run >= c.catch_up_batches:
                # a runaway in the making: the batches are far beyond eta, so the hinge is a linear tilt of
                # most of the batch; jump to the batch's quantile instead of climbing at the bounded step
                new = max(new, q)
                self.catch_ups += 1
            self.eta = float(new)
        rec = {"step": int(step), "eta": self.eta, "eta_used": self.last_eta, "batch_quantile": q,
               "mass_beyond": mass, "mass_avg": self.mass_avg, "kl_avg": self.kl_avg, "kl_limit": self.kl_limit}
        self.trace.append(rec)
        if step >= c.warmup * self.total:
            self._guard(step)
        return rec

    def _lagging(self) -> bool:
        """A left tail whose on-policy mass below ``eta`` is still above the band: the model lags its target.

        Stage 1's tilt lowers the mass below ``eta`` from the pre-trained active fraction (above
        ``beta``) to ``beta``; a model on its way there sits above the band.  Snapping ``eta`` to the
        lagging model's ``beta``-quantile would *lower* it, i.e. weaken the tilt toward the model
        that lags, which then lags less only because the target moved (measured on zinc-selfies
        ``-SA`` left-CVaR_0.1, seeds 0-2: with the snap the batch KL fell from about 0.3 to 0.05 and the
        realisation was 0.13; without it 0.28 at KL 0.27, stage 1 predicting 0.31).  In the right tail the
        lagging side is below the band and the snap *strengthens* the tilt, so only the left tail is
        exempt.  A lag is reported once, not corrected.
        """
        return (self.tail == "left" and self.mass_avg is not None
                and self.mass_avg > self.cfg.band[1] * self.target_mass)

    def _breach(self) -> Optional[str]:
        lo, hi = self.cfg.band
        msgs = []
        if self.mass_avg is not None and not self._lagging() and \
                not (lo * self.target_mass <= self.mass_avg <= hi * self.target_mass):
            side = "above" if self.tail == "right" else "below"
            msgs.append(f"on-policy mass {side} eta={self.eta:.5g} is {self.mass_avg:.3f}, outside the band "
                        f"[{lo * self.target_mass:.3g}, {hi * self.target_mass:.3g}] around "
                        f"{'1 - beta' if self.tail == 'right' else 'beta'} = {self.target_mass:g}")
        if self.kl_avg is not None and self.kl_avg > self.kl_limit:
            msgs.append(f"KL estimate {self.kl_avg:.3g} nats exceeds the limit {self.kl_limit:.3g} = {self.cfg.kl_factor:g} x "
                        f"the KL stage 1 predicts for the on-policy CVaR {self.cvar_avg:.4g} "
                        f"((CVaR - F(eta*) = {self.stage1.value:.4g}) / alpha, at least its predicted KL "
                        f"{self.stage1.predicted_kl:.3g} and {self.cfg.kl_floor:g})")
        return "; ".join(msgs) if msgs else None

    def _note_lag(self) -> None:
        """Report a lagging left tail once (the flags are saved with the tracker, so once per run)."""
        if self._lagging() and not any(f.startswith("lag:") for f in self.flags):
            note = (f"lag: on-policy mass below eta={self.eta:.5g} is {self.mass_avg:.3f} against beta = "
                    f"{self.target_mass:g} after {self.steps_seen} steps: the model has not reached the TFFT "
                    f"target (the threshold is kept; more steps or a more accurate reward model move it further)")
            self.flags.append(note)
            self.log(note)

    def _guard(self, step: int) -> None:
        self._note_lag()
        msg = self._breach()
        if msg is None:
            self.breach_since = None
            return
        if self.breach_since is None:  # a new breach: correct it
            self.breach_since = step
            self.corrections += 1
            self.last_correction_step = step
            if not self.tracking:  # tracking was off: snap to the smoothed on-policy quantile and track
                old = self.eta
                self.eta = float(self.q_avg)
                self.tracking = True
                what = f"eta {old:.5g} -> {self.eta:.5g} (smoothed on-policy {self.beta:g}-quantile), tracking on"
            else:
                what = f"tracking is moving eta toward the on-policy {self.beta:g}-quantile ({self.q_avg:.5g})"
            note = (f"step {step}: guard: {msg}; correction {self.corrections}: {what} (stage 1 had {self.eta0:.5g})")
            self.flags.append(note)
            self.log(note)
            return
        if step - self.breach_since >= self.cfg.patience:
            q = {"step": step, "mass_beyond": self.mass_avg, "target_mass": self.target_mass, "band": tuple(self.cfg.band),
                 "kl": self.kl_avg, "kl_limit": self.kl_limit, "predicted_kl": self.stage1.predicted_kl,
                 "eta": self.eta, "eta_stage1": self.eta0, "corrections": self.corrections}
            text = (f"stage 2 stopped at step {step}: {msg}; the threshold correction did not bring it back within "
                    f"{self.cfg.patience} steps (eta {self.eta0:.5g} at stage 1, {self.eta:.5g} now). The fine-tuned "
                    f"model does not match the TFFT target at alpha={self.alpha:g}; increase alpha, draw more offline "
                    f"samples, or give stage 2 more steps.")
            self.flags.append(text)
            raise ThresholdGuardError(text, q)

    # -- resume -------------------------------------------------------------------
    def state_dict(self) -> dict:
        return {"eta": self.eta, "tracking": self.tracking, "mass_avg": self.mass_avg, "kl_avg": self.kl_avg,
                "cvar_avg": self.cvar_avg, "kl_limit": self.kl_limit,
                "q_avg": self.q_avg, "corrections": self.corrections, "catch_ups": self.catch_ups,
                "high_run": self.high_run,
                "last_correction_step": self.last_correction_step,
                "breach_since": self.breach_since, "flags": list(self.flags), "steps_seen": self.steps_seen}

    def load_state_dict(self, d: dict) -> None:
        for k, v in d.items():
            setattr(self, k, list(v) if k == "flags" else v)


# ---------------------------------------------------------------------------
# stage-1 trust diagnostic
# ---------------------------------------------------------------------------

@dataclass(frozen=True)
class TrustReport:
    """Is the stage-1 bootstrap interval on ``eta*`` narrow enough at this ``alpha``?

    ``sensitivity = halfwidth / (alpha (1 - beta))`` (right; ``alpha beta`` left) is the log of
    the factor by which an error of the interval's half-width multiplies the tilted tail mass.
    """

    trusted: bool
    alpha: float
    halfwidth: float
    sensitivity: float
    tolerance: float
    alpha_trusted: Optional[float]
    message: str


def _factor(s: float) -> str:
    """``exp(s)`` for a message, without overflowing for a huge ``s``."""
    return f"{math.exp(s):.3g}" if s < 700 else f"exp({s:.3g})"


def threshold_trust(rewards: Any, beta: float, alpha: float, tail: str = "right", bootstrap: int = 100,
                    seed: int = 0, tolerance: float = math.log(1.3), ci_level: float = 0.95,
                    max_doublings: int = 8, warn: bool = True, interval: Optional[tuple] = None) -> TrustReport:
    """Stage-1 diagnostic: is ``eta*``'s bootstrap interval too wide to trust at this ``alpha``?

    An error ``delta`` in ``eta`` multiplies the tilted tail mass by about ``exp(delta / (alpha (1 -
    beta)))`` (right; ``alpha beta`` left).  The estimate is trusted when the interval's half-width
    gives a factor below ``exp(tolerance)`` (default 1.3: tail mass within 0.077..0.13 for a
    target of 0.1).  Otherwise ``alpha`` is doubled until it is, and that ``alpha`` is named.

    ``interval``: the bootstrap interval already computed at ``alpha`` (stage 1's
    ``eta_interval``), to skip that bootstrap.

    Returns a :class:`TrustReport`; with ``warn`` an untrusted result also emits a :class:`TfftWarning`.
    """
    r = np.asarray(rewards.detach().cpu().double().numpy() if hasattr(rewards, "detach") else rewards, dtype=np.float64)
    rng_seed = seed
    scale = (1.0 - beta) if tail == "right" else beta

    def halfwidth(a: float) -> float:
        rng = np.random.default_rng(rng_seed)
        m = r.size
        etas = np.empty(bootstrap)
        for b in range(bootstrap):
            etas[b] = solve_eta(r[rng.integers(0, m, size=m)], beta, a, tail)[0]
        lo, hi = np.quantile(etas, [(1 - ci_level) / 2, (1 + ci_level) / 2])
        return 0.5 * float(hi - lo)

    hw = 0.5 * float(interval[1] - interval[0]) if interval is not None else halfwidth(alpha)
    sens = hw / (alpha * scale)
    trusted = sens <= tolerance
    a_ok: Optional[float] = alpha if trusted else None
    if not trusted:
        a = alpha
        for _ in range(max_doublings):
            a *= 2.0
            if halfwidth(a) / (a * scale) <= tolerance:
                a_ok = a
                break
    if trusted:
        msg = (f"stage 1: the {100 * ci_level:g}% bootstrap half-width of eta* ({hw:.3g}) moves the tilted tail mass "
               f"by at most a factor {_factor(sens)} at alpha={alpha:g}: trustworthy")
    else:
        where = (f"it becomes trustworthy from alpha={a_ok:g}" if a_ok is not None else
                 f"it is not trustworthy up to alpha={alpha * 2 ** max_doublings:g}")
        msg = (f"stage 1: the {100 * ci_level:g}% bootstrap interval of eta* is too wide at alpha={alpha:g}: "
               f"its half-width {hw:.3g} multiplies the tilted tail mass by up to {_factor(sens)} "
               f"(exp(half-width / (alpha {'(1 - beta)' if tail == 'right' else 'beta'})), tolerance "
               f"{math.exp(tolerance):.2f}); {where}. Stage 2 tracks the threshold on-policy; "
               f"draw more offline samples or raise alpha to trust stage 1 alone")
        if warn:
            warnings.warn(msg, TfftWarning, stacklevel=2)
    return TrustReport(trusted, float(alpha), hw, sens, tolerance, a_ok, msg)
