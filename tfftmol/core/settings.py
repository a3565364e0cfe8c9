"""Settings of a fine-tune: :class:`AMConfig` (Adjoint Matching) and :class:`TFFTConfig` (the two stages).

Plain dataclasses, validated once in ``__post_init__`` by the shared checks of
:mod:`tfftmol.core.config`; an out-of-range value raises :class:`ConfigError`
naming the field and the accepted range.  Nothing derived is written back: a
config saved with :func:`~tfftmol.core.config.to_dict` reloads to the same
object, and changing one field (e.g. ``beta``) never trips over a stored value
computed from another.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Optional, Union

from .config import ConfigError, check_choice, check_int, check_number, from_dict
from .value import ValueConfig

__all__ = ["AMConfig", "TFFTConfig"]


@dataclass
class AMConfig:
    """Adjoint Matching settings.

    Attributes:
        steps: optimisation steps (over all continuation stages).
        batch_size: trajectories per step.
        time_steps: Euler–Maruyama steps ``N`` per trajectory (``h = 1/N``).
        loss_time_steps: how many of ``t_1..t_{N-1}`` enter the loss per step
            (a random subset); ``0`` means all.
        lr: Adam learning rate; ``lr_final_fraction``: cosine decay to ``lr * lr_final_fraction``.
        warmup_steps: linear warm-up steps.
        grad_clip: global gradient-norm clip (``0`` = off).
        adjoint_clip: clip on the per-sample terminal adjoint norm (``0`` = off).
        ema: decay of an exponential moving average of the weights used for the
            final model (``0`` = off).
        correction: ``"auto"`` (copy an ``nn.Module`` base, else residual MLP),
            ``"copy"`` or ``"residual"``.
        terminal_time: where the adjoint starts. ``1`` (default) is exact Adjoint Matching,
            ``a(1) = -lam grad g(X_1)``.  ``t_c < 1`` starts it at the last grid time
            ``<= t_c`` from the reward gradient at the denoised state ``x + (1 - t) v(x, t)``
            (see ``AdjointMatching._denoised_adjoint``): for flows on discrete data, whose
            trajectories snap onto a class well before ``t = 1`` so that the exact adjoint
            carries ~no signal to earlier times.  Later times have a zero target; by default they are
            left out of the loss (see ``late_loss_steps``).
        late_loss_steps: with ``terminal_time < 1`` (gradient path), how many of the grid times after
            ``t_c`` also enter the loss per step, with their zero target: the control there is regressed
            toward the base instead of drifting with the weights it shares with earlier times (measured on
            ``qm9-graph``: without it 60-70% of a fine-tune's KL is spent after ``t_c = 0.5``).  ``0`` = off.
            The batch KL estimate (history, guards) then includes the late times' control cost.
        terminal_state: with ``terminal_time < 1``, where the reward gradient is taken:
            ``"denoised"`` (default) at ``x + (1 - t) v(x, t)``, chained through that map;
            ``"noisy"`` at the state ``x_t`` itself (a reward model of noisy states, e.g. a
            surrogate fitted on ``t x_1 + (1 - t) eps``), with no denoiser Jacobian.
        hidden, layers: width and depth of the residual MLP correction.
        seed: seeds the trajectory noise and the time subsets.
        log_every: history stride.
        stage2: where the regression target comes from.  ``"gradient"``: the lean adjoint of the
            reward gradient (exact Adjoint Matching).  ``"value"``: ``-grad_x V_phi`` of a value model
            learned on-policy from reward *values* only (:mod:`tfftmol.core.value`, docs/design.md §6).
            ``"weighted"``: tilt-weighted flow matching on the offline batch (reward values only, no
            on-policy sampling; docs/design.md §6.1): the batch's samples, weighted by stage 1's tilt
            ``exp(lam g(r))``, are noised and regressed with the base's own velocity as the anchor.
            ``"auto"`` (default): ``"value"`` for a reward that declares ``has_grad = False``,
            else ``"gradient"``.  The run's history records the path (``stage2`` of every entry).
        value: :class:`~tfftmol.core.value.ValueConfig`, the value model's settings (``stage2 = "value"``).
        step_trust: the first optimiser step after the target is set (and after every continuation
            stage) may move the control by at most ``step_trust`` times the RMS of its regression
            target; a larger step rescales the learning rate down for the rest of that target
            (``0`` = off).  Adam's steps have size ``lr`` whatever the gradient's scale, so without
            this a very large ``alpha`` (a target that is almost the base model) still drifts.
        path_weights: weight each trajectory of the regression by its importance weight toward the
            target path measure, ``dP*/dP_u ∝ exp(lam g(r(X_1)) - sum_k (u_k . dW_k + 0.5 |u_k|^2 h))``,
            self-normalised over the batch and tempered (power ``gamma <= 1``, the largest whose
            effective sample size is at least ``path_weights`` of the batch).  ``0`` (default) = off:
            plain on-policy Adjoint Matching.  The minimiser is the same (at the optimum every weight is
            1); the weights let one regression see the target's trajectories instead of waiting for
            the fixed-point iteration to move mass into a rare tail (docs/design.md §4.6).  Gradient
            path only.
        adjoint_integrator: ``"euler"`` (default; the exact optimum of the Euler-Maruyama chain for a
            linear reward, docs/design.md §4.3) or ``"exponential"`` (the adjoint's stiff ``-I/t`` part
            integrated exactly, §4.7: on hinge tilts its fixed point is close to the optimal control,
            on a linear reward of ``N(0, I)`` it overshoots the mean shift by 7% at 20 steps).
        precision: the networks' arithmetic in sampling, the lean adjoint's vector-Jacobian products and the
            loss: ``"fp32"`` (default) or ``"bf16"`` (``torch.autocast``; states, adjoints, the loss and the
            optimiser stay in float32).  ``"bf16"`` pays on a CPU with native bfloat16 (AVX-512 BF16, AMX) or a
            GPU, and needs a float32 flow.
    """

    steps: int = 1000
    batch_size: int = 256
    time_steps: int = 50
    loss_time_steps: int = 20
    lr: float = 1e-3
    lr_final_fraction: float = 0.05
    warmup_steps: int = 0
    grad_clip: float = 1.0
    adjoint_clip: float = 0.0
    ema: float = 0.0
    correction: str = "auto"
    terminal_time: float = 1.0
    terminal_state: str = "denoised"
    late_loss_steps: int = 0
    hidden: int = 64
    layers: int = 3
    seed: int = 0
    log_every: int = 10
    stage2: str = "auto"
    value: ValueConfig = field(default_factory=ValueConfig)
    step_trust: float = 10.0
    path_weights: float = 0.0
    adjoint_integrator: str = "euler"
    precision: str = "fp32"

    def __post_init__(self):
        check_int(self, "steps", "batch_size", "hidden", "layers", "log_every")
        check_int(self, "time_steps", low=2)
        check_int(self, "loss_time_steps", "warmup_steps", low=0, note=" (0 = all time steps / no warm-up)")
        check_int(self, "late_loss_steps", low=0, note=" (0 = off)")
        check_int(self, "seed", low=0)
        check_number(self, "lr", 0, None, low_open=True)
        check_number(self, "lr_final_fraction", 0, 1, low_open=True)
        check_number(self, "ema", 0, 1, high_open=True)
        check_number(self, "step_trust", 0, None)
        check_number(self, "path_weights", 0, 1)
        check_number(self, "terminal_time", 0, 1, low_open=True)
        check_number(self, "grad_clip", 0, None)
        check_number(self, "adjoint_clip", 0, None)
        check_choice(self, "correction", ("auto", "copy", "residual"))
        check_choice(self, "stage2", ("auto", "gradient", "value", "weighted"))
        check_choice(self, "adjoint_integrator", ("euler", "exponential"))
        check_choice(self, "terminal_state", ("denoised", "noisy"))
        check_choice(self, "precision", ("fp32", "bf16"))
        if isinstance(self.value, dict):
            self.value = from_dict(ValueConfig, self.value, "am.value")


def _checked_level(lv: dict, where: str) -> dict:
    """``{tail, beta[, weight]}`` with the tail a known one, ``0 < beta < 1`` and a finite weight ``>= 0``."""
    tail, beta, weight = lv.get("tail"), lv.get("beta"), lv.get("weight", 1.0)
    if tail not in ("right", "left"):
        raise ConfigError(f"{where}.tail={tail!r} must be 'right' or 'left'")
    for name, v in (("beta", beta), ("weight", weight)):
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
            raise ConfigError(f"{where}.{name}={v!r} must be a finite number")
    if not 0 < beta < 1:
        raise ConfigError(f"{where}.beta={beta!r} must be in (0, 1)")
    if weight < 0:
        raise ConfigError(f"{where}.weight={weight!r} must be >= 0")
    return {"tail": tail, "beta": float(beta), "weight": float(weight)}


def _warn_tail_mixup(tail: str, beta: float) -> None:
    """Warn when ``beta`` looks meant for the other tail (a left tail of 90%, a right tail of 90%)."""
    if (tail == "left" and beta >= 0.5) or (tail == "right" and beta <= 0.5):
        import warnings

        from .threshold import TfftWarning

        share = beta if tail == "left" else 1 - beta
        which = "worst" if tail == "left" else "best"
        other = 1 - beta
        advice = f"for the {which} {1 - share:.0%} set beta={other:g}" if beta != 0.5 else "half of all samples"
        warnings.warn(f"tail={tail!r} with beta={beta:g} asks for the mean of the {which} {share:.0%} of samples "
                      f"({tail}-CVaR_{beta:g}); {advice} (right tails take beta near 1, left tails beta near 0)",
                      TfftWarning, stacklevel=4)


@dataclass
class TFFTConfig:
    """Settings of one fine-tuning run (TFFT or the expected-reward baseline).

    Attributes:
        method: ``"tfft"`` (pseudo-reward from the threshold) or ``"expected"`` (``r`` itself).
        tail: ``"right"`` (discovery: mean of the best ``1-beta``) or ``"left"``
            (reliability: mean of the worst ``beta``).
        beta: tail level in (0, 1).
        alpha: KL weight > 0; the Adjoint Matching reward multiplier is ``1/alpha``.
        offline_samples: ``M``, size of the offline batch from the pre-trained model.
        offline_steps: integration steps for the offline batch.
        offline_sampler: ``"sde"`` (default: the memoryless SDE that stage 2 trains and
            evaluates with, so stage 1 sees the same ``p_pre``), ``"heun"`` (second-order ODE)
            or ``"ode"`` (Euler).  For a learned velocity the ODE and the SDE sample different
            distributions (on a learned 2D flow an ODE offline batch closed 41% of the gap where the SDE
            batch came within 0.25% of the optimum).
        near_tie_samples: left tail: when stage 1 finds two thresholds whose objective values tie
            within sampling error (a bimodal reward; :func:`tfftmol.core.threshold.solve_threshold`'s
            ``near_tie``), the offline batch is doubled, with fresh seeds, until the tie resolves or the
            batch reaches this many times ``offline_samples`` (1 = off).  Measured on the exact family
            (case 11, alpha 1, 50 SDE steps): on 10,000 samples the argmax picks either basin by chance
            (eta -0.82 or the population's 0.18); on 40,000 it picks the population's in 3 of 3 seeds.
        bootstrap: bootstrap resamples for the interval on ``eta*`` (0 = off).
        smoothing: softplus temperature of the hinge (0 = exact hinge, the default).
        continuation: ``"auto"``, ``"alpha"``, ``"beta"`` or ``"none"``.
        min_active_fraction: below this stage-1 active fraction the continuation engages.
        continuation_start_active: active fraction aimed at by the first stage of the beta/eta ramps.
        adaptive_active: ``a_min`` of the adaptive continuation (0 = three quarters of the target
            tail mass, i.e. ``0.75 (1 - beta)`` right, ``0.75 beta`` left); must be below that tail
            mass.  Measured on the starved GMM case (300 steps): the model's tail mass tracks
            ``a_min`` while it climbs, so larger is faster (gap to the target cut by 0.51 at
            ``a_min = 0.05``, 0.65 at 0.075, 0.72 at 0.09 with ``1 - beta = 0.1``); it stays below
            the tail mass so that at the optimum the hinge is exactly ``eta*``.
        continuation_stages: number of stages including the final one.
        final_stage_fraction: fraction of ``am.steps`` spent on the final (exact) stage.
        refine_threshold: ``"auto"`` (when the continuation ran), ``"always"`` or ``"never"``:
            before the final stage, re-solve ``eta*`` on ``refine_samples`` samples of the
            current fine-tuned model, importance-weighted back to ``p_pre`` (Girsanov path
            weights, :func:`tfftmol.core.adjoint.sample_importance`).  The continuation's
            model already puts mass in the tail, so this estimate of ``eta*`` has a much
            larger effective sample size than one from pre-trained samples; it is used
            if its tilt ESS is larger.
        refine_samples: number of samples for the refinement.
        track_threshold: ``"auto"`` (default): ``"mass"`` for the right tail, ``"guard"`` for the
            left.  Stage 1's bootstrap interval
            (:func:`tfftmol.core.tracking.threshold_trust`) measures its spread, not its bias: on the
            exact family a right tail whose interval was narrow enough to trust still ended 1.8x over
            the exact KL (stage 1 low by 0.04 at ``alpha (1 - beta) = 0.1``).  The right tilt ``exp((r - eta)_+ /
            (alpha (1 - beta)))`` is unbounded and rests on the few largest pre-trained rewards,
            so its stage 1 is biased low; the left tilt only down-weights (weights <= 1), so its
            stage 1 is not (measured on 20 random mixtures at alpha 0.25 and 0.5: left bias
            <= 0.03, right up to -0.65), and tracking there only turns model-fit errors into
            threshold shifts (circle GMM, left, alpha 1: mass below eta* 0.065 tracked vs
            0.098 fixed).
            ``"mass"``: in the final stage the threshold moves with the
            on-policy mass beyond it (a Robbins-Monro step on its log-odds against ``1 - beta``,
            in units of ``alpha (1 - beta)``), whose fixed point is the self-consistent ``eta*``
            (``P_{p*}(r > eta*) = 1 - beta``; :mod:`tfftmol.core.tracking`), with the guards;
            ``"quantile"``: the same fixed point through the smoothed on-policy beta-quantile
            (noisier where the target's density at ``eta*`` is low, i.e. strong right tilts);
            ``"guard"``: keep the stage-1 threshold, run the guards (they turn tracking on when
            they fire); ``"none"``: neither (the behaviour before tracking).
        track_gain: gain of the tracking step (0 = the rule's default: 0.2 for ``"mass"``, 0.05
            for ``"quantile"``).
        track_hold: fraction of the final stage during which the threshold only moves up.
        track_catch_up: right tail, tracking on: a batch whose mass beyond the threshold exceeds
            ``guard_band_high`` times ``1 - beta`` moves the threshold to the batch's beta-quantile at
            once (docs/design.md §5.5; ``False``: the bounded tracking step only).
        track_catch_up_batches: consecutive batches that must exceed that mass before the jump (1 = any
            single batch, the earlier rule; default 2: a runaway persists, a batch of 64 crossing on noise
            does not).
        track_balance: while the threshold tracker is the target (``track_threshold`` not ``"none"``),
            weight the trajectories of the Adjoint Matching regression so that the batch has the target's
            tail mass (``1 - beta`` beyond the threshold, right; ``beta`` below it, left): tail trajectories
            by ``kappa / m``, the others by ``(1 - kappa) / (1 - m)`` for a batch with tail mass ``m``.
            Every weight is 1 at the self-consistent optimum, so the target is unchanged; away from it the
            weights break the feedback by which a model with too much (too little) tail mass gets a
            stronger (weaker) regression target, the runaway-and-collapse cycle of strong right tilts
            (docs/design.md §5.5).  ``"auto"`` (default): on where the threshold is tracked (the right
            tail under ``track_threshold="auto"``); ``True``/``False``: always on / off.
        guard_band_low, guard_band_high: allowed ratio of the on-policy tail mass to ``1 - beta``
            (right) or ``beta`` (left).
        guard_kl_factor: allowed multiple of the KL stage 1 predicts for the on-policy CVaR.
        seed: seeds the offline batch.
        am: :class:`AMConfig`.
        levels: several tails at once (docs/design.md §10): a list of ``{tail, beta, weight}``
            (weights ``>= 0``, any mix of right and left levels); TFFT then maximises
            ``mean_weight E[r] + sum_k weight_k CVaR_k - alpha KL``.  Stage 1 is
            :func:`tfftmol.core.spectral.solve_spectral` on the offline batch and stage 2 fine-tunes
            toward its pseudo-reward; ``tail``/``beta`` and the one-tail machinery (continuation,
            refinement, tracking) are not used.  ``None`` (default): the one tail of ``tail``/``beta``.
        mean_weight: weight ``>= 0`` of ``E[r]`` in the spectral objective (with ``levels``).
        constraint: ``{tail, beta, floor}``: maximise ``E[r] - alpha KL`` subject to
            ``CVaR^{tail}_{beta} >= floor`` (:func:`tfftmol.core.spectral.solve_constrained`: the
            Lagrange multiplier is found in stage 1; it says when ``floor`` cannot be met at this
            alpha and what can).  Excludes ``levels``.
    """

    method: str = "tfft"
    tail: str = "right"
    beta: float = 0.9
    alpha: float = 1.0
    offline_samples: int = 10000
    offline_steps: int = 50
    offline_sampler: str = "sde"
    near_tie_samples: int = 4
    bootstrap: int = 100
    smoothing: float = 0.0
    continuation: str = "auto"
    min_active_fraction: float = 0.02
    continuation_start_active: float = 0.3
    adaptive_active: float = 0.0
    continuation_stages: int = 4
    final_stage_fraction: float = 0.5
    refine_threshold: str = "auto"
    refine_samples: int = 20000
    track_threshold: str = "auto"
    track_gain: float = 0.0
    track_hold: float = 0.3
    track_catch_up: bool = True
    track_catch_up_batches: int = 2
    track_balance: Union[str, bool] = "auto"
    guard_band_low: float = 0.5
    guard_band_high: float = 2.0
    guard_kl_factor: float = 3.0
    seed: int = 0
    am: AMConfig = field(default_factory=AMConfig)
    levels: Optional[list] = None
    mean_weight: float = 0.0
    constraint: Optional[dict] = None

    def __post_init__(self):
        check_choice(self, "method", ("tfft", "expected"))
        self._check_objective()
        check_choice(self, "tail", ("right", "left"))
        check_number(self, "beta", 0, 1, low_open=True, high_open=True)
        check_number(self, "alpha", 0, None, low_open=True)
        check_int(self, "offline_samples", low=2)
        check_int(self, "offline_steps", low=2)
        check_int(self, "near_tie_samples", low=1)
        check_int(self, "bootstrap", low=0)
        check_int(self, "seed", low=0)
        check_choice(self, "offline_sampler", ("heun", "ode", "sde"))
        check_choice(self, "continuation", ("auto", "adaptive", "eta", "alpha", "beta", "none"))
        _warn_tail_mixup(self.tail, self.beta)
        tail_mass = self.tail_mass
        if self.adaptive_active != 0 and not (0 < self.adaptive_active < tail_mass):
            raise ConfigError(f"adaptive_active={self.adaptive_active!r} must be 0 (auto) or in (0, {tail_mass:g}) "
                              f"(below the target's tail mass at tail={self.tail!r}, beta={self.beta:g})")
        check_number(self, "min_active_fraction", 0, 1, high_open=True)
        check_number(self, "continuation_start_active", 0, 1, low_open=True, high_open=True)
        check_int(self, "continuation_stages")
        check_number(self, "final_stage_fraction", 0, 1, low_open=True)
        check_choice(self, "refine_threshold", ("auto", "always", "never"))
        check_int(self, "refine_samples", low=2)
        check_choice(self, "track_threshold", ("auto", "mass", "quantile", "guard", "none"))
        check_number(self, "track_gain", 0, 1)
        check_number(self, "track_hold", 0, 1)
        if not isinstance(self.track_catch_up, bool):
            raise ConfigError(f"track_catch_up={self.track_catch_up!r} must be true or false")
        check_int(self, "track_catch_up_batches", low=1)
        if self.track_balance not in ("auto", True, False):
            raise ConfigError(f"track_balance={self.track_balance!r} must be 'auto', true or false")
        check_number(self, "guard_band_low", 0, 1, low_open=True, high_open=True)
        check_number(self, "guard_band_high", 1, None, low_open=True)
        check_number(self, "guard_kl_factor", 1, None, low_open=True)
        check_number(self, "smoothing", 0, None)
        if isinstance(self.am, dict):
            self.am = from_dict(AMConfig, self.am, "am")
        elif not isinstance(self.am, AMConfig):
            raise ConfigError(f"am={self.am!r} must be a mapping of Adjoint Matching settings")

    def _check_objective(self) -> None:
        """``levels`` / ``mean_weight`` / ``constraint``: shapes and ranges, with the bad value named."""
        check_number(self, "mean_weight", 0, None)
        if self.levels is not None and self.constraint is not None:
            raise ConfigError("levels and constraint cannot both be set: a spectral objective or a constrained "
                              "mean, not both")
        if self.levels is not None:
            if not isinstance(self.levels, (list, tuple)) or not self.levels:
                raise ConfigError(f"levels={self.levels!r} must be a non-empty list of {{tail, beta, weight}}")
            out = []
            for i, lv in enumerate(self.levels):
                if not isinstance(lv, dict) or set(lv) - {"tail", "beta", "weight"} or not {"tail", "beta"} <= set(lv):
                    raise ConfigError(f"levels[{i}]={lv!r} must be a mapping with keys tail, beta and optionally "
                                      "weight (e.g. {tail: right, beta: 0.9, weight: 1.0})")
                out.append(_checked_level(lv, f"levels[{i}]"))
            self.levels = out
        elif self.mean_weight != 0:
            raise ConfigError(f"mean_weight={self.mean_weight!r} needs levels (it weights E[r] in a spectral "
                              "objective); without levels set it to 0")
        if self.constraint is not None:
            c = self.constraint
            if not isinstance(c, dict) or set(c) != {"tail", "beta", "floor"}:
                raise ConfigError(f"constraint={c!r} must be a mapping with exactly the keys tail, beta and floor "
                                  "(e.g. {tail: left, beta: 0.1, floor: 0.3})")
            lv = _checked_level({"tail": c["tail"], "beta": c["beta"]}, "constraint")
            floor = c["floor"]
            if isinstance(floor, bool) or not isinstance(floor, (int, float)) or not math.isfinite(floor):
                raise ConfigError(f"constraint.floor={floor!r} must be a finite number")
            self.constraint = {"tail": lv["tail"], "beta": lv["beta"], "floor": float(floor)}

    @property
    def objective(self) -> str:
        """``"tail"`` (one CVaR level), ``"spectral"`` (``levels``) or ``"constrained"`` (``constraint``)."""
        return "spectral" if self.levels is not None else "constrained" if self.constraint is not None else "tail"

    @property
    def tail_mass(self) -> float:
        """Mass of the target's tail: ``1 - beta`` (right) or ``beta`` (left)."""
        return 1 - self.beta if self.tail == "right" else self.beta

    @property
    def adaptive_active_fraction(self) -> float:
        """``adaptive_active``, with 0 resolved to three quarters of the tail mass (never written back)."""
        return self.adaptive_active if self.adaptive_active else 0.75 * self.tail_mass
