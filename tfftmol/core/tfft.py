"""The TFFT two-stage driver (DESIGN.md §1) and the expected-reward baseline.

1. **Offline batch**: ``M`` samples of the pre-trained model, scored with the
   true reward, cached on disk (keyed by model, reward, ``M``, steps and seed)
   and reused by later runs and Optuna trials.
2. **Stage 1**: the exact threshold ``eta*`` on those rewards
   (:func:`tfftmol.core.threshold.solve_threshold`), with its diagnostics.
3. **Stage 2**: one Adjoint Matching fine-tune on the pseudo-reward
   ``g(r) = (r - eta*)_+/(1-beta)`` (right) or ``-(eta* - r)_+/beta`` (left),
   with ``lam = 1/alpha``.

**The dead hinge and its continuation.**  With small ``alpha`` the optimal
threshold can sit above almost every pre-trained sample; the on-policy batch
then holds no active sample and the Adjoint Matching loss is exactly zero.
When stage 1 reports an active fraction below ``min_active_fraction`` the
driver runs a *continuation*: a short sequence of stages whose targets are
exact TFFT optima for easier settings, ending at the requested ``(alpha,
beta)``.  Each stage re-solves ``eta*`` on the cached batch, so every stage's
target is exact and the last one is the requested target; earlier stages only
warm-start the model so that its own samples reach the tail.

* ``continuation="alpha"`` (default for ``"auto"``): anneal ``alpha`` geometrically
  from the smallest ``alpha_0 = alpha * 2^j`` whose active fraction reaches
  ``min_active_fraction`` down to ``alpha``.
* ``continuation="beta"``: ramp ``beta`` from a level whose threshold is active
  toward the requested one at fixed ``alpha``.

The choice of default is measured by ``benchmarks/toy2d.py``.
"""
from __future__ import annotations

import hashlib
import json
import math
import signal
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Optional

import numpy as np
import torch
from torch import nn

from .adjoint import AdjointMatching, AMConfig, IdentityTransform, sample_importance
from .checkpoint import atomic_write_text, load_checkpoint, load_tensors, save_checkpoint, save_tensors
from .flow import FlowModel
from .pseudo import PseudoReward, TerminalTransform
from .reward import RewardBatch, TerminalReward
from .risk import cvar
from .samplers import sample_ode, sample_sde
from .threshold import ThresholdResult, TfftWarning, solve_threshold

__all__ = ["TFFTConfig", "TFFTResult", "Stage", "run_tfft", "offline_batch", "plan_stages", "model_fingerprint"]


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
        offline_sampler: ``"heun"`` (default: second-order ODE, the most faithful to the
            tails of ``p_pre`` per step), ``"ode"`` (Euler) or ``"sde"``.
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
        seed: seeds the offline batch.
        am: :class:`AMConfig`.
    """

    method: str = "tfft"
    tail: str = "right"
    beta: float = 0.9
    alpha: float = 1.0
    offline_samples: int = 10000
    offline_steps: int = 50
    offline_sampler: str = "heun"
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
    seed: int = 0
    am: AMConfig = field(default_factory=AMConfig)

    def __post_init__(self):
        if self.method not in ("tfft", "expected"):
            raise ValueError(f"method={self.method!r} must be one of 'tfft', 'expected'")
        if self.tail not in ("right", "left"):
            raise ValueError(f"tail={self.tail!r} must be one of 'right', 'left'")
        if not (isinstance(self.beta, (int, float)) and 0 < self.beta < 1):
            raise ValueError(f"beta={self.beta!r} must be in the open interval (0, 1)")
        if not (isinstance(self.alpha, (int, float)) and self.alpha > 0 and math.isfinite(self.alpha)):
            raise ValueError(f"alpha={self.alpha!r} must be a finite number > 0")
        if not (isinstance(self.offline_samples, int) and self.offline_samples >= 2):
            raise ValueError(f"offline_samples={self.offline_samples!r} must be an integer >= 2")
        if self.offline_sampler not in ("heun", "ode", "sde"):
            raise ValueError(f"offline_sampler={self.offline_sampler!r} must be one of 'heun', 'ode', 'sde'")
        if self.continuation not in ("auto", "adaptive", "eta", "alpha", "beta", "none"):
            raise ValueError(f"continuation={self.continuation!r} must be one of "
                             "'auto', 'adaptive', 'eta', 'alpha', 'beta', 'none'")
        tail_mass = 1 - self.beta if self.tail == "right" else self.beta
        if self.adaptive_active == 0:
            self.adaptive_active = 0.75 * tail_mass
        if not (0 < self.adaptive_active < tail_mass):
            raise ValueError(f"adaptive_active={self.adaptive_active} must be in (0, {tail_mass:g}) "
                             f"(below the target's tail mass)")
        if not (0 <= self.min_active_fraction < 1):
            raise ValueError(f"min_active_fraction={self.min_active_fraction} must be in [0, 1)")
        if not (isinstance(self.continuation_stages, int) and self.continuation_stages >= 1):
            raise ValueError(f"continuation_stages={self.continuation_stages!r} must be an integer >= 1")
        if not (0 < self.final_stage_fraction <= 1):
            raise ValueError(f"final_stage_fraction={self.final_stage_fraction} must be in (0, 1]")
        if self.refine_threshold not in ("auto", "always", "never"):
            raise ValueError(f"refine_threshold={self.refine_threshold!r} must be one of 'auto', 'always', 'never'")
        if not (isinstance(self.refine_samples, int) and self.refine_samples >= 2):
            raise ValueError(f"refine_samples={self.refine_samples!r} must be an integer >= 2")
        if self.smoothing < 0:
            raise ValueError(f"smoothing={self.smoothing} must be >= 0")
        if isinstance(self.am, dict):
            from .config import from_dict
            self.am = from_dict(AMConfig, self.am, "am")


@dataclass
class Stage:
    """One stage of a (possibly single-stage) fine-tune: its exact target and its step range."""

    alpha: float
    beta: float
    start: int
    stop: int
    threshold: Optional[ThresholdResult] = None

    def describe(self) -> str:
        eta = f", eta*={self.threshold.eta:.4g}, active={self.threshold.active_fraction:.2%}" if self.threshold else ""
        return f"steps {self.start}-{self.stop}: alpha={self.alpha:.4g}, beta={self.beta:.4g}{eta}"


@dataclass
class TFFTResult:
    """What a run returns.

    Attributes:
        model: the fine-tuned flow (EMA weights if configured).
        threshold: stage-1 result at the requested ``(alpha, beta)`` (``None`` for ``expected``).
        stages: the continuation stages actually used.
        history: per-step statistics (list of dicts: loss, kl, active_fraction, ...).
        offline_rewards: ``(M,)`` rewards of the offline batch, or ``None``.
        timings: seconds per phase.
        trainer: the :class:`AdjointMatching` object.
    """

    model: nn.Module
    threshold: Optional[ThresholdResult]
    stages: list
    history: list
    offline_rewards: Optional[np.ndarray]
    timings: dict
    trainer: AdjointMatching


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
        import dataclasses
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


def model_fingerprint(model: Any) -> str:
    """A short hash identifying a model's weights (or its tensors, for closed-form models)."""
    if hasattr(model, "cache_key"):
        return str(model.cache_key)
    h = hashlib.sha1(type(model).__name__.encode())
    if isinstance(model, nn.Module):
        for k, v in sorted(model.state_dict().items()):
            h.update(k.encode())
            h.update(v.detach().cpu().contiguous().numpy().tobytes())
    else:
        for k, v in sorted(vars(model).items()):
            if isinstance(v, torch.Tensor):
                h.update(k.encode())
                h.update(v.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()[:16]


def _reward_key(reward: Any) -> str:
    if hasattr(reward, "cache_key"):
        return str(reward.cache_key)
    return str(getattr(reward, "name", type(reward).__name__))


def offline_batch(base: FlowModel, reward: TerminalReward, n: int, steps: int = 50, sampler: str = "heun",
                  seed: int = 0, cache_dir: str | Path | None = None, batch_size: int = 1000,
                  device: str | torch.device = "cpu", cond_sampler=None, progress: bool = False):
    """Draw ``n`` samples of the pre-trained model and score them with the true reward.

    The batch is cached in ``cache_dir`` under a key of (model fingerprint,
    reward key, ``n``, steps, sampler, seed): later runs load it instead of
    recomputing.

    Returns:
        ``(x, values, valid, cached)`` with ``x`` of shape ``(n, *state_shape)``,
        ``values``/``valid`` of shape ``(n,)``, and ``cached`` True if it was loaded.
    """
    key = hashlib.sha1(json.dumps([model_fingerprint(base), _reward_key(reward), n, steps, sampler, seed]).encode()).hexdigest()[:20]
    path = Path(cache_dir) / f"offline-{key}.safetensors" if cache_dir is not None else None
    if path is not None and path.exists():
        t = load_tensors(path)
        return t["x"], t["values"], t["valid"].bool(), True
    gen = torch.Generator().manual_seed(seed)
    xs, vs, ok = [], [], []
    it = range(0, n, batch_size)
    if progress:
        from tqdm.auto import tqdm
        it = tqdm(it, desc="offline batch", unit="batch")
    for i in it:
        m = min(batch_size, n - i)
        cond = cond_sampler(m, gen) if cond_sampler else None
        x0 = base.sample_prior(m, generator=gen, device="cpu").to(device)
        if sampler in ("ode", "heun"):
            x = sample_ode(base, m, steps, method="euler" if sampler == "ode" else "heun", x0=x0, cond=cond)
        else:
            x = sample_sde(base, m, steps, generator=gen, cond=cond, x_start=x0)
        rb = reward.evaluate(x)
        xs.append(x.detach().cpu())
        vs.append(rb.values.detach().cpu().double())
        ok.append(rb.valid.detach().cpu())
    x, values, valid = torch.cat(xs), torch.cat(vs), torch.cat(ok)
    if path is not None:
        save_tensors(path, {"x": x, "values": values, "valid": valid.to(torch.uint8)},
                     metadata={"key": key, "n": str(n)})
    return x, values, valid, False


def plan_stages(rewards: np.ndarray, cfg: TFFTConfig, log: Callable[[str], None] = print) -> list[Stage]:
    """Stage-1 solve at the requested setting and, if the hinge is starved, a continuation schedule.

    Every stage's ``eta*`` is re-solved on the same cached rewards.
    """
    total = cfg.am.steps
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", TfftWarning)
        final = solve_threshold(rewards, cfg.beta, cfg.alpha, cfg.tail, bootstrap=cfg.bootstrap, seed=cfg.seed,
                                min_active_fraction=cfg.min_active_fraction)
    for w in caught:
        warnings.warn_explicit(w.message, w.category, w.filename, w.lineno)
    mode = cfg.continuation
    if mode == "auto":
        mode = "adaptive"
    starved = final.active_fraction < cfg.min_active_fraction
    if mode == "adaptive":
        if starved:
            log(f"stage 1: active fraction {final.active_fraction:.3%} < {cfg.min_active_fraction:.1%}: "
                f"adaptive continuation (the hinge follows the batch's {cfg.adaptive_active:.0%}-tail until the model "
                f"reaches eta*={final.eta:.4g}; the final target is exact)")
        return [Stage(cfg.alpha, cfg.beta, 0, total, final)]
    if mode == "none" or not starved or cfg.continuation_stages == 1:
        if starved:
            log(f"warning: active fraction {final.active_fraction:.3%} < {cfg.min_active_fraction:.1%} and "
                f"continuation='{cfg.continuation}': the hinge may be dead.")
        return [Stage(cfg.alpha, cfg.beta, 0, total, final)]

    def solve(a, b):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", TfftWarning)
            return solve_threshold(rewards, b, a, cfg.tail, min_active_fraction=0.0, min_ess_fraction=0.0)

    n = cfg.continuation_stages
    import dataclasses

    if mode == "eta":
        # thresholds from the pre-trained quantile with active fraction continuation_start_active up to eta*:
        # each intermediate target tilts *more* than p*, so the model overshoots into the tail and the
        # final stage starts with many active samples and relaxes onto the exact target.
        q = 1 - cfg.continuation_start_active if cfg.tail == "right" else cfg.continuation_start_active
        eta0 = float(np.quantile(rewards, q))
        params = [(cfg.alpha, cfg.beta)] * n
        thresholds = [dataclasses.replace(final, eta=eta0 + (final.eta - eta0) * j / (n - 1)) for j in range(n - 1)]
    elif mode == "alpha":
        a0 = cfg.alpha
        for _ in range(40):
            a0 *= 2.0
            if solve(a0, cfg.beta).active_fraction >= cfg.min_active_fraction:
                break
        params = [(a0 * (cfg.alpha / a0) ** (j / (n - 1)), cfg.beta) for j in range(n)]
    else:  # beta ramp toward the requested level at fixed alpha
        # tail masses (1-beta for right, beta for left) geometric from an easy level to the requested one;
        # the easy level is the most extreme whose stage-1 active fraction reaches continuation_start_active.
        m_final = 1 - cfg.beta if cfg.tail == "right" else cfg.beta
        m_easy = m_final
        for j in range(1, 61):
            m_try = min(0.95, m_final * (0.95 / m_final) ** (j / 60))
            b_try = 1 - m_try if cfg.tail == "right" else m_try
            m_easy = m_try
            if solve(cfg.alpha, b_try).active_fraction >= cfg.continuation_start_active:
                break
        masses = [m_easy * (m_final / m_easy) ** (j / (n - 1)) for j in range(n)]
        params = [(cfg.alpha, 1 - m if cfg.tail == "right" else m) for m in masses]
    if mode != "eta":
        thresholds = [solve(a, b) for a, b in params[:-1]]
    thresholds.append(final)  # the last stage is always the exact requested target
    final_steps = max(1, int(round(total * cfg.final_stage_fraction)))
    pre = total - final_steps
    bounds = [round(pre * j / (n - 1)) for j in range(n)] + [total]
    stages = [Stage(float(a), float(b), int(bounds[j]), int(bounds[j + 1]), thresholds[j])
              for j, (a, b) in enumerate(params)]
    stages = [s for s in stages if s.stop > s.start]
    log(f"stage 1: active fraction {final.active_fraction:.3%} < {cfg.min_active_fraction:.1%}; "
        f"continuation over {mode} in {len(stages)} stages:")
    for s in stages:
        log("  " + s.describe())
    return stages


def run_tfft(base: FlowModel, reward: TerminalReward, config: TFFTConfig, *, cache_dir: str | Path | None = None,
             checkpoint_dir: str | Path | None = None, checkpoint_every: int = 100, resume: bool = True,
             device: str | torch.device = "cpu", progress: bool = True, cond_sampler=None,
             callbacks: Optional[list[Callable[[AdjointMatching, dict], None]]] = None,
             log: Callable[[str], None] = print) -> TFFTResult:
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
            up from the last checkpoint.
        callbacks: called as ``cb(trainer, stats_dict)`` after every step.

    Returns:
        :class:`TFFTResult`.
    """
    cfg = config
    timings: dict[str, float] = {}
    t0 = time.perf_counter()
    need_offline = cfg.method == "tfft" or hasattr(reward, "fit_offline")
    rewards_np = None
    stages: list[Stage]
    threshold = None
    if need_offline:
        x_off, v_off, valid_off, cached = offline_batch(
            base, reward, cfg.offline_samples, cfg.offline_steps, cfg.offline_sampler, cfg.seed, cache_dir,
            device=device, cond_sampler=cond_sampler, progress=progress)
        rewards_np = v_off.numpy().astype(np.float64)
        timings["offline"] = time.perf_counter() - t0
        log(f"offline batch: {len(rewards_np)} samples ({'cached' if cached else 'sampled'}), "
            f"valid {valid_off.float().mean():.1%}, mean reward {rewards_np.mean():.4g}")
        if hasattr(reward, "fit_offline"):
            t1 = time.perf_counter()
            reward.fit_offline(x_off, v_off, valid_off)
            timings["fit_offline"] = time.perf_counter() - t1
    t1 = time.perf_counter()
    if cfg.method == "tfft":
        stages = plan_stages(rewards_np, cfg, log)
        threshold = stages[-1].threshold
        log(str(threshold))
    else:
        stages = [Stage(cfg.alpha, cfg.beta, 0, cfg.am.steps, None)]
    timings["stage1"] = time.perf_counter() - t1

    adaptive = cfg.method == "tfft" and cfg.continuation in ("auto", "adaptive") and \
        stages[-1].threshold.active_fraction < cfg.min_active_fraction

    def target(stage: Stage):
        if cfg.method == "expected":
            return IdentityTransform(), 1.0 / stage.alpha
        exact = PseudoReward.from_threshold(stage.threshold, smoothing=cfg.smoothing)
        if adaptive:
            return AdaptiveHinge(exact, cfg.adaptive_active), 1.0 / stage.alpha
        return exact, 1.0 / stage.alpha

    tr, lam = target(stages[0])
    trainer = AdjointMatching(base, reward, tr, lam, cfg.am, device=device, cond_sampler=cond_sampler)
    ckpt = Path(checkpoint_dir) if checkpoint_dir is not None else None
    if ckpt is not None and resume:
        state = load_checkpoint(ckpt)
        if state is not None:
            trainer.load_state_dict(state)
            log(f"resumed from checkpoint at step {trainer.step_count}")

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
        if "refined" in trainer.extra:  # resumed after a refinement: restore its threshold
            stages[last].threshold = _threshold_from_dict(trainer.extra["refined"], stages[last].threshold)
        while trainer.step_count < cfg.am.steps:
            j = max(i for i, s in enumerate(stages) if s.start <= trainer.step_count)
            refine_now = (j == last and (last > 0 or not adaptive)) or \
                (adaptive and trainer.step_count >= int(cfg.am.steps * (1 - cfg.final_stage_fraction)))
            if (cfg.method == "tfft" and refine_now and "refined" not in trainer.extra
                    and (cfg.refine_threshold == "always" or (cfg.refine_threshold == "auto" and (last > 0 or adaptive)))):
                t3 = time.perf_counter()
                refined = refine_threshold(trainer.model, base, reward, stages[last].threshold, cfg,
                                           cond_sampler=cond_sampler, log=log)
                timings["refine"] = time.perf_counter() - t3
                stages[last].threshold = refined
                trainer.extra["refined"] = {"eta": refined.eta}
            tr, lam = target(stages[j])
            trainer.set_target(tr, lam)
            st = trainer.step(stage=j)
            d = st.__dict__
            if isinstance(tr, AdaptiveHinge):
                d["eta_used"] = tr.last_eta
                if trainer.history and trainer.history[-1]["step"] == st.step:
                    trainer.history[-1]["eta_used"] = tr.last_eta
            if cfg.method == "tfft" and j == len(stages) - 1:
                low_active_run = low_active_run + 1 if st.active_fraction == 0 else 0
                if low_active_run == 50:
                    log("warning: no active sample in the last 50 batches of the final stage: "
                        "the hinge is dead; increase alpha, lower beta or use continuation='alpha'.")
            for cb in callbacks or []:
                cb(trainer, d)
            if pbar is not None:
                pbar.update(1)
                if trainer.step_count % 10 == 0:
                    pbar.set_postfix(loss=f"{st.loss:.3g}", kl=f"{st.kl:.3g}", active=f"{st.active_fraction:.2f}",
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
    if cfg.method == "tfft":
        threshold = stages[-1].threshold
    return TFFTResult(trainer.final_model(), threshold, stages, trainer.history, rewards_np, timings, trainer)


def refine_threshold(model, base, reward, current: ThresholdResult, cfg: TFFTConfig, cond_sampler=None,
                     log: Callable[[str], None] = print) -> ThresholdResult:
    """Re-solve ``eta*`` on importance-weighted samples of the current fine-tuned model.

    Keeps ``current`` unless the refined solve has a larger tilt ESS.
    """
    gen = torch.Generator().manual_seed(cfg.seed + 7919)
    x, logw = sample_importance(model, base, cfg.refine_samples, cfg.am.time_steps, gen, cond_sampler)
    r = reward.evaluate(x).values.detach().cpu().double().numpy()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", TfftWarning)
        new = solve_threshold(r, cfg.beta, cfg.alpha, cfg.tail, log_weights=logw.cpu().numpy(),
                              bootstrap=cfg.bootstrap, seed=cfg.seed, min_active_fraction=0.0)
    use = new.ess > current.ess
    log(f"threshold refinement on {len(r)} importance-weighted samples of the fine-tuned model: "
        f"eta* {current.eta:.5g} -> {new.eta:.5g} (tilt ESS {current.ess:.0f} -> {new.ess:.0f}, "
        f"importance ESS {new.is_ess:.0f}); {'using the refined value' if use else 'keeping the stage-1 value'}")
    return new if use else current


def _threshold_from_dict(d: dict, fallback: ThresholdResult) -> ThresholdResult:
    import dataclasses
    return dataclasses.replace(fallback, eta=float(d["eta"]))
