"""What one trial runs: the one pipeline (:func:`tfftmol.pipeline.run`) on any task kind, then its metrics.

A runner turns trial parameters (``beta``, ``alpha``, optionally ``lr``,
``steps``, ``refit_every``) into the run config the CLI would use
(``tfftmol run --config``), runs it through the same pipeline and returns a flat
``{metric: value}`` dict: the metrics row of the fine-tuned model plus ``cvar``
at the study's fixed evaluation tail, ``mean``, ``validity`` and ``diversity``.
The offline batch of the pre-trained model is cached under the study's
``cache`` directory (its key holds the model, reward, batch size, sampler and
seed, not ``beta`` or ``alpha``), so every trial after the first loads it;
stage 1 is re-solved on it per trial.

Base configs: ``kind: run`` takes a run config of any task (``task: molecule |
digits | toy2d``); ``kind: mol`` a molecular config (flat or nested); ``kind:
toy2d`` the 2D comparison's fields (``model, reward, alpha, beta_right,
beta_left, eval_samples, eval_steps, kl_samples, seed, tfft``), translated into
a ``task: toy2d`` run config.
"""
from __future__ import annotations

import math
import warnings
from pathlib import Path
from typing import Any, Callable, Mapping, Optional

import numpy as np
import torch

from tfftmol.core.config import ConfigError, from_dict, merge, to_dict
from tfftmol.core.risk import cvar

from .config import TuneConfig

__all__ = ["TrialRunner", "PipelineRunner", "make_runner", "reward_metrics", "apply_params", "toy2d_run_data"]

Callback = Callable[[Any, dict], None]


def reward_metrics(values: np.ndarray, valid: np.ndarray, tail: str, beta: float) -> dict:
    """``cvar`` (at the evaluation tail level), ``mean`` and ``validity`` of true rewards ``(n,)``.

    Invalid samples enter ``cvar`` and ``mean`` at the reward's penalty value, as in the run report.
    """
    v = np.asarray(values, dtype=np.float64)
    ok = np.asarray(valid, dtype=bool)
    if v.size == 0:
        return {"cvar": math.nan, "mean": math.nan, "validity": math.nan}
    return {"cvar": float(cvar(v, beta, tail)), "mean": float(v.mean()), "validity": float(ok.mean())}


def apply_params(data: Mapping[str, Any], params: Mapping[str, Any], tail: str = "") -> dict:
    """Patch a run config mapping (flat or nested) with trial parameters.

    ``beta``/``alpha``/``tail`` go to ``tfft``, ``lr``/``steps`` to ``tfft.am``,
    ``refit_every`` to the task options.  Nothing else changes, so a derived value such
    as ``tfft.adaptive_active_fraction`` follows the new ``beta`` unless the base sets ``adaptive_active``.
    """
    tfft: dict = {}
    am: dict = {}
    top: dict = {}
    for k, v in params.items():
        if k in ("beta", "alpha"):
            tfft[k] = float(v)
        elif k == "lr":
            am["lr"] = float(v)
        elif k == "steps":
            am["steps"] = int(v)
        elif k == "refit_every":
            if "options" in data or "task" in data:
                top.setdefault("options", {})["refit_every"] = int(v)
            else:
                top["refit_every"] = int(v)
        else:
            raise KeyError(f"unknown trial parameter {k!r}")
    if tail:
        tfft["tail"] = tail
    if am:
        tfft["am"] = am
    patch = dict(top)
    if tfft:
        patch["tfft"] = tfft
    return merge(dict(data), patch, opaque=("reward",))


def toy2d_run_data(data: Mapping[str, Any], tail: str = "right") -> dict:
    """The fields of the 2D comparison (``model, reward, alpha, beta_right, ...``) as a ``task: toy2d`` run config."""
    known = {"model", "reward", "alpha", "beta_right", "beta_left", "eval_samples", "eval_steps", "kl_samples",
             "seed", "tfft", "methods", "gmm"}
    unknown = sorted(set(data) - known)
    if unknown:
        raise ConfigError(f"unknown 2D base key(s) {unknown}; accepted keys: {sorted(known)}")
    seed = int(data.get("seed", 0))
    beta = data.get("beta_right", 0.9) if tail == "right" else data.get("beta_left", 0.1)
    tfft = merge(dict(data.get("tfft", {})), {"method": "tfft", "tail": tail, "beta": beta,
                                               "alpha": data.get("alpha", 1.0)})
    options = {"model": data.get("model", "gmm-exact"), "reward": data.get("reward", {"name": "linear",
                                                                                      "w": [1.0, 0.0]})}
    if data.get("gmm") is not None:
        options["gmm"] = data["gmm"]
    steps = int(data.get("eval_steps", 50))
    return {"task": "toy2d", "name": "trial", "seed": seed, "tfft": tfft, "options": options,
            "eval": {"samples": int(data.get("eval_samples", 20000)), "steps": steps,
                     "kl_samples": int(data.get("kl_samples", 2000)), "batch_size": int(data.get("eval_samples", 20000)),
                     "seed": seed + 12345, "kl_seed": seed}}


class TrialRunner:
    """Base of a trial runner: a base config, default parameters and a cache directory."""

    kind = ""

    def __init__(self, cfg: TuneConfig, study_dir: Path, log: Callable[[str], None] = print):
        self.cfg = cfg
        self.study_dir = Path(study_dir)
        self.cache_dir = Path(cfg.cache_dir) if cfg.cache_dir else self.study_dir / "cache"
        self.log = log
        self.data = cfg.base_data()

    @property
    def tail(self) -> str:
        raise NotImplementedError

    def defaults(self) -> dict:
        """The base config's own value of every searched parameter."""
        raise NotImplementedError

    def run_config(self, params: Mapping[str, Any], name: str) -> Any:
        raise NotImplementedError

    def run(self, params: Mapping[str, Any], name: str, callbacks: list[Callback]) -> dict:
        """Run one trial; returns ``{metric: value}``."""
        raise NotImplementedError

    def intermediate(self, model, step: int) -> dict:
        """Cheap true-reward metrics of the current fine-tuned ``model`` (for pruning)."""
        raise NotImplementedError

    def best_config(self, params: Mapping[str, Any], name: str) -> dict:
        """A ready-to-run config (plain mapping) with ``params`` applied."""
        raise NotImplementedError

    def total_steps(self, params: Mapping[str, Any]) -> int:
        raise NotImplementedError


class PipelineRunner(TrialRunner):
    """Trials of any task kind through :func:`tfftmol.pipeline.run`, exactly as ``tfftmol run`` runs them.

    Each trial's report goes to ``<study_dir>/trials/trial-NNNN/``; the offline batch is
    shared through ``<study_dir>/cache`` (or the base config's ``cache_dir``).  Metrics:
    ``cvar``, ``mean`` and ``validity`` of the fine-tuned model's evaluation samples at the
    study's evaluation tail, ``diversity`` (internal diversity of molecules, mean pairwise
    distance for 2D), and every numeric column of the run's metrics row (``uniqueness``,
    ``novelty``, ``kl``, ``realisation``, ``eta``, ...).
    """

    def __init__(self, cfg: TuneConfig, study_dir: Path, log: Callable[[str], None] = print):
        super().__init__(cfg, study_dir, log)
        from tfftmol.pipeline import get_task

        self.kind = cfg.kind
        if cfg.kind == "toy2d":
            self.data = toy2d_run_data(self.data, cfg.tail or "right")
        self.rcfg = self.run_config({}, "check")
        self.task = get_task(self.rcfg.task)

    @property
    def tail(self) -> str:
        return self.cfg.tail or self.rcfg.tfft.tail

    def run_data(self, params: Mapping[str, Any], name: str) -> dict:
        data = apply_params(self.data, params, self.cfg.tail)
        data["name"] = name
        data["out_dir"] = str(self.study_dir / "trials")
        if not data.get("cache_dir"):
            data["cache_dir"] = str(self.cache_dir)
        return data

    def run_config(self, params: Mapping[str, Any], name: str = "trial"):
        from tfftmol.pipeline import load_run_config

        return load_run_config(self.run_data(params, name))

    def defaults(self) -> dict:
        c = self.rcfg
        d = {"beta": c.tfft.beta, "alpha": c.tfft.alpha, "lr": c.tfft.am.lr, "steps": c.tfft.am.steps,
             "refit_every": getattr(c.options, "refit_every", 0)}
        return {k: d[k] for k in self.cfg.space.names()}

    def total_steps(self, params: Mapping[str, Any]) -> int:
        return self.run_config(params).tfft.am.steps

    def intermediate(self, model, step: int) -> dict:
        import dataclasses

        from tfftmol.pipeline import evaluate_models

        c = self.rcfg
        ev = dataclasses.replace(c.eval, samples=self.cfg.intermediate_samples, seed=c.seed + 3,
                                 batch_size=min(c.eval.batch_size, self.cfg.intermediate_samples))
        cfg = dataclasses.replace(c, eval=ev)
        base = getattr(self, "_base", None)
        if base is None:
            base = self._base = self.task.load_base(c, torch.device(c.device))
        reward = getattr(self, "_reward", None)
        if reward is None:
            reward = self._reward = self.task.build_reward(c, base, torch.device(c.device), lambda s: None)
        e = evaluate_models(cfg, self.task, {"model": model}, reward, self.task.cond_sampler(c, base))["model"]
        return reward_metrics(e.values, e.valid, self.cfg.eval_tail, self.cfg.eval_beta)

    def run(self, params: Mapping[str, Any], name: str, callbacks: list[Callback]) -> dict:
        """One fine-tune per run seed (``run_seeds``); numeric metrics are their means.

        With several seeds each metric of the objectives also gets ``<metric>_seed_std`` (sample std over
        the seeds), and ``report`` is the first seed's; the pruning callbacks see the first seed's run only.
        """
        n = self.cfg.run_seeds
        if n == 1:
            return self.run_once(params, name, callbacks)
        base = int(self.data.get("seed", 0))
        runs = [self.run_once(params, f"{name}-seed{base + k}", callbacks if k == 0 else [], seed=base + k)
                for k in range(n)]
        out: dict = {}
        for key, first in runs[0].items():
            vals = [r.get(key) for r in runs]
            if all(isinstance(v, float) for v in vals):
                out[key] = float(np.mean(vals))
            else:
                out[key] = first
        for o in self.cfg.objectives:
            vals = [r[o.metric] for r in runs if o.metric in r]
            if len(vals) == n:
                out[f"{o.metric}_seed_std"] = float(np.std(vals, ddof=1))
        out["run_seeds"] = float(n)
        return out

    def run_once(self, params: Mapping[str, Any], name: str, callbacks: list[Callback],
                 seed: Optional[int] = None) -> dict:
        """One fine-tune of ``params`` (at run seed ``seed``; ``None``: the base config's); its metrics."""
        from tfftmol.core.threshold import TfftWarning
        from tfftmol.pipeline import load_run_config, run

        data = self.run_data(params, name)
        if seed is not None:  # shift the run's seed and any explicit evaluation seeds with it
            shift = int(seed) - int(data.get("seed", 0))
            data["seed"] = int(seed)
            ev = data.get("eval")
            if isinstance(ev, Mapping):
                data["eval"] = {k: (v + shift if k in ("seed", "kl_seed") and isinstance(v, int) else v)
                                for k, v in ev.items()}
        cfg = load_run_config(data)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", TfftWarning)
            res = run(cfg, overwrite=True, progress=False, callbacks=callbacks, log=self.log, plots=False)
        ev = res.evaluations[cfg.tfft.method]
        m = reward_metrics(ev.values, ev.valid, self.cfg.eval_tail, self.cfg.eval_beta)
        row = res.metrics.iloc[-1]
        for k, v in row.items():
            if isinstance(v, (int, float, np.integer, np.floating)) and not isinstance(v, bool) and k not in m:
                m[str(k)] = float(v)
        if "int_div" in m:
            m["diversity"] = m["int_div"]
        elif "x" in ev.extra:
            xs = ev.extra["x"][:1000].double().flatten(1)
            m["diversity"] = float(torch.pdist(xs).mean()) if len(xs) > 1 else math.nan
        if res.tfft.threshold is not None:
            m["stage1_active_fraction"] = float(res.tfft.stage1.active_fraction)
        m["train_seconds"] = float(res.timings.get("stage2", math.nan))
        m["report"] = str(res.files.get("report", ""))
        return m

    def best_config(self, params: Mapping[str, Any], name: str) -> dict:
        """A run config mapping for ``tfftmol run --config`` (validated)."""
        from tfftmol.pipeline import load_run_config

        data = apply_params(self.data, params, self.cfg.tail)
        data["name"] = name
        return to_dict(load_run_config(data))


def make_runner(cfg: TuneConfig, study_dir: Path, log: Callable[[str], None] = print) -> TrialRunner:
    """The runner of a study (every kind runs through the pipeline); raises :class:`ConfigError` if the base is invalid."""
    if cfg.kind not in ("run", "mol", "toy2d"):
        raise ConfigError(f"kind={cfg.kind!r} must be one of ('run', 'mol', 'toy2d')")
    return PipelineRunner(cfg, study_dir, log)
