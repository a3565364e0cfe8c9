"""Running an Optuna study over ``beta`` and ``alpha``, and writing what it found.

Storage is plain Optuna RDB storage (any SQLAlchemy URL; SQLite under
``runs/<study>/study.db`` by default), so ``optuna-dashboard <url>`` reads it
as is.  Several workers (processes, on one machine or many) pointing at the
same URL share one study: each asks Optuna for the next trial until the study
holds ``n_trials`` finished (complete or pruned) trials (a worker reads the count
before it asks, so ``k`` workers can overshoot it by up to ``k - 1`` trials in the
last round).  Every trial beats a heartbeat; a worker that dies (even by SIGKILL)
leaves a RUNNING trial whose heartbeat stops, and the next worker to start a trial
marks it FAIL (``optuna.storages.fail_stale_trials``) and runs a replacement, so
the study still reaches its count.
"""
from __future__ import annotations

import json
import math
import os
import socket
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Optional

import numpy as np
import optuna
import pandas as pd

from tfftmol.core.checkpoint import atomic_write_text
from tfftmol.core.config import ConfigError, dump_yaml, to_dict
from tfftmol.core.tracking import ThresholdGuardError

from .config import TuneConfig, load_tune_config
from .trials import TrialRunner, make_runner

__all__ = ["TuneResult", "run_study", "make_storage", "make_sampler", "make_pruner", "FeasibleMedianPruner",
           "default_storage_url",
           "write_outputs", "feasible", "FINISHED"]

FINISHED = (optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED)


def default_storage_url(study_dir: str | Path) -> str:
    """``sqlite:///<abs>/study.db`` inside the study directory."""
    return f"sqlite:///{(Path(study_dir).resolve() / 'study.db').as_posix()}"


def make_storage(url: str, heartbeat_interval: int = 10, grace_period: int = 30) -> optuna.storages.RDBStorage:
    """Optuna RDB storage with the heartbeat on (``heartbeat_interval`` s, stale after ``grace_period`` s)."""
    engine_kwargs: dict = {}
    if url.startswith("sqlite"):
        engine_kwargs = {"connect_args": {"timeout": 60}}  # several local workers wait on SQLite's lock
    else:
        engine_kwargs = {"pool_pre_ping": True}
    import random

    import sqlalchemy.exc

    for attempt in range(8):
        try:
            with warnings.catch_warnings():  # the heartbeat is an "experimental" Optuna argument
                warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
                return optuna.storages.RDBStorage(url, engine_kwargs=engine_kwargs,
                                                  heartbeat_interval=heartbeat_interval, grace_period=grace_period)
        except (sqlalchemy.exc.IntegrityError, sqlalchemy.exc.OperationalError, sqlalchemy.exc.ProgrammingError):
            # workers started together on a fresh database race to create Optuna's tables; the loser retries
            if attempt == 7:
                raise
            time.sleep(0.2 + random.random() * 0.5 * (attempt + 1))
    raise AssertionError("unreachable")


def make_sampler(cfg: TuneConfig, seed: int) -> optuna.samplers.BaseSampler:
    """TPE (one objective), NSGA-II (several) or random, seeded with ``seed``."""
    name = cfg.resolved_sampler()
    if name == "tpe":
        return optuna.samplers.TPESampler(seed=seed, n_startup_trials=cfg.n_startup_trials, multivariate=True)
    if name == "nsga2":
        return optuna.samplers.NSGAIISampler(seed=seed, population_size=cfg.population_size)
    return optuna.samplers.RandomSampler(seed=seed)


class FeasibleMedianPruner(optuna.pruners.BasePruner):
    """Optuna's median rule, judged against *feasible* complete trials only.

    A trial is pruned at step ``s`` when its intermediate value is worse than the
    median of the intermediate values at ``s`` of the complete trials that satisfy
    every constraint.  Without constraints this is ``optuna.pruners.MedianPruner``.
    With them, Optuna's own pruner would compare against infeasible trials too: in a
    study of right-CVaR under a KL budget, the trials with tiny ``alpha`` reach a
    huge tail and break the budget, the median follows them, and every feasible
    trial gets pruned.

    Args:
        n_startup_trials: no pruning until this many feasible trials are complete.
        n_warmup_steps: no pruning before this step.
    """

    def __init__(self, n_startup_trials: int = 3, n_warmup_steps: int = 0):
        self.n_startup_trials = int(n_startup_trials)
        self.n_warmup_steps = int(n_warmup_steps)

    def prune(self, study: optuna.Study, trial: optuna.trial.FrozenTrial) -> bool:
        step = trial.last_step
        if step is None or step < self.n_warmup_steps:
            return False
        ref = [t for t in study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,)) if feasible(t)]
        if len(ref) < self.n_startup_trials:
            return False
        vals = [t.intermediate_values[step] for t in ref if step in t.intermediate_values]
        if not vals:
            return False
        v = trial.intermediate_values[step]
        if math.isnan(v):
            return True
        med = float(np.nanmedian(vals))
        return v < med if study.direction == optuna.study.StudyDirection.MAXIMIZE else v > med


def make_pruner(cfg: TuneConfig) -> optuna.pruners.BasePruner:
    """:class:`FeasibleMedianPruner` for ``pruner: median`` (single objective, ``eval_every > 0``), else none."""
    if cfg.pruner == "none" or cfg.multi_objective or cfg.eval_every == 0:
        return optuna.pruners.NopPruner()
    return FeasibleMedianPruner(cfg.prune_startup_trials, cfg.prune_warmup_steps)


def feasible(trial: optuna.trial.FrozenTrial) -> bool:
    """All of the trial's constraint values are <= 0 (no constraint: feasible)."""
    return all(v <= 0 for v in trial.constraints.values())


def _suggest(trial: optuna.Trial, cfg: TuneConfig) -> dict:
    s = cfg.space
    p: dict = {}
    if s.beta is not None:
        p["beta"] = trial.suggest_float("beta", *s.beta)
    if s.alpha is not None:
        p["alpha"] = trial.suggest_float("alpha", *s.alpha, log=True)
    if s.lr is not None:
        p["lr"] = trial.suggest_float("lr", *s.lr, log=True)
    if s.steps is not None:
        p["steps"] = trial.suggest_int("steps", *s.steps)
    if s.refit_every is not None:
        p["refit_every"] = trial.suggest_int("refit_every", *s.refit_every)
    return p


class Objective:
    """The callable handed to ``study.optimize``: suggest, run, record metrics and constraints."""

    def __init__(self, cfg: TuneConfig, runner: TrialRunner, log: Callable[[str], None] = print):
        self.cfg = cfg
        self.runner = runner
        self.log = log

    def _pruning_callback(self, trial: optuna.Trial, total: int):
        cfg = self.cfg
        metric = cfg.objectives[0].metric

        def cb(trainer, stats):
            step = trainer.step_count
            if step % cfg.eval_every or step >= total:
                return
            m = self.runner.intermediate(trainer.final_model(), step)
            if metric not in m or not math.isfinite(m[metric]):
                return
            trial.report(m[metric], step)
            if trial.should_prune():
                raise optuna.TrialPruned(f"step {step}: intermediate {metric} = {m[metric]:.4g}")

        return cb

    def __call__(self, trial: optuna.Trial):
        cfg = self.cfg
        params = _suggest(trial, cfg)
        trial.set_user_attr("pid", os.getpid())
        trial.set_user_attr("host", socket.gethostname())
        callbacks = []
        if cfg.eval_every and not cfg.multi_objective and cfg.pruner != "none":
            callbacks.append(self._pruning_callback(trial, self.runner.total_steps(params)))
        t0, c0 = time.perf_counter(), time.process_time()
        stopped = None
        try:
            m = self.runner.run(params, f"trial-{trial.number:04d}", callbacks)
        except ThresholdGuardError as err:
            stopped = err
        trial.set_user_attr("wall_seconds", time.perf_counter() - t0)
        trial.set_user_attr("cpu_seconds", time.process_time() - c0)  # this worker's CPU time (all threads)
        if stopped is not None:
            # A stage-2 guard stopped the run: TFFT's target at these parameters is not realised (e.g. a
            # small alpha whose self-consistent threshold the model cannot follow).  That is an outcome of
            # the parameters, not a crash: the trial is pruned with the reason, and does not count toward
            # max_failures (which would stop the worker on a region of the space that merely runs away).
            trial.set_user_attr("stopped", str(stopped).split(". ")[0][:500])
            for k, v in (stopped.quantities or {}).items():
                if isinstance(v, (int, float)) and math.isfinite(float(v)):
                    trial.set_user_attr(f"stopped_{k}", float(v))
            raise optuna.TrialPruned(f"stopped by a stage-2 guard: {stopped}")
        for k, v in m.items():
            if isinstance(v, str) or (isinstance(v, float) and math.isfinite(v)):
                trial.set_user_attr(k, v)
        violations = []
        for c in cfg.constraints:
            if c.metric not in m:
                raise ConfigError(f"constraint metric {c.metric!r} is not measured; available: {sorted(m)}")
            violations.append(c.violation(m[c.metric]))
            trial.set_constraint(c.name, violations[-1])  # feasible when <= 0
        values = []
        for o in cfg.objectives:
            if o.metric not in m:
                raise ConfigError(f"objective metric {o.metric!r} is not measured; available: {sorted(m)}")
            v = float(m[o.metric])
            if not math.isfinite(v):
                raise RuntimeError(f"objective {o.metric} is {v}")
            values.append(v)
        self.log(f"trial {trial.number}: " + ", ".join(f"{k}={v:.4g}" for k, v in params.items()) + " -> "
                 + ", ".join(f"{o.metric}={v:.4g}" for o, v in zip(cfg.objectives, values))
                 + ("" if all(v <= 0 for v in violations) else " (infeasible)"))
        return values[0] if len(values) == 1 else values


@dataclass
class TuneResult:
    """What :func:`run_study` returns.

    Attributes:
        study: the Optuna study (reload it with ``optuna.load_study(study_name=..., storage=url)``).
        storage_url: where it lives.
        study_dir: ``<out>/<study>/`` with the outputs.
        trials: the trials DataFrame (also ``trials.csv``).
        best_params: parameters of the best feasible trial (for several objectives: the feasible
            Pareto-front trial best on the first objective); ``None`` if none is feasible.
        best_values: its objective values.
        default_values: objective values of the enqueued default trial (``None`` if not run).
        pareto: the Pareto-front trials (multi-objective studies), as a DataFrame.
        files: name -> path of every file written.
        trials_run: trials this call ran.
        wall_seconds: wall time of this call.
    """

    study: optuna.Study
    storage_url: str
    study_dir: Path
    trials: pd.DataFrame
    best_params: Optional[dict]
    best_values: Optional[list]
    default_values: Optional[list]
    pareto: Optional[pd.DataFrame]
    files: dict = field(default_factory=dict)
    trials_run: int = 0
    wall_seconds: float = 0.0


def _counts(study: optuna.Study) -> tuple[int, int, int]:
    """(finished, running, total) trials of the study."""
    ts = study.get_trials(deepcopy=False)
    done = sum(t.state in FINISHED for t in ts)
    running = sum(t.state == optuna.trial.TrialState.RUNNING for t in ts)
    return done, running, len(ts)


def run_study(config: Any, study_name: str, storage: Optional[str] = None, n_trials: int = 10,
              out_dir: str | Path = "runs", timeout: Optional[float] = None, plots: bool = True,
              log: Callable[[str], None] = print, verbose: bool = False) -> TuneResult:
    """Run (or join, or resume) the study ``study_name`` until it holds ``n_trials`` finished trials.

    Args:
        config: a :class:`TuneConfig`, a mapping or a YAML path.
        study_name: the study's name in the storage and its directory ``<out_dir>/<study_name>/``.
        storage: a SQLAlchemy URL (``postgresql://user@host:port/db``, ``sqlite:///path``); ``None``
            means SQLite at ``<out_dir>/<study_name>/study.db``.
        n_trials: the study's total of finished (complete or pruned) trials; trials from earlier
            runs and from other workers count, so a resumed study runs only the missing ones and
            its trial numbers continue.
        timeout: stop starting trials after this many seconds.
        plots: write the plots.
        log: one line per trial and per output.
        verbose: also pass the run's own log lines through.

    Returns:
        :class:`TuneResult` (the outputs are in ``study_dir``).
    """
    cfg = load_tune_config(config)
    if not (isinstance(n_trials, int) and n_trials >= 1):
        raise ConfigError(f"n_trials={n_trials!r} must be an integer >= 1")
    study_dir = Path(out_dir) / study_name
    study_dir.mkdir(parents=True, exist_ok=True)
    url = storage or default_storage_url(study_dir)
    t_start = time.perf_counter()
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)
    rdb = make_storage(url, cfg.heartbeat_interval, cfg.grace_period)
    study = optuna.create_study(study_name=study_name, storage=rdb, directions=cfg.directions,
                                sampler=make_sampler(cfg, cfg.seed), pruner=make_pruner(cfg), load_if_exists=True)
    if [d.name.lower() for d in study.directions] != cfg.directions:
        raise ConfigError(f"study {study_name!r} exists with directions {[d.name.lower() for d in study.directions]}, "
                          f"the config asks for {cfg.directions}; use another --study name")
    runner = make_runner(cfg, study_dir, log=log if verbose else (lambda s: None))
    _init_study(study, cfg, runner, log)
    objective = Objective(cfg, runner, log)
    ran = failures = 0
    catch = (RuntimeError, ValueError, FloatingPointError, ArithmeticError)
    while True:
        optuna.storages.fail_stale_trials(study)
        done, running, total = _counts(study)
        if done >= n_trials:
            break
        if timeout is not None and time.perf_counter() - t_start > timeout:
            log(f"timeout after {time.perf_counter() - t_start:.0f} s with {done}/{n_trials} trials finished")
            break
        if done + running >= n_trials:  # the rest is running elsewhere: wait, and take over if a worker dies
            time.sleep(min(1.0, cfg.heartbeat_interval))
            continue
        # seeded per trial: reproducible with one worker, distinct suggestions across workers
        study.sampler = make_sampler(cfg, cfg.seed + total)
        study.optimize(objective, n_trials=1, catch=catch, gc_after_trial=False)
        ran += 1
        last = max((t for t in study.get_trials(deepcopy=False) if t.user_attrs.get("pid") == os.getpid()),
                   key=lambda t: t.number, default=None)
        if last is not None and last.state == optuna.trial.TrialState.FAIL:
            failures += 1
            log(f"trial {last.number} failed: {last.system_attrs.get('fail_reason', '')}".rstrip())
            if failures >= cfg.max_failures:
                log(f"{failures} failed trials in a row; stopping this worker")
                break
        else:
            failures = 0
            if last is not None and last.state == optuna.trial.TrialState.PRUNED:
                if "stopped" in last.user_attrs:
                    log(f"trial {last.number}: " + ", ".join(f"{k}={v:.4g}" for k, v in last.params.items())
                        + f" -> stopped by a stage-2 guard, counted as pruned ({last.user_attrs['stopped']})")
                else:
                    log(f"trial {last.number}: pruned at step {last.last_step}")
    res = write_outputs(study, cfg, runner, study_dir, plots=plots, log=log)
    res.storage_url, res.trials_run, res.wall_seconds = url, ran, time.perf_counter() - t_start
    return res


def _init_study(study: optuna.Study, cfg: TuneConfig, runner: TrialRunner,
                log: Callable[[str], None] = print) -> None:
    """On a new study: record the config, name the metrics, enqueue the default trial.

    On an existing one: say so if the config differs from the one recorded.
    """
    data = to_dict(cfg)
    data.pop("source_dir", None)
    data["base"] = runner.data
    old = study.user_attrs.get("tune_config")
    if old is not None:
        if old != json.loads(json.dumps(data)):
            log(f"warning: study {study.study_name!r} was created with a different config; its earlier trials "
                "were run with that one")
        return
    study.set_user_attr("tune_config", data)
    try:
        study.set_metric_names([o.metric for o in cfg.objectives])
    except Exception:  # an experimental API: naming is a convenience for the dashboard only
        pass
    if cfg.enqueue_default and not study.get_trials(deepcopy=False):
        d = runner.defaults()
        inside = all(lo <= d[k] <= hi for k, (lo, hi) in
                     ((k, getattr(cfg.space, k)) for k in cfg.space.names()))
        if inside:
            study.enqueue_trial(d, user_attrs={"default": True}, skip_if_exists=True)  # workers may race here


# ----------------------------------------------------------------------------
# Outputs
# ----------------------------------------------------------------------------
def _best(study: optuna.Study, cfg: TuneConfig):
    """The best feasible trial and, for several objectives, the feasible Pareto front."""
    complete = [t for t in study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,))]
    ok = [t for t in complete if feasible(t)]
    if not ok:
        return None, []
    if not cfg.multi_objective:
        sign = 1 if cfg.directions[0] == "maximize" else -1
        return max(ok, key=lambda t: (sign * t.value, -t.number)), []
    front = study.best_trials  # feasible, non-dominated
    sign = 1 if cfg.directions[0] == "maximize" else -1
    best = max(front, key=lambda t: (sign * t.values[0], -t.number)) if front else None
    return best, front


def _atomic_fig(fig, path: Path) -> None:
    import matplotlib.pyplot as plt

    tmp = path.with_name(f".{path.stem}.{os.getpid()}.tmp.png")
    fig.savefig(tmp, dpi=100, bbox_inches="tight")
    plt.close(fig)
    os.replace(tmp, path)


def _plots(study: optuna.Study, cfg: TuneConfig, d: Path, log: Callable[[str], None]) -> dict:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from optuna.visualization import matplotlib as ovm

    out = {}
    names = [o.metric for o in cfg.objectives]
    complete = study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,))
    jobs = [("history", lambda: ovm.plot_optimization_history(
        study, target=(lambda t: t.values[0]) if cfg.multi_objective else None, target_name=names[0]))]
    if len(complete) >= 2 and len(cfg.space.names()) >= 2:
        jobs.append(("importances", lambda: ovm.plot_param_importances(
            study, target=(lambda t: t.values[0]) if cfg.multi_objective else None, target_name=names[0])))
    if cfg.space.beta is not None and cfg.space.alpha is not None and len(complete) >= 2:
        jobs.append(("contour_beta_alpha", lambda: ovm.plot_contour(
            study, params=["beta", "alpha"], target=(lambda t: t.values[0]) if cfg.multi_objective else None,
            target_name=names[0])))
    if cfg.multi_objective and complete:
        jobs.append(("pareto_front", lambda: ovm.plot_pareto_front(
            study, target_names=names[:3], targets=(lambda t: t.values[:3]) if len(names) > 3 else None,
            include_dominated_trials=True)))
    for name, make in jobs:
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                ax = make()
            fig = ax.figure if hasattr(ax, "figure") else np.ravel(ax)[0].figure
            if name == "contour_beta_alpha":
                fig.suptitle(f"{names[0]} over beta x alpha (log)")
            out[name] = d / f"{name}.png"
            _atomic_fig(fig, out[name])
        except Exception as e:  # a plot that cannot be drawn (too few trials, no variance) is skipped, not fatal
            log(f"plot {name} skipped: {type(e).__name__}: {e}")
            plt.close("all")
    return out


def write_outputs(study: optuna.Study, cfg: TuneConfig, runner: TrialRunner, study_dir: str | Path,
                  plots: bool = True, log: Callable[[str], None] = print) -> TuneResult:
    """Write ``trials.csv``, ``best.yaml`` (a ready-to-run config), ``pareto.csv``, ``summary.md`` and plots."""
    d = Path(study_dir)
    d.mkdir(parents=True, exist_ok=True)
    files: dict = {}
    trials = study.trials_dataframe()
    if len(trials):
        cons = [{f"constraint_{k}": v for k, v in t.constraints.items()} for t in study.get_trials(deepcopy=False)]
        cdf = pd.DataFrame(cons, index=trials.index)
        trials = pd.concat([trials, cdf], axis=1)
        trials["feasible"] = [feasible(t) for t in study.get_trials(deepcopy=False)]
    files["trials"] = d / "trials.csv"
    atomic_write_text(files["trials"], trials.to_csv(index=False))

    best, front = _best(study, cfg)
    pareto = None
    if cfg.multi_objective:
        rows = [{"number": t.number, **dict(zip([o.metric for o in cfg.objectives], t.values)), **t.params}
                for t in sorted(front, key=lambda t: t.number)]
        pareto = pd.DataFrame(rows)
        files["pareto"] = d / "pareto.csv"
        atomic_write_text(files["pareto"], pareto.to_csv(index=False))
    default = next((t for t in study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,))
                    if t.user_attrs.get("default")), None)
    best_params = dict(best.params) if best is not None else None
    best_values = list(best.values) if best is not None else None
    default_values = list(default.values) if default is not None else None
    if best is not None:
        conf = runner.best_config(best.params, f"{study.study_name}-best")
        cmd = "tfftmol finetune --config" if cfg.kind == "mol" else "tfftmol toy2d --config"
        head = (f"# best feasible trial {best.number} of study {study.study_name!r}: "
                + ", ".join(f"{o.metric} = {v:.5g}" for o, v in zip(cfg.objectives, best.values))
                + f"\n# run it: {cmd} {d / 'best.yaml'}\n")
        files["best"] = d / "best.yaml"
        atomic_write_text(files["best"], head + dump_yaml(conf))
    lines = [f"# Study {study.study_name}", "",
             f"- kind: {cfg.kind}; objectives: " + ", ".join(f"{o.direction} {o.metric}" for o in cfg.objectives)
             + f" (cvar = {cfg.eval_tail}-CVaR_{cfg.eval_beta:g} of the true reward)",
             "- constraints: " + (", ".join(c.name for c in cfg.constraints) or "none"),
             "- trials: " + ", ".join(f"{s.name.lower()} {int((trials['state'] == s.name).sum())}"
                                      for s in optuna.trial.TrialState if len(trials)
                                      and (trials["state"] == s.name).any()), ""]
    if best is not None:
        hdr = ["trial", *best.params, *[o.metric for o in cfg.objectives]]
        lines += ["| " + " | ".join(["", *hdr]) + " |", "|" + "---|" * (len(hdr) + 1)]
        for label, t in (("default", default), ("best", best)):
            if t is not None:
                lines.append("| " + " | ".join([label, str(t.number), *[f"{t.params.get(k, float('nan')):.4g}"
                                                                      for k in best.params],
                                                *[f"{v:.4g}" for v in t.values]]) + " |")
        lines.append("")
    else:
        lines += ["No feasible complete trial yet.", ""]
    files["summary"] = d / "summary.md"
    atomic_write_text(files["summary"], "\n".join(lines))
    if plots:
        files.update(_plots(study, cfg, d, log))
    log(f"wrote {', '.join(str(p) for p in files.values())}")
    return TuneResult(study, "", d, trials, best_params, best_values, default_values, pareto, files)
