"""``run(config)``: one config in, a report directory out, for every task kind.

Steps (each owned by one module):

1. validate the config (:mod:`tfftmol.pipeline.config`) and claim the run
   directory (:mod:`tfftmol.pipeline.rundir`: lock, resume checks);
2. load the base model and build the reward (the task);
3. ``run_tfft`` (:mod:`tfftmol.core.tfft`): offline batch, stage 1, stage 2;
4. same-noise evaluation: ``eval.samples`` fresh samples of the pre-trained and the
   fine-tuned model from one seeded noise (:func:`tfftmol.core.sampling.sample`),
   scored by the task;
5. the control-cost KL estimate (:func:`tfftmol.core.estimators.estimate_kl`);
6. the metrics table (one row per model, same columns for every task) with the
   stage-1 prediction and the realisation ratio;
7. the report (:mod:`tfftmol.pipeline.report`).

The realisation ratio of a run is ``(CVaR reached - CVaR pre-trained) /
(CVaR predicted by stage 1 - CVaR pre-trained)`` in the run's own tail.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Optional

import numpy as np
import pandas as pd
import torch

from ..core.estimators import estimate_kl
from ..core.offline import model_fingerprint
from ..core.reward import reward_hook
from ..core.sampling import sample
from ..core.tfft import TFFTResult, run_tfft
from ..core.validate import check_flow_model
from .config import RunConfig, load_run_config
from .metrics import metrics_table, own_tail_column, predicted_own, realisation_ratio
from .registry import get_task
from .report import write_report
from .rundir import RunDir
from .task import Evaluation

__all__ = ["run", "RunResult", "own_tail_column", "realisation_ratio", "evaluate_models"]


@dataclass
class RunResult:
    """What :func:`run` returns.

    Attributes:
        config: the validated :class:`RunConfig`.
        run_dir: the report directory.
        metrics: one row per model (``method`` = ``pretrained`` and the run's method).
        evaluations: ``label -> Evaluation`` of the evaluation samples.
        kl: control-cost estimate of ``KL(p_ft || p_pre)`` (nats), ``nan`` if skipped.
        tfft: the :class:`~tfftmol.core.tfft.TFFTResult` (model, thresholds, history).
        timings: seconds per phase.
        files: ``name -> path`` of the report files.
        reward: the task's reward object (e.g. a molecular reward with its surrogate's ``reports``).
    """

    config: RunConfig
    run_dir: Path
    metrics: pd.DataFrame
    evaluations: dict
    kl: float
    tfft: TFFTResult
    timings: dict
    files: dict = field(default_factory=dict)
    reward: Any = None

    @property
    def model(self):
        return self.tfft.model

    @property
    def samples(self) -> Optional[pd.DataFrame]:
        """Per-sample table of the fine-tuned model's evaluation samples."""
        return self.evaluations[self.config.tfft.method].samples

    @property
    def pre_samples(self) -> Optional[pd.DataFrame]:
        """Per-sample table of the pre-trained model's evaluation samples (same noise)."""
        return self.evaluations["pretrained"].samples

    @property
    def eta(self) -> Optional[float]:
        return None if self.tfft.threshold is None else float(self.tfft.threshold.eta)

    @property
    def realisation(self) -> float:
        return float(self.metrics["realisation"].iloc[-1])

    def table(self) -> pd.DataFrame:
        """The headline columns of the metrics."""
        own = own_tail_column(self.config)
        cols = ["method", "n", "validity", "uniqueness", "novelty", "reward_mean", "reward_cvar_left_0.1",
                "reward_cvar_right_0.9", own, "kl", "cvar_predicted", "realisation"]
        cols = list(dict.fromkeys(c for c in cols if c in self.metrics.columns))
        return self.metrics[cols]


def evaluate_models(cfg: RunConfig, task, models: dict, reward, cond_sampler=None,
                    progress: bool = False) -> dict[str, Evaluation]:
    """Sample every model from the same seeded noise and score the samples with the task.

    Args:
        models: ``label -> flow model`` (e.g. ``{"pretrained": base, "tfft": model}``).
    """
    ev = cfg.eval
    seed = cfg.seed + 1 if ev.seed is None else ev.seed
    method = {"ode": "euler"}.get(ev.sampler, ev.sampler)
    out = {}
    for label, model in models.items():
        was = getattr(model, "training", None)
        if isinstance(model, torch.nn.Module):
            model.eval()
        s = sample(model, ev.samples, method=method, steps=ev.steps, generator=torch.Generator().manual_seed(seed),
                   cond_sampler=cond_sampler, batch_size=ev.batch_size, progress=progress,
                   desc=f"evaluate {label}")
        if isinstance(model, torch.nn.Module) and was is not None:
            model.train(was)
        out[label] = task.evaluate(cfg, s, reward, label)
    return out


def run(config: Any, *, resume: bool = False, overwrite: bool = False, progress: bool = True,
        callbacks: Optional[list[Callable]] = None, log: Callable[[str], None] = print, plots: bool = True,
        **overrides: Any) -> RunResult:
    """Run one fine-tune of any task kind end to end and write its report.

    Args:
        config: a :class:`RunConfig`, a mapping (nested or the flat form of earlier
            releases) or a YAML path; validated before anything is computed.
        resume: continue from the checkpoint in ``<run_dir>/checkpoint`` (the config and
            the base model's weights must be those of the interrupted run).
        overwrite: replace an existing run directory of the same name (without it an
            existing run directory is an error, never silently overwritten).
        progress: progress bars.
        callbacks: extra ``cb(trainer, stats)`` after every stage-2 step.
        log: where the diagnostics go.  With the default (``print``) each distinct warning is shown
            once, and the stage-1 summary leaves out the lines that repeat one.
        plots: draw the report's figures (Optuna trials skip them; the numbers are the same).
        overrides: top-level config fields to replace (``out_dir``, ``name``, ...).

    Returns:
        :class:`RunResult`.

    Raises:
        ConfigError: a bad config (before any compute).
        RunDirError: the run directory is in use, exists, or cannot be resumed safely.
        KeyboardInterrupt: on SIGINT during stage 2, after the checkpoint is saved.
    """
    if log is not print:
        return _run(config, resume=resume, overwrite=overwrite, progress=progress, callbacks=callbacks, log=log,
                    plots=plots, **overrides)
    from .console import log_without, warnings_once

    with warnings_once() as shown:   # printing its own log: each warning once, not again in the summary
        return _run(config, resume=resume, overwrite=overwrite, progress=progress, callbacks=callbacks,
                    log=log_without(shown), plots=plots, **overrides)


def _run(config: Any, *, resume: bool = False, overwrite: bool = False, progress: bool = True,
         callbacks: Optional[list[Callable]] = None, log: Callable[[str], None] = print, plots: bool = True,
         **overrides: Any) -> RunResult:
    """The body of :func:`run` (``log`` as given)."""
    cfg = load_run_config(config, **overrides)
    task = get_task(cfg.task)
    t_start = time.perf_counter()
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    device = torch.device(cfg.device)
    with RunDir(cfg, resume=resume, overwrite=overwrite) as rd:
        base = task.load_base(cfg, device)
        check_flow_model(base, device, cond_sampler=task.cond_sampler(cfg, base))  # before any compute
        fp = model_fingerprint(base)
        resuming = rd.prepare(fp)
        reward = task.build_reward(cfg, base, device, log)
        if resuming:
            state = rd.state  # read and verified once by the run directory
            loader = reward_hook(reward, "load_state_dict")
            if state is not None and loader is not None and "reward_state" in state.get("extra", {}):
                loader(state["extra"]["reward_state"])
        t = cfg.tfft
        log(f"[{cfg.name}] {t.method} fine-tune, task {cfg.task}: {task.describe(cfg)} "
            f"({t.tail} tail, beta={t.beta:g}, alpha={t.alpha:g}, {t.am.steps} steps)")
        cond = task.cond_sampler(cfg, base)
        cbs = list(task.callbacks(reward))
        saver = reward_hook(reward, "state_dict")
        if saver is not None:
            cbs.append(lambda trainer, stats: trainer.extra.__setitem__("reward_state", saver()))
        res = run_tfft(base, reward, t, cache_dir=cfg.offline_cache_dir, checkpoint_dir=rd.checkpoint,
                       checkpoint_every=cfg.checkpoint_every, resume=resuming, device=device, progress=progress,
                       cond_sampler=cond, callbacks=cbs + list(callbacks or []), log=log,
                       stop_on_degenerate=cfg.degenerate_tail == "stop")
        timings = dict(res.timings)

        t_eval = time.perf_counter()
        model = res.model.eval() if isinstance(res.model, torch.nn.Module) else res.model
        evs = evaluate_models(cfg, task, {"pretrained": base, t.method: model}, reward, cond, progress)
        kl = float("nan")
        if cfg.eval.kl_samples:
            kl = estimate_kl(model, base, n=cfg.eval.kl_samples, steps=t.am.time_steps,
                             seed=cfg.seed + 2 if cfg.eval.kl_seed is None else cfg.eval.kl_seed,
                             cond_sampler=cond, batch_size=min(cfg.eval.kl_samples, 250))
        timings["evaluate"] = time.perf_counter() - t_eval
        metrics = metrics_table(cfg, res, evs, kl, timings)
        timings["tfft_total"] = timings.pop("total", np.nan)
        timings["total"] = time.perf_counter() - t_start
        result = RunResult(cfg, rd.path, metrics, evs, kl, res, timings, reward=reward)
        result.files = write_report(cfg, task, result, base, reward, plots=plots)
        rd.finish(fp)
    own = own_tail_column(cfg)
    m = metrics
    line = f"{own}: {m[own].iloc[0]:.4g} (pretrained) -> {m[own].iloc[1]:.4g} ({t.method}), KL {kl:.3g}"
    if res.stage1 is not None:
        line += (f"; stage 1 predicted {predicted_own(res.stage1):.4g} at KL {res.stage1.predicted_kl:.3g}; "
                 f"realisation {m['realisation'].iloc[1]:.2f}")
    log(line)
    log(f"report: {result.files.get('report')}")
    return result
