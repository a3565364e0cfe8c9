"""The configuration of an Optuna study over TFFT's tail level ``beta`` and KL weight ``alpha``.

A study config is one YAML file (``configs/tune_*.yaml``)::

    kind: mol                        # "mol" (tfftmol finetune) or "toy2d" (run_tfft on a 2D flow)
    base: qed_right.yaml             # the run config every trial starts from (path or mapping)
    budget: {tfft: {am: {steps: 150}}}   # deep-merged into the base (the reward spec is replaced whole)
    space:
      beta: [0.8, 0.97]              # training tail level, uniform
      alpha: [0.02, 1.0]             # KL weight, log-uniform
      lr: [1.0e-4, 1.0e-3]           # optional, log-uniform
    objectives:
      - {metric: cvar, direction: maximize}
    eval_tail: right                 # the tail measured by the metric "cvar" ...
    eval_beta: 0.9                   # ... at this level, fixed across trials (beta is tuned)
    constraints:
      - {metric: validity, min: 0.8}
    run_seeds: 1                     # fine-tunes per trial (seeds base, base+1, ...), metrics averaged

Metric names (``objectives[].metric``, ``constraints[].metric``): ``cvar`` (the
true reward's CVaR at ``eval_tail``/``eval_beta``, invalid samples at their
penalty), ``mean``, ``validity``, ``diversity``, ``kl``, and for molecular
studies any column of the finetune metrics table (``uniqueness``, ``novelty``,
``reward_q0.9``, ...).
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Optional

from tfftmol.core.config import ConfigError, from_dict, load_yaml

__all__ = ["SearchSpace", "ObjectiveSpec", "ConstraintSpec", "TuneConfig", "load_tune_config", "KINDS", "SAMPLERS",
           "PRUNERS"]

KINDS = ("run", "mol", "toy2d")
SAMPLERS = ("auto", "tpe", "nsga2", "random")
PRUNERS = ("median", "none")


def _bounds(name: str, v: Any, lo: float, hi: float, integer: bool = False) -> Optional[list]:
    """Validate an optional ``[low, high]`` range inside ``[lo, hi]``."""
    if v is None:
        return None
    if not (isinstance(v, (list, tuple)) and len(v) == 2 and all(isinstance(b, (int, float)) for b in v)):
        raise ConfigError(f"space.{name}={v!r} must be a pair [low, high]")
    a, b = v
    if integer and not (float(a).is_integer() and float(b).is_integer()):
        raise ConfigError(f"space.{name}={v!r} must be a pair of integers")
    if not (lo <= a < b <= hi):
        raise ConfigError(f"space.{name}={v!r} must satisfy {lo:g} <= low < high <= {hi:g}")
    return [int(a), int(b)] if integer else [float(a), float(b)]


@dataclass
class SearchSpace:
    """Bounds of the searched parameters; ``None`` leaves a parameter at the base config's value.

    Attributes:
        beta: training tail level ``[low, high]`` inside (0, 1), sampled uniformly.
        alpha: KL weight ``[low, high]``, ``low > 0``, sampled log-uniformly.
        lr: Adam learning rate ``[low, high]``, log-uniform (optional).
        steps: Adjoint Matching steps ``[low, high]``, integers (optional).
        refit_every: surrogate refresh interval in steps ``[low, high]``, integers (optional; molecular only).
    """

    beta: Optional[list] = field(default_factory=lambda: [0.8, 0.97])
    alpha: Optional[list] = field(default_factory=lambda: [0.05, 2.0])
    lr: Optional[list] = None
    steps: Optional[list] = None
    refit_every: Optional[list] = None

    def __post_init__(self):
        eps = 1e-9
        self.beta = _bounds("beta", self.beta, eps, 1 - eps)
        self.alpha = _bounds("alpha", self.alpha, eps, math.inf)
        self.lr = _bounds("lr", self.lr, eps, math.inf)
        self.steps = _bounds("steps", self.steps, 1, math.inf, integer=True)
        self.refit_every = _bounds("refit_every", self.refit_every, 1, math.inf, integer=True)
        if not self.names():
            raise ConfigError("space: at least one of beta, alpha, lr, steps, refit_every must have bounds")

    def names(self) -> list[str]:
        """The searched parameters, in a fixed order."""
        return [n for n in ("beta", "alpha", "lr", "steps", "refit_every") if getattr(self, n) is not None]


@dataclass
class ObjectiveSpec:
    """One objective: a metric name and ``"maximize"`` or ``"minimize"``."""

    metric: str = "cvar"
    direction: str = "maximize"

    def __post_init__(self):
        if not (isinstance(self.metric, str) and self.metric):
            raise ConfigError(f"objectives: metric={self.metric!r} must be a non-empty name")
        if self.direction not in ("maximize", "minimize"):
            raise ConfigError(f"objectives: direction={self.direction!r} must be 'maximize' or 'minimize'")


@dataclass
class ConstraintSpec:
    """A constraint ``min <= metric <= max`` (either bound may be omitted, not both).

    It enters Optuna as ``trial.set_constraint(name, c)`` with ``c = min - value``
    (or ``value - max``): feasible when ``c <= 0``.
    """

    metric: str = "validity"
    min: Optional[float] = None
    max: Optional[float] = None

    def __post_init__(self):
        if not (isinstance(self.metric, str) and self.metric):
            raise ConfigError(f"constraints: metric={self.metric!r} must be a non-empty name")
        if self.min is None and self.max is None:
            raise ConfigError(f"constraints: {self.metric}: give min, max or both")
        if self.min is not None and self.max is not None and self.min > self.max:
            raise ConfigError(f"constraints: {self.metric}: min={self.min} > max={self.max}")

    @property
    def name(self) -> str:
        return f"{self.metric}>={self.min:g}" if self.max is None else (
            f"{self.metric}<={self.max:g}" if self.min is None else f"{self.min:g}<={self.metric}<={self.max:g}")

    def violation(self, value: float) -> float:
        """``> 0`` when violated (by how much), ``<= 0`` when feasible; NaN counts as violated by 1."""
        if value is None or not math.isfinite(value):
            return 1.0
        parts = []
        if self.min is not None:
            parts.append(self.min - value)
        if self.max is not None:
            parts.append(value - self.max)
        return float(max(parts))


@dataclass
class TuneConfig:
    """An Optuna study over TFFT's ``beta`` and ``alpha`` (module docstring for the YAML layout).

    Attributes:
        kind: ``"run"`` (a run config of any task: molecule, digits, toy2d), ``"mol"`` (a
            molecular config) or ``"toy2d"`` (the 2D comparison's fields); every trial is
            :func:`tfftmol.pipeline.run` on the resulting run config.
        base: the config every trial starts from: a YAML path (relative to the study file, then
            to the working directory) or an inline mapping.
        budget: a patch deep-merged into ``base`` (e.g. fewer steps for a quick study).
        tail: training tail (``""``: the base config's; ``"right"`` for 2D bases).
        space: :class:`SearchSpace`.
        objectives: one :class:`ObjectiveSpec` (single-objective, TPE, pruning) or several
            (multi-objective, NSGA-II, a Pareto front; no pruning).
        eval_tail, eval_beta: the tail level of the metric ``cvar``, fixed across trials.
        constraints: list of :class:`ConstraintSpec`.
        sampler: ``"auto"`` (TPE for one objective, NSGA-II for several), ``"tpe"``, ``"nsga2"``
            or ``"random"``.
        seed: sampler seed; the sampler of the ``k``-th trial of the study is seeded with ``seed + k``,
            so a single worker is reproducible and concurrent workers do not repeat each other.
        n_startup_trials: random trials before TPE models the results.
        population_size: NSGA-II population.
        pruner: ``"median"`` (prune a trial whose intermediate objective is worse than the
            median of the feasible complete trials at the same step,
            :class:`~tfftmol.tuning.study.FeasibleMedianPruner`) or ``"none"``.
        prune_startup_trials, prune_warmup_steps: no pruning before this many feasible complete
            trials, nor before this step.
        eval_every: stage-2 steps between intermediate evaluations (0 = none; no pruning then).
        intermediate_samples: samples per intermediate evaluation.
        enqueue_default: make trial 0 of a new study the base config's own ``beta``/``alpha``/...,
            the reference every tuned trial is compared with.
        heartbeat_interval, grace_period: seconds; a trial whose worker stops beating for
            ``grace_period`` is marked FAIL by the next worker (``optuna.storages.fail_stale_trials``).
        max_failures: a worker stops after this many consecutive failed trials.
        run_seeds: fine-tunes per trial, at the base config's seed, +1, +2, ...; the trial's metrics
            are their means (``<metric>_seed_std`` in its user attributes), so the study compares
            parameters rather than one seed's luck (measured on the QED study: a +0.017 best on one
            seed was +0.006 over three, within the seed spread).  Pruning reads the first seed's run.
        cache_dir: where the offline batch is cached (``""``: ``<out>/<study>/cache``; a molecular
            base config's own ``cache_dir`` wins).  Studies pointing at one directory share it.
    """

    kind: str = "toy2d"
    base: Any = field(default_factory=dict)
    budget: dict = field(default_factory=dict)
    tail: str = ""
    space: SearchSpace = field(default_factory=SearchSpace)
    objectives: list = field(default_factory=lambda: [ObjectiveSpec()])
    eval_tail: str = "right"
    eval_beta: float = 0.9
    constraints: list = field(default_factory=list)
    sampler: str = "auto"
    seed: int = 0
    n_startup_trials: int = 5
    population_size: int = 8
    pruner: str = "median"
    prune_startup_trials: int = 3
    prune_warmup_steps: int = 0
    eval_every: int = 0
    intermediate_samples: int = 500
    enqueue_default: bool = True
    heartbeat_interval: int = 10
    grace_period: int = 30
    max_failures: int = 3
    run_seeds: int = 1
    cache_dir: str = ""
    source_dir: str = ""

    def __post_init__(self):
        if self.kind not in KINDS:
            raise ConfigError(f"kind={self.kind!r} must be one of {KINDS}")
        if not isinstance(self.base, (str, Mapping)):
            raise ConfigError(f"base={self.base!r} must be a YAML path or a mapping")
        if not isinstance(self.budget, Mapping):
            raise ConfigError(f"budget={self.budget!r} must be a mapping")
        if self.tail not in ("", "right", "left"):
            raise ConfigError(f"tail={self.tail!r} must be '', 'right' or 'left'")
        if isinstance(self.space, Mapping):
            self.space = from_dict(SearchSpace, self.space, "space")
        if isinstance(self.objectives, (Mapping, str)):
            self.objectives = [self.objectives]
        if not (isinstance(self.objectives, list) and self.objectives):
            raise ConfigError(f"objectives={self.objectives!r} must be a non-empty list")
        self.objectives = [ObjectiveSpec(metric=o) if isinstance(o, str) else from_dict(ObjectiveSpec, o, "objectives")
                           for o in self.objectives]
        if not isinstance(self.constraints, list):
            raise ConfigError(f"constraints={self.constraints!r} must be a list")
        self.constraints = [from_dict(ConstraintSpec, c, "constraints") for c in self.constraints]
        if self.eval_tail not in ("right", "left"):
            raise ConfigError(f"eval_tail={self.eval_tail!r} must be 'right' or 'left'")
        if not (isinstance(self.eval_beta, (int, float)) and 0 < self.eval_beta < 1):
            raise ConfigError(f"eval_beta={self.eval_beta!r} must be in the open interval (0, 1)")
        if self.sampler not in SAMPLERS:
            raise ConfigError(f"sampler={self.sampler!r} must be one of {SAMPLERS}")
        if self.pruner not in PRUNERS:
            raise ConfigError(f"pruner={self.pruner!r} must be one of {PRUNERS}")
        for k, lo in (("seed", 0), ("n_startup_trials", 0), ("population_size", 2), ("prune_startup_trials", 0),
                      ("prune_warmup_steps", 0), ("eval_every", 0), ("intermediate_samples", 2),
                      ("heartbeat_interval", 1), ("grace_period", 1), ("max_failures", 1), ("run_seeds", 1)):
            v = getattr(self, k)
            if not isinstance(v, int) or isinstance(v, bool) or v < lo:
                raise ConfigError(f"{k}={v!r} must be an integer >= {lo}")
        if self.grace_period <= self.heartbeat_interval:
            raise ConfigError(f"grace_period={self.grace_period} must exceed heartbeat_interval="
                              f"{self.heartbeat_interval} (a live trial must not look stale)")
        if self.kind == "toy2d" and self.space.refit_every is not None:
            raise ConfigError("space.refit_every: 2D studies have no surrogate; remove it")

    @property
    def multi_objective(self) -> bool:
        return len(self.objectives) > 1

    @property
    def directions(self) -> list[str]:
        return [o.direction for o in self.objectives]

    def resolved_sampler(self) -> str:
        if self.sampler != "auto":
            return self.sampler
        return "nsga2" if self.multi_objective else "tpe"

    def base_data(self) -> dict:
        """The base run config as a plain mapping, with ``budget`` merged in."""
        from tfftmol.core.config import merge

        if isinstance(self.base, Mapping):
            data = dict(self.base)
        else:
            path = _find(self.base, self.source_dir)
            data = load_yaml(path)
        return merge(data, self.budget, opaque=("reward",))


def _find(name: str, source_dir: str) -> Path:
    cands = [Path(source_dir) / name] if source_dir else []
    cands += [Path(name), Path.cwd() / "configs" / name, Path(__file__).resolve().parents[2] / "configs" / name]
    for c in cands:
        if c.is_file():
            return c
    raise ConfigError(f"base={name!r}: no such file (looked in {[str(c) for c in cands]})")


def load_tune_config(source: Any, **overrides: Any) -> TuneConfig:
    """Build and validate a :class:`TuneConfig` from a YAML path, a mapping or a config.

    Raises:
        ConfigError: unknown keys, bad bounds, unknown sampler or pruner, a missing base file.
    """
    from tfftmol.core.config import read_mapping

    data = read_mapping(source, TuneConfig, "study config")
    if isinstance(source, (str, Path)):
        data.setdefault("source_dir", str(Path(source).resolve().parent))
    data.update(overrides)
    cfg = from_dict(TuneConfig, data)
    cfg.base_data()  # the base must exist and parse
    return cfg
