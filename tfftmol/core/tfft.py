"""The TFFT two-stage driver (docs/design.md §2, §4-§5) and the expected-reward baseline: the loop only.

1. **Offline batch** (:mod:`tfftmol.core.offline`): ``M`` samples of the
   pre-trained model, scored with the true reward and cached.
2. **Stage 1** (:mod:`tfftmol.core.threshold`, planned by
   :mod:`tfftmol.core.continuation`): the exact threshold ``eta*`` with its
   diagnostics; a starved hinge gets a continuation.
3. **Stage 2** (:mod:`tfftmol.core.adjoint`): one Adjoint Matching fine-tune on the
   pseudo-reward ``g(r) = (r - eta*)_+/(1-beta)`` (right) or ``-(eta* - r)_+/beta``
   (left), with ``lam = 1/alpha``.

``continuation="auto"`` means the adaptive hinge
(:class:`~tfftmol.core.pseudo.AdaptiveHinge`): while the model has too little
mass beyond ``eta*`` the hinge follows the batch's own tail; its fixed point is
the exact target.  The loop checkpoints atomically, stops cleanly on SIGINT and
resumes.  :class:`TFFTResult` keeps the stage-1 threshold and the refined one
(if the half-way refinement ran) as separate fields.

``track_threshold`` (default ``"auto"``): in the final stage the threshold follows the
on-policy self-consistency condition ``P_model(r > eta) = 1 - beta`` whose root is the
exact ``eta*`` (:mod:`tfftmol.core.tracking`) on the right tail, whose stage-1 estimate is
biased low; guards on the on-policy tail mass and the KL run in every mode and stop a
run they cannot correct (:class:`~tfftmol.core.tracking.ThresholdGuardError`).
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import signal
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Optional

import numpy as np
import torch
from torch import nn

from .adjoint import AdjointMatching, IdentityTransform
from .checkpoint import CheckpointError, load_checkpoint, save_checkpoint
from .config import to_dict
from .continuation import Stage, plan_stages, refine_threshold
from .flow import FlowModel
from .offline import model_fingerprint, offline_batch
from .pseudo import AdaptiveHinge, PseudoReward, TerminalTransform
from .reward import TerminalReward, reward_cache_key, reward_hook
from .settings import AMConfig, TFFTConfig
from .threshold import ThresholdResult, TfftWarning, solve_threshold
from .tracking import ThresholdGuardError, ThresholdTracker, TrackingConfig, threshold_trust
from .reward_check import check_reward
from .validate import check_flow_model
from .value import start_value_stage

__all__ = ["TFFTConfig", "TFFTResult", "Stage", "run_tfft", "offline_batch", "plan_stages", "model_fingerprint",
           "AdaptiveHinge", "refine_threshold"]


@dataclass
class TFFTResult:
    """What a run returns.

    Attributes:
        model: the fine-tuned flow (EMA weights if configured).
        threshold: the threshold the final stage used: the refined one if the refinement
            ran and was kept, else the stage-1 result (``None`` for ``expected``).
        stages: the continuation stages actually used.
        history: per-step statistics (list of dicts: loss, kl, active_fraction, ...).
        offline_rewards: ``(M,)`` rewards of the offline batch, or ``None``.
        timings: seconds per phase.
        trainer: the :class:`AdjointMatching` object.
        stage1: the stage-1 result at the requested ``(alpha, beta)``, as solved on the
            offline batch (``None`` for ``expected``); for a config with ``levels`` or
            ``constraint``, the :class:`~tfftmol.core.spectral.SpectralResult` or
            :class:`~tfftmol.core.spectral.ConstrainedResult` (``threshold`` is then ``None``).
        refined: the refined threshold if the half-way refinement ran, else ``None``.
        tracking: the on-policy threshold tracking of the final stage (``track_threshold``):
            ``eta`` (final tracked threshold), ``eta_stage1``, ``corrections``, ``flags`` (guard
            messages), ``trace`` (per-step records), ``trust`` (stage-1 trust message); or ``None``.
    """

    model: nn.Module
    threshold: Optional[ThresholdResult]
    stages: list
    history: list
    offline_rewards: Optional[np.ndarray]
    timings: dict
    trainer: AdjointMatching
    stage1: Optional[Any] = None
    refined: Optional[ThresholdResult] = None
    tracking: Optional[dict] = None


def reward_bounds(reward: Any) -> Optional[tuple[float, float]]:
    """The declared ``(low, high)`` range of a reward (``reward.range``, or that of the reward it wraps), or ``None``."""
    for obj in (reward, getattr(reward, "reward", None)):
        rng = getattr(obj, "range", None)
        if isinstance(rng, (tuple, list)) and len(rng) == 2:
            try:
                lo, hi = float(rng[0]), float(rng[1])
            except (TypeError, ValueError):
                continue
            if lo < hi:
                return lo, hi
    return None


def solve_objective(cfg: TFFTConfig, rewards: np.ndarray):
    """Stage 1 of a config's spectral (``levels``) or constrained (``constraint``) objective on ``rewards``.

    Returns the :class:`~tfftmol.core.spectral.SpectralResult` or
    :class:`~tfftmol.core.spectral.ConstrainedResult` (both give ``pseudo_reward()`` and ``predicted_kl``).
    """
    from .spectral import solve_constrained, solve_spectral

    if cfg.levels is not None:
        return solve_spectral(rewards, cfg.levels, cfg.alpha, cfg.mean_weight,
                              min_active_fraction=cfg.min_active_fraction)
    if cfg.constraint is not None:
        c = cfg.constraint
        return solve_constrained(rewards, c["tail"], c["beta"], c["floor"], cfg.alpha)
    raise ValueError("the config has neither levels nor a constraint: its stage 1 is solve_threshold")


def run_key(base: FlowModel, reward: TerminalReward, config: TFFTConfig) -> str:
    """Identity of a fine-tune for resuming: a hash of the full config, the base weights and the reward key."""
    payload = json.dumps([to_dict(config), model_fingerprint(base), reward_cache_key(reward)], sort_keys=True,
                         default=str)
    return hashlib.sha256(payload.encode()).hexdigest()[:24]


def _threshold_to_json(t: ThresholdResult) -> dict:
    """Every field of a threshold result as JSON (arrays as lists), for the checkpoint's ``extra``."""
    out = {}
    for f in dataclasses.fields(t):
        v = getattr(t, f.name)
        if isinstance(v, np.ndarray):
            v = v.tolist()
        elif isinstance(v, tuple):
            v = list(v)
        elif isinstance(v, np.generic):
            v = v.item()
        out[f.name] = v
    return out


def _threshold_from_json(template: ThresholdResult, d: dict) -> ThresholdResult:
    """Inverse of :func:`_threshold_to_json`; a checkpoint of an older release kept only ``eta``."""
    names = {f.name for f in dataclasses.fields(template)}
    kw = {k: v for k, v in d.items() if k in names}
    for k in ("rewards", "log_weights"):
        if kw.get(k) is not None:
            a = np.asarray(kw[k], dtype=np.float64)
            a.setflags(write=False)
            kw[k] = a
    for k in ("eta_interval", "warnings"):
        if kw.get(k) is not None:
            kw[k] = tuple(kw[k])
    return dataclasses.replace(template, **kw)


def _resolve_near_tie(base: FlowModel, reward: TerminalReward, cfg: TFFTConfig, x_off, v_off, valid_off, *,
                      cache_dir, device, cond_sampler, progress: bool, log: Callable[[str], None]):
    """Left tail: grow the offline batch while stage 1 sees a near-tie, up to ``cfg.near_tie_samples`` times.

    ``G`` can have two local maxima whose values differ by less than their sampling error (a bimodal
    reward); the sampled argmax then picks either by chance, and stage 2 follows the one picked
    (docs/design.md §2.9).  Each round adds as many fresh samples as the batch holds (new seeds, so
    the cache keys differ) and solves again; the returned batch is the largest drawn.
    """
    n0 = cfg.offline_samples
    k = 1
    while True:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", TfftWarning)
            res = solve_threshold(v_off.numpy().astype(np.float64), cfg.beta, cfg.alpha, cfg.tail,
                                  min_active_fraction=0.0)
        if res.near_tie is None:
            if k > 1:
                log(f"stage 1 near-tie resolved on {k * n0} samples: eta*={res.eta:.6g}")
            return x_off, v_off, valid_off
        if k >= cfg.near_tie_samples:
            if k > 1:
                log(f"stage 1 near-tie still within sampling error on {k * n0} samples "
                    f"(near_tie_samples={cfg.near_tie_samples}): eta*={res.eta:.6g}, rival eta={res.near_tie:.6g}")
            return x_off, v_off, valid_off
        add = min(k, cfg.near_tie_samples - k) * n0
        seed = cfg.seed + 7919 * k
        log(f"stage 1 near-tie on {k * n0} samples: eta*={res.eta:.6g} and eta={res.near_tie:.6g}; "
            f"drawing {add} more offline samples (seed {seed}) to tell them apart")
        x2, v2, ok2, _ = offline_batch(base, reward, add, cfg.offline_steps, cfg.offline_sampler, seed, cache_dir,
                                       device=device, cond_sampler=cond_sampler, progress=progress, log=log)
        x_off, v_off, valid_off = torch.cat([x_off, x2]), torch.cat([v_off, v2]), torch.cat([valid_off, ok2])
        k += add // n0


def run_tfft(base: FlowModel, reward: TerminalReward, config: TFFTConfig, *, cache_dir: str | Path | None = None,
             checkpoint_dir: str | Path | None = None, checkpoint_every: int = 100, resume: bool = True,
             device: str | torch.device = "cpu", progress: bool = True, cond_sampler=None,
             callbacks: Optional[list[Callable[[AdjointMatching, dict], None]]] = None,
             log: Callable[[str], None] = print, stop_on_degenerate: bool = True,
             transform: Optional[TerminalTransform] = None) -> TFFTResult:
    """Run TFFT (or the expected-reward baseline) end to end.

    Args:
        base: the pre-trained flow model.
        reward: the true reward (values + gradient). If it has a method
            ``fit_offline(x, values, valid)`` it is called once on the offline
            batch (e.g. to fit a surrogate).
        config: :class:`TFFTConfig`.
        cache_dir: where the offline batch is cached.
        checkpoint_dir: where the trainer is checkpointed atomically every
            ``checkpoint_every`` steps and on SIGINT; with ``resume`` a run picks
            up from the last checkpoint if it belongs to the same run (same config,
            base weights and reward; otherwise :class:`~tfftmol.core.checkpoint.CheckpointError`).
            up from the last checkpoint.
        callbacks: called as ``cb(trainer, stats_dict)`` after every step.
        stop_on_degenerate: a tail stage 1 finds saturated (nothing to gain:
            :func:`~tfftmol.core.threshold.tail_degeneracy`) raises
            :class:`~tfftmol.core.threshold.DegenerateTailError` before stage 2; ``False``
            trains anyway (with the warning).
        transform: a terminal transform solved by the caller (e.g. the spectral pseudo-reward
            of :func:`tfftmol.core.spectral.solve_spectral`, docs/design.md §10): stage 2 fine-tunes
            toward ``p_pre exp(transform(r) / alpha)`` with ``lam = 1/config.alpha``; the one-tail
            stage 1, continuation, refinement and threshold tracking are skipped
            (``config.method`` must be ``"tfft"``; the result's ``threshold`` is ``None``).

    Returns:
        :class:`TFFTResult`.

    Raises:
        DegenerateTailError: the targeted tail cannot move (with ``stop_on_degenerate``).
    """
    check_flow_model(base, device, cond_sampler=cond_sampler)  # the interface, on a probe batch, before any sampling
    cfg = config
    timings: dict[str, float] = {}
    t0 = time.perf_counter()
    fit_offline = reward_hook(reward, "fit_offline")
    # the reward too, on a few samples: values now, the gradient too unless it needs the offline fit first
    check_reward(reward, base, device, stage2=cfg.am.stage2, cond_sampler=cond_sampler,
                 gradient=not callable(fit_offline), log=log)
    objective = cfg.objective if cfg.method == "tfft" else "tail"
    if transform is not None and cfg.method != "tfft":
        raise ValueError(f"transform= is a TFFT target; config.method is {cfg.method!r}, expected 'tfft'")
    if transform is not None and objective != "tail":
        raise ValueError(f"transform= and the config's {objective} objective (levels/constraint) both set the "
                         "target; give one of them")
    custom = transform is not None or objective != "tail"  # the one-tail machinery stays off
    weighted = cfg.am.stage2 == "weighted"  # stage 2 fits the offline batch itself (docs/design.md §6.1)
    need_offline = (cfg.method == "tfft" and transform is None) or callable(fit_offline) or weighted
    rewards_np = None
    stages: list[Stage]
    threshold = None
    if need_offline:
        x_off, v_off, valid_off, cached = offline_batch(
            base, reward, cfg.offline_samples, cfg.offline_steps, cfg.offline_sampler, cfg.seed, cache_dir,
            device=device, cond_sampler=cond_sampler, progress=progress, log=log)
        rewards_np = v_off.numpy().astype(np.float64)
        log(f"offline batch: {len(rewards_np)} samples ({'cached' if cached else 'sampled'}), "
            f"valid {valid_off.float().mean():.1%}, mean reward {rewards_np.mean():.4g}")
        if cfg.method == "tfft" and objective == "tail" and not custom and cfg.tail == "left":
            x_off, v_off, valid_off = _resolve_near_tie(
                base, reward, cfg, x_off, v_off, valid_off, cache_dir=cache_dir, device=device,
                cond_sampler=cond_sampler, progress=progress, log=log)
            rewards_np = v_off.numpy().astype(np.float64)
        timings["offline"] = time.perf_counter() - t0
    t1 = time.perf_counter()
    stage1 = refined_thr = None
    if objective != "tail":  # stage 1 of the spectral or constrained objective, on the offline batch
        stage1 = solve_objective(cfg, rewards_np)
        log(str(stage1))
        log(f"offline batch sampler: {cfg.offline_sampler} ({cfg.offline_steps} steps)")
        transform = stage1.pseudo_reward(cfg.smoothing)
        stages = [Stage(cfg.alpha, cfg.beta, 0, cfg.am.steps, None)]
    elif custom:
        stages = [Stage(cfg.alpha, cfg.beta, 0, cfg.am.steps, None)]
        log(f"stage 2 toward the given transform {transform!r} at alpha={cfg.alpha:g}")
    elif cfg.method == "tfft":
        stages = plan_stages(rewards_np, cfg, log, bounds=reward_bounds(reward),
                             stop_on_saturated=stop_on_degenerate)
        if weighted and len(stages) > 1:  # the batch's exact tilt is fitted at once: no continuation stages
            fin = stages[-1]
            stages = [Stage(fin.alpha, fin.beta, 0, cfg.am.steps, fin.threshold)]
            log("weighted stage 2: the continuation is not needed (every sample of the offline batch is weighted "
                "at once); one stage at the final threshold")
        threshold = stage1 = stages[-1].threshold
        log(str(threshold))
        log(f"offline batch sampler: {cfg.offline_sampler} ({cfg.offline_steps} steps)")
    else:
        stages = [Stage(cfg.alpha, cfg.beta, 0, cfg.am.steps, None)]
    timings["stage1"] = time.perf_counter() - t1
    if need_offline and callable(fit_offline) and not weighted:  # after stage 1: a stopped tail costs no fit;
        # the weighted stage 2 never asks the reward for a gradient, so a surrogate is not fitted for it
        t1 = time.perf_counter()
        fit_offline(x_off, v_off, valid_off)
        timings["fit_offline"] = time.perf_counter() - t1

    adaptive = cfg.method == "tfft" and not custom and not weighted and \
        cfg.continuation in ("auto", "adaptive") and stages[-1].threshold.active_fraction < cfg.min_active_fraction

    tracker = None
    trust = None
    if weighted and cfg.method == "tfft" and not custom and cfg.track_threshold != "none":
        log("threshold tracking: off (the weighted stage 2 fits the tilt of the batch stage 1 was solved on; "
            "there is no on-policy batch to track)")
    elif cfg.method == "tfft" and not custom and cfg.track_threshold != "none":
        trust = threshold_trust(rewards_np, cfg.beta, cfg.alpha, cfg.tail, bootstrap=cfg.bootstrap or 30, seed=cfg.seed,
                                interval=stage1.eta_interval, warn=False)
        log(trust.message)
        fin = stages[-1]
        mode = {"mass": "mass", "quantile": "quantile", "guard": "off",
                "auto": "mass" if cfg.tail == "right" else "off"}[cfg.track_threshold]
        log(f"threshold tracking: {'on-policy (mass rule)' if mode == 'mass' else mode if mode == 'quantile' else 'off, guards on'}"
            f" (track_threshold={cfg.track_threshold!r})")
        gain = cfg.track_gain or (0.05 if mode == "quantile" else 0.2)
        tcfg = TrackingConfig(mode=mode, gain=gain,
                              hold=cfg.track_hold, band=(cfg.guard_band_low, cfg.guard_band_high),
                              kl_factor=cfg.guard_kl_factor, catch_up=cfg.track_catch_up,
                              catch_up_batches=cfg.track_catch_up_batches,
                              balance=(mode != "off") if cfg.track_balance == "auto" else bool(cfg.track_balance),
                              a_min=cfg.adaptive_active_fraction if cfg.continuation in ("auto", "adaptive") else None)
        tracker = ThresholdTracker(fin.threshold, tcfg, total_steps=fin.stop - fin.start, smoothing=cfg.smoothing, log=log)
        if tcfg.balance:
            log(f"tail balance: the regression sees the batch with the target's tail mass {tracker.target_mass:g} "
                f"(track_balance={cfg.track_balance!r})")

    def target(stage: Stage):
        if custom:
            return transform, 1.0 / stage.alpha
        if cfg.method == "expected":
            return IdentityTransform(), 1.0 / stage.alpha
        if tracker is not None and stage is stages[-1]:
            return tracker, 1.0 / stage.alpha
        exact = PseudoReward.from_threshold(stage.threshold, smoothing=cfg.smoothing)
        if adaptive:
            return AdaptiveHinge(exact, cfg.adaptive_active_fraction), 1.0 / stage.alpha
        return exact, 1.0 / stage.alpha

    tr, lam = target(stages[0])
    trainer = AdjointMatching(base, reward, tr, lam, cfg.am, device=device, cond_sampler=cond_sampler)
    ckpt = Path(checkpoint_dir) if checkpoint_dir is not None else None
    key = run_key(base, reward, cfg)
    if custom:  # another transform is another run
        key = hashlib.sha256((key + repr(transform)).encode()).hexdigest()[:24]
    if ckpt is not None and resume:
        state = load_checkpoint(ckpt)
        if state is not None:
            old = state.get("extra", {}).get("run_key")
            if old != key:
                raise CheckpointError(
                    f"checkpoint in {ckpt} belongs to another run (its config, base model weights or reward "
                    f"differ: key {old} vs {key}); "
                    "use another checkpoint_dir, or resume=False to start over")
            trainer.load_state_dict(state)
            log(f"resumed from checkpoint at step {trainer.step_count}")
    trainer.extra["run_key"] = key
    if weighted:
        trainer.set_pool(x_off, v_off)
        w = trainer.pool_weights()
        log(f"weighted stage 2: {len(w)} offline samples, the target's tilt has effective sample size "
            f"{float(w.sum() ** 2 / (w ** 2).sum()):.0f}")
    timings["value_warm_start"] = start_value_stage(trainer, x_off if need_offline else None,
                                                    v_off if need_offline else None, log, cfg.seed)
    if tracker is not None and "tracking" in trainer.extra:  # resumed: restore the tracked threshold
        tracker.load_state_dict(trainer.extra["tracking"])

    def save():
        if ckpt is not None:
            save_checkpoint(ckpt, trainer.state_dict())

    t2 = time.perf_counter()
    pbar = None
    if progress:
        from tqdm.auto import tqdm
        pbar = tqdm(total=cfg.am.steps, initial=trainer.step_count, desc=f"{cfg.method} fine-tune", unit="step")
    old_handler = None
    interrupted = {"flag": False}

    def on_sigint(signum, frame):
        interrupted["flag"] = True

    try:
        old_handler = signal.signal(signal.SIGINT, on_sigint)
    except ValueError:  # not in the main thread
        old_handler = None
    try:
        low_active_run = 0
        last = len(stages) - 1
        if "refined" in trainer.extra:  # resumed after a refinement: restore it whole (eta and diagnostics)
            stages[last].threshold = refined_thr = _threshold_from_json(stages[last].threshold,
                                                                        trainer.extra["refined"])
        while trainer.step_count < cfg.am.steps:
            j = max(i for i, s in enumerate(stages) if s.start <= trainer.step_count)
            refine_now = (j == last and (last > 0 or not adaptive)) or \
                (adaptive and trainer.step_count >= int(cfg.am.steps * (1 - cfg.final_stage_fraction)))
            auto_refine = cfg.refine_threshold == "auto" and (last > 0 or adaptive) and tracker is None \
                and not weighted
            if (cfg.method == "tfft" and not custom and refine_now and "refined" not in trainer.extra
                    and (cfg.refine_threshold == "always" or auto_refine)):
                t3 = time.perf_counter()
                refined = refine_threshold(trainer.model, base, reward, stages[last].threshold, cfg,
                                           cond_sampler=cond_sampler, log=log)
                timings["refine"] = time.perf_counter() - t3
                stages[last].threshold = refined_thr = refined
                trainer.extra["refined"] = _threshold_to_json(refined)
                if tracker is not None:
                    tracker.eta = float(refined.eta)
            tr, lam = target(stages[j])
            trainer.set_target(tr, lam)
            st = trainer.step(stage=j)
            d = st.__dict__
            if tr is tracker:
                try:
                    rec = tracker.update(trainer.step_count - 1 - stages[j].start, st.kl)
                except ThresholdGuardError as err:
                    trainer.extra["tracking"] = tracker.state_dict()
                    save()
                    err.trainer = trainer
                    raise
                trainer.extra["tracking"] = tracker.state_dict()
                d["eta_used"], d["eta_tracked"] = tracker.last_eta, tracker.eta
                d["mass_beyond_eta"] = rec.get("mass_beyond")
                if trainer.history and trainer.history[-1]["step"] == st.step:
                    trainer.history[-1].update(eta_used=tracker.last_eta, eta_tracked=tracker.eta,
                                               mass_beyond_eta=rec.get("mass_beyond"))
            if isinstance(tr, AdaptiveHinge):
                d["eta_used"] = tr.last_eta
                if trainer.history and trainer.history[-1]["step"] == st.step:
                    trainer.history[-1]["eta_used"] = tr.last_eta
            if cfg.method == "tfft" and not custom and j == len(stages) - 1:
                low_active_run = low_active_run + 1 if st.active_fraction == 0 else 0
                if low_active_run == 50:
                    log("warning: no active sample in the last 50 batches of the final stage: "
                        "the hinge is dead; increase alpha, lower beta or use continuation='alpha'.")
            for cb in callbacks or []:
                cb(trainer, d)
            if pbar is not None:
                pbar.update(1)
                if trainer.step_count % 10 == 0:
                    # the Adjoint Matching loss (scaled by lam^2, 1e3-1e4 on molecules) is in history.csv;
                    # the bar shows what means something on its own: KL, the active fraction, the reward
                    pbar.set_postfix(kl=f"{st.kl:.3g}", active=f"{st.active_fraction:.2f}",
                                     r=f"{st.reward_mean:.3g}")
            if ckpt is not None and trainer.step_count % checkpoint_every == 0:
                save()
            if interrupted["flag"]:
                save()
                raise KeyboardInterrupt(f"interrupted at step {trainer.step_count}; checkpoint saved"
                                        + (f" in {ckpt}" if ckpt else ""))
    finally:
        if pbar is not None:
            pbar.close()
        if old_handler is not None:
            signal.signal(signal.SIGINT, old_handler)
    save()
    timings["stage2"] = time.perf_counter() - t2
    timings["total"] = time.perf_counter() - t0
    if cfg.method == "tfft" and not custom:
        threshold = stages[-1].threshold
    tracking = None
    if tracker is not None:
        tracking = {"eta": tracker.eta, "eta_stage1": tracker.eta0, "corrections": tracker.corrections,
                    "catch_ups": tracker.catch_ups, "tracked": tracker.tracking, "balance": tracker.cfg.balance,
                    "flags": list(tracker.flags), "trace": tracker.trace, "trust": trust.message if trust else None,
                    "sampler": cfg.offline_sampler}
        log(f"threshold tracking: eta {tracker.eta0:.5g} (stage 1) -> {tracker.eta:.5g} (self-consistent, on-policy); "
            f"{tracker.corrections} guard correction(s), {tracker.catch_ups} catch-up jump(s)")
    return TFFTResult(trainer.final_model(), threshold, stages, trainer.history, rewards_np, timings, trainer,
                      stage1=stage1, refined=refined_thr, tracking=tracking)
