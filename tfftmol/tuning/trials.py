"""What one trial runs: a 2D ``run_tfft`` or a molecular ``finetune``, then the true-reward metrics.

A runner turns trial parameters (``beta``, ``alpha``, optionally ``lr``,
``steps``, ``refit_every``) into the run config the CLI would use, runs it and
returns a flat ``{metric: value}`` dict.  The offline batch of the pre-trained
model is cached under the study's ``cache`` directory (its key holds the
model, reward, batch size, sampler and seed, not ``beta`` or ``alpha``), so
every trial after the first loads it; stage 1 (the threshold) is re-solved on
it per trial.
"""
from __future__ import annotations

import math
import warnings
from pathlib import Path
from typing import Any, Callable, Mapping, Optional

import numpy as np
import torch

from tfftmol.core.config import ConfigError, from_dict, merge
from tfftmol.core.risk import cvar

from .config import TuneConfig

__all__ = ["TrialRunner", "Toy2DRunner", "MolRunner", "make_runner", "reward_metrics", "apply_params"]

Callback = Callable[[Any, dict], None]


def reward_metrics(values: np.ndarray, valid: np.ndarray, tail: str, beta: float) -> dict:
    """``cvar`` (at the evaluation tail level), ``mean`` and ``validity`` of true rewards ``(n,)``.

    Invalid samples enter ``cvar`` and ``mean`` at the reward's penalty value, as in the finetune report.
    """
    v = np.asarray(values, dtype=np.float64)
    ok = np.asarray(valid, dtype=bool)
    if v.size == 0:
        return {"cvar": math.nan, "mean": math.nan, "validity": math.nan}
    return {"cvar": float(cvar(v, beta, tail)), "mean": float(v.mean()), "validity": float(ok.mean())}


def apply_params(data: Mapping[str, Any], params: Mapping[str, Any], tail: str = "") -> dict:
    """Patch a run config mapping (a finetune or 2D config) with trial parameters.

    ``beta``/``alpha``/``tail`` go to ``tfft``, ``lr``/``steps`` to ``tfft.am``,
    ``refit_every`` to the top level.  Nothing else changes, so a derived field such
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


class TrialRunner:
    """Base of the two runners: a base config, default parameters and a cache directory."""

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


class Toy2DRunner(TrialRunner):
    """Trials on a 2D flow: TFFT on the pre-trained model of a ``Toy2DConfig`` (``gmm-exact`` by default).

    Metrics on ``eval_samples`` SDE samples of the fine-tuned model: ``cvar``, ``mean``,
    ``validity``, ``diversity`` (mean pairwise distance of up to 1,000 samples), ``kl``
    (control-cost estimate, if ``kl_samples > 0``), ``eta`` and ``stage1_active_fraction``.
    """

    kind = "toy2d"

    def __init__(self, cfg: TuneConfig, study_dir: Path, log: Callable[[str], None] = print):
        super().__init__(cfg, study_dir, log)
        from tfftmol.image2d.experiment import Toy2DConfig
        from tfftmol.image2d.toy import make_reward
        from tfftmol.pretrained import load_pretrained

        self.toy = from_dict(Toy2DConfig, {k: v for k, v in self.data.items() if k != "tfft"})
        self.base = load_pretrained(self.toy.model)
        self.reward = make_reward(self.toy.reward)

    @property
    def tail(self) -> str:
        return self.cfg.tail or str(self.data.get("tfft", {}).get("tail", "right"))

    def _tfft_data(self, params: Mapping[str, Any]) -> dict:
        t = self.toy
        beta = t.beta_right if self.tail == "right" else t.beta_left
        data = {"tfft": merge(dict(self.data.get("tfft", {})),
                              {"method": "tfft", "tail": self.tail, "beta": beta, "alpha": t.alpha, "seed": t.seed,
                               "am": {"seed": t.seed}})}
        return apply_params(data, params)["tfft"]

    def defaults(self) -> dict:
        from tfftmol.core.tfft import TFFTConfig

        tc = from_dict(TFFTConfig, self._tfft_data({}), "tfft")
        d = {"beta": tc.beta, "alpha": tc.alpha, "lr": tc.am.lr, "steps": tc.am.steps}
        return {k: d[k] for k in self.cfg.space.names()}

    def run_config(self, params: Mapping[str, Any], name: str = ""):
        from tfftmol.core.tfft import TFFTConfig

        return from_dict(TFFTConfig, self._tfft_data(params), "tfft")

    def total_steps(self, params: Mapping[str, Any]) -> int:
        return self.run_config(params).am.steps

    def _sample(self, model, n: int, seed: int):
        from tfftmol.core.samplers import sample_sde

        with torch.no_grad():
            x = sample_sde(model, n, self.toy.eval_steps, generator=torch.Generator().manual_seed(seed))
            rb = self.reward.evaluate(x)
        return x, rb.values.double().cpu().numpy(), rb.valid.cpu().numpy()

    def intermediate(self, model, step: int) -> dict:
        _, v, ok = self._sample(model, self.cfg.intermediate_samples, self.toy.seed + 54321)
        return reward_metrics(v, ok, self.cfg.eval_tail, self.cfg.eval_beta)

    def run(self, params: Mapping[str, Any], name: str, callbacks: list[Callback]) -> dict:
        from tfftmol.core.adjoint import estimate_kl
        from tfftmol.core.threshold import TfftWarning
        from tfftmol.core.tfft import run_tfft

        tc = self.run_config(params)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", TfftWarning)
            res = run_tfft(self.base, self.reward, tc, cache_dir=self.cache_dir, progress=False,
                           callbacks=callbacks, log=self.log)
        model = res.model.eval()
        x, v, ok = self._sample(model, self.toy.eval_samples, self.toy.seed + 12345)
        m = reward_metrics(v, ok, self.cfg.eval_tail, self.cfg.eval_beta)
        xs = x[:1000].double()
        m["diversity"] = float(torch.pdist(xs).mean()) if len(xs) > 1 else math.nan
        m["kl"] = (float(estimate_kl(model, self.base, self.toy.kl_samples, self.toy.eval_steps, seed=self.toy.seed))
                   if self.toy.kl_samples else math.nan)
        if res.threshold is not None:
            m["eta"] = float(res.threshold.eta)
            m["stage1_active_fraction"] = float(res.threshold.active_fraction)
        m["train_seconds"] = float(res.timings.get("stage2", math.nan))
        return m

    def best_config(self, params: Mapping[str, Any], name: str) -> dict:
        """A ``Toy2DConfig`` mapping for ``tfftmol toy2d --config`` (pre-trained vs TFFT at these settings)."""
        from tfftmol.core.config import to_dict

        tc = self.run_config(params)
        out = {k: v for k, v in self.data.items() if k != "tfft"}
        out["alpha"] = tc.alpha
        out["beta_right" if self.tail == "right" else "beta_left"] = tc.beta
        out["methods"] = ["pretrained", f"tfft-{self.tail}"]
        tfft = to_dict(tc)
        for k in ("method", "tail", "beta", "alpha", "seed", "adaptive_active"):
            tfft.pop(k, None)  # set per method by run_toy2d
        tfft["am"].pop("seed", None)
        out["tfft"] = tfft
        return out


class MolRunner(TrialRunner):
    """Trials on molecules: :func:`tfftmol.chem.finetune.finetune`, exactly as ``tfftmol finetune`` runs it.

    Each trial's report goes to ``<study_dir>/trials/trial-NNNN/``; the offline batch
    is shared through ``<study_dir>/cache`` (or the base config's ``cache_dir``).
    Metrics: ``cvar``, ``mean`` and ``validity`` of the fine-tuned model's evaluation
    molecules under the true reward, ``diversity`` (internal diversity), and every
    numeric column of the finetune metrics row (``uniqueness``, ``novelty``, ``kl``, ...).
    """

    kind = "mol"

    def __init__(self, cfg: TuneConfig, study_dir: Path, log: Callable[[str], None] = print):
        super().__init__(cfg, study_dir, log)
        from tfftmol.chem.finetune import load_config
        from tfftmol.chem.rewards import build_reward

        self.mcfg = load_config(self.run_data({}, "check"))
        self.reward = build_reward(dict(self.mcfg.reward))
        self._last_eval: Optional[dict] = None

    @property
    def tail(self) -> str:
        return self.cfg.tail or str(self.data.get("tfft", {}).get("tail", "right"))

    def run_data(self, params: Mapping[str, Any], name: str) -> dict:
        data = apply_params(self.data, params, self.cfg.tail)
        data["name"] = name
        data["out_dir"] = str(self.study_dir / "trials")
        if not data.get("cache_dir"):
            data["cache_dir"] = str(self.cache_dir)
        return data

    def run_config(self, params: Mapping[str, Any], name: str = "trial"):
        from tfftmol.chem.finetune import load_config

        return load_config(self.run_data(params, name))

    def defaults(self) -> dict:
        c = self.mcfg
        d = {"beta": c.tfft.beta, "alpha": c.tfft.alpha, "lr": c.tfft.am.lr, "steps": c.tfft.am.steps,
             "refit_every": c.refit_every}
        return {k: d[k] for k in self.cfg.space.names()}

    def total_steps(self, params: Mapping[str, Any]) -> int:
        return self.run_config(params).tfft.am.steps

    def intermediate(self, model, step: int) -> dict:
        from tfftmol.chem.finetune import sample_molecules

        c = self.mcfg
        _, dec = sample_molecules(model, self.cfg.intermediate_samples, c.eval_steps, c.eval_sampler,
                                  seed=c.seed + 3)
        res = self.reward(dec, n_jobs=c.reward_jobs)
        return reward_metrics(res.values, res.valid, self.cfg.eval_tail, self.cfg.eval_beta)

    def run(self, params: Mapping[str, Any], name: str, callbacks: list[Callback]) -> dict:
        from tfftmol.chem.finetune import finetune
        from tfftmol.core.threshold import TfftWarning

        cfg = self.run_config(params, name)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", TfftWarning)
            res = finetune(cfg, progress=False, callbacks=callbacks, log=self.log)
        s = res.samples
        m = reward_metrics(s["reward"].to_numpy(float), s["valid"].to_numpy(bool), self.cfg.eval_tail,
                           self.cfg.eval_beta)
        row = res.metrics.iloc[-1]
        for k, v in row.items():
            if isinstance(v, (int, float, np.integer, np.floating)) and not isinstance(v, bool) and k not in m:
                m[str(k)] = float(v)
        if "int_div" in m:
            m["diversity"] = m["int_div"]
        m["train_seconds"] = float(res.timings.get("stage2", math.nan))
        m["report"] = str(res.files.get("report", ""))
        return m

    def best_config(self, params: Mapping[str, Any], name: str) -> dict:
        """A ``MolFinetuneConfig`` mapping for ``tfftmol finetune --config`` (validated)."""
        from tfftmol.chem.finetune import load_config
        from tfftmol.core.config import to_dict

        data = apply_params(self.data, params, self.cfg.tail)
        data["name"] = name
        return to_dict(load_config(data))


def make_runner(cfg: TuneConfig, study_dir: Path, log: Callable[[str], None] = print) -> TrialRunner:
    """The runner of ``cfg.kind``; raises :class:`ConfigError` if the base config is invalid."""
    if cfg.kind == "toy2d":
        return Toy2DRunner(cfg, study_dir, log)
    if cfg.kind == "mol":
        return MolRunner(cfg, study_dir, log)
    raise ConfigError(f"kind={cfg.kind!r} must be one of ('mol', 'toy2d')")
