"""Prompted 8x8-digit TFFT end to end: one config in, a report directory out.

``finetune(config)`` runs on the shipped class-conditional ``digits-flow``
(state ``x`` of shape ``(B, 64)``, prompt = class label, assigned round-robin,
see :mod:`tfftmol.image2d.digits`):

1. **Offline batch, stage 1, stage 2** through the domain-free core
   (:func:`tfftmol.core.tfft.run_tfft`), with the flow's round-robin prompts as
   the core's per-sample condition and a differentiable image reward
   (:class:`~tfftmol.image2d.digits.DigitReward`: alignment ``log p(prompt | x)``
   from the shipped classifier, ink, contrast or a weighted sum).
2. **Evaluation** of ``eval_samples`` fresh images of the pre-trained and the
   fine-tuned model (same noise): reward mean, left-CVaR_0.1 and right-CVaR_0.9
   pooled over all images and per prompt, alignment and classifier accuracy with
   the prompt as label, the per-prompt worst case, a diversity proxy and the
   control-cost estimate of ``KL(p_ft || p_pre)``.
3. **Report** in ``<out_dir>/<name>/``: ``report.md``, ``metrics.csv`` (pooled),
   ``per_prompt.csv``, ``history.csv``, ``config.yaml``, ``model.safetensors``,
   ``grid_before.png`` / ``grid_after.png`` (samples per prompt, one row per
   prompt), ``reward_hist.png`` (pooled and per prompt, tail shaded) and ``training.png``.

Example:
    >>> from tfftmol.image2d.digits_finetune import finetune
    >>> result = finetune("configs/digits_left.yaml")     # doctest: +SKIP
    >>> result.table()                                       # doctest: +SKIP
"""
from __future__ import annotations

import json
import math
import re
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping, Optional, Sequence

import numpy as np
import pandas as pd
import torch

from tfftmol.tables import markdown_table
from ..core.adjoint import AdjointMatching, estimate_kl
from ..core.checkpoint import atomic_write_text, load_checkpoint, save_tensors
from ..core.config import ConfigError, dump_yaml, from_dict, load_yaml, to_dict
from ..core.risk import cvar, var
from ..core.tfft import TFFTConfig, TFFTResult, run_tfft
from .digits import (DigitClassifier, DigitReward, check_prompts, make_digit_reward, prompt_schedule,
                     sample_digits, state_to_images, within_prompt_diversity)

__all__ = ["DIGIT_MODELS", "DigitsFinetuneConfig", "DigitsFinetuneResult", "is_digits_config", "load_config",
           "finetune", "evaluate_images", "plot_grid", "plot_same_noise", "plot_reward_hists"]

DIGIT_MODELS = ("digits-flow",)
EVAL_SAMPLERS = ("ode", "heun", "sde")


# ----------------------------------------------------------------------------
# Configuration
# ----------------------------------------------------------------------------
@dataclass
class DigitsFinetuneConfig:
    """One image fine-tuning run (TFFT or the expected-reward baseline) on the digit flow.

    Attributes:
        name: run name; the report goes to ``<out_dir>/<name>/``.
        model: ``"digits-flow"`` (what marks a config as an image config).
        classifier: the classifier of the alignment reward and of the evaluation (``"digits-classifier"``).
        guidance: classifier-free guidance weight of the flow (``null`` = the card's default).
        prompts: the digits to generate, assigned round-robin to the samples of every batch; their
            number must divide 1000 (1, 2, 4, 5, 8 or 10 prompts).
        reward: ``{name: alignment}``, ``{name: ink}``, ``{name: contrast}`` or
            ``{name: sum, weights: {alignment: 1.0, ink: 2.0}}``.
        tfft: :class:`~tfftmol.core.tfft.TFFTConfig`; its seeds are set from ``seed``.
        eval_samples: fresh images per model for the evaluation (a multiple of the number of prompts).
        eval_steps, eval_sampler: evaluation sampler (``"sde"``: the process the fine-tuner samples).
        kl_samples: trajectories for the control-cost KL estimate (0 = skip).
        grid_per_prompt: images per prompt in the sample grids.
        seed, device, out_dir, cache_dir (``""`` = ``<out_dir>/cache``), checkpoint_every,
        threads (``torch.set_num_threads``; 0 = unchanged).
    """

    name: str = "digits"
    model: str = "digits-flow"
    classifier: str = "digits-classifier"
    guidance: Optional[float] = None
    prompts: list = field(default_factory=lambda: list(range(10)))
    reward: dict = field(default_factory=lambda: {"name": "alignment"})
    tfft: TFFTConfig = field(default_factory=TFFTConfig)
    eval_samples: int = 2000
    eval_steps: int = 30
    eval_sampler: str = "sde"
    kl_samples: int = 500
    grid_per_prompt: int = 8
    seed: int = 0
    device: str = "cpu"
    out_dir: str = "runs"
    cache_dir: str = ""
    checkpoint_every: int = 50
    threads: int = 0

    def __post_init__(self):
        if isinstance(self.tfft, Mapping):
            self.tfft = from_dict(TFFTConfig, self.tfft, "tfft")
        if not (isinstance(self.name, str) and re.fullmatch(r"[A-Za-z0-9_.\-]+", self.name)):
            raise ConfigError(f"name={self.name!r} must be a non-empty string of letters, digits, '-', '_', '.'")
        if self.model not in DIGIT_MODELS:
            raise ConfigError(f"model={self.model!r} is not an image model; image models: {list(DIGIT_MODELS)}")
        if self.classifier != "digits-classifier":
            raise ConfigError(f"classifier={self.classifier!r}; available: ['digits-classifier']")
        if self.guidance is not None and not (isinstance(self.guidance, (int, float)) and self.guidance >= 0):
            raise ConfigError(f"guidance={self.guidance!r} must be a number >= 0 (1 = no guidance) or null")
        try:
            self.prompts = list(check_prompts(self.prompts))
        except (TypeError, ValueError) as e:
            raise ConfigError(str(e)) from None
        if isinstance(self.reward, str):
            self.reward = {"name": self.reward}
        if not isinstance(self.reward, Mapping):
            raise ConfigError(f"reward: expected a mapping such as {{name: alignment}}, got {self.reward!r}")
        try:
            make_digit_reward(dict(self.reward), classifier=DigitClassifier(channels=1), prompts=self.prompts)
        except ValueError as e:
            raise ConfigError(f"reward: {e}") from None
        for k, lo in (("eval_samples", 2), ("eval_steps", 2), ("kl_samples", 0), ("grid_per_prompt", 1),
                      ("checkpoint_every", 1), ("threads", 0)):
            v = getattr(self, k)
            if not isinstance(v, int) or isinstance(v, bool) or v < lo:
                raise ConfigError(f"{k}={v!r} must be an integer >= {lo}")
        if self.eval_samples % len(self.prompts):
            raise ConfigError(f"eval_samples={self.eval_samples} must be a multiple of the number of prompts "
                              f"({len(self.prompts)})")
        if self.eval_sampler not in EVAL_SAMPLERS:
            raise ConfigError(f"eval_sampler={self.eval_sampler!r} must be one of {EVAL_SAMPLERS}")
        if not isinstance(self.seed, int) or isinstance(self.seed, bool):
            raise ConfigError(f"seed={self.seed!r} must be an integer")
        self.tfft.seed = self.seed
        self.tfft.am.seed = self.seed

    @property
    def run_dir(self) -> Path:
        return Path(self.out_dir) / self.name

    @property
    def offline_cache_dir(self) -> Path:
        return Path(self.cache_dir) if self.cache_dir else Path(self.out_dir) / "cache"


def _raw(source: Any) -> Optional[dict]:
    if isinstance(source, DigitsFinetuneConfig):
        return to_dict(source)
    if isinstance(source, (str, Path)):
        return load_yaml(source) if Path(source).is_file() else None
    if isinstance(source, Mapping):
        return json.loads(json.dumps(dict(source)))
    return None


def is_digits_config(source: Any) -> bool:
    """True if ``source`` (config object, mapping or YAML path) names an image model (``model: digits-flow``)."""
    if isinstance(source, DigitsFinetuneConfig):
        return True
    try:
        data = _raw(source)
    except Exception:  # unreadable YAML: not ours to report; the molecular loader names the problem
        return False
    return isinstance(data, dict) and data.get("model") in DIGIT_MODELS


def load_config(source: Any, **overrides: Any) -> DigitsFinetuneConfig:
    """Build and validate a :class:`DigitsFinetuneConfig` (from itself, a mapping or a YAML path) before any compute."""
    if isinstance(source, (str, Path)) and not Path(source).is_file():
        raise ConfigError(f"config file {str(source)!r} does not exist")
    data = _raw(source)
    if data is None:
        raise ConfigError(f"a config is a DigitsFinetuneConfig, a mapping or a YAML path, got {type(source).__name__}")
    data.update(overrides)
    return from_dict(DigitsFinetuneConfig, data)


# ----------------------------------------------------------------------------
# Evaluation
# ----------------------------------------------------------------------------
@torch.no_grad()
def evaluate_images(x: torch.Tensor, prompts: torch.Tensor, reward: DigitReward, classifier: DigitClassifier,
                    name: str, beta_left: float = 0.1, beta_right: float = 0.9) -> tuple[dict, pd.DataFrame]:
    """Pooled and per-prompt metrics of images ``x`` ``(n, 64)`` generated for ``prompts`` ``(n,)``.

    Returns ``(row, per_prompt)``: ``row`` holds the reward's mean and both CVaRs pooled over all images,
    the same for the alignment ``log p(prompt | x)``, the classifier accuracy with the prompt as label,
    the per-prompt worst cases (min over prompts of the per-prompt alignment mean and left-CVaR) and the
    within-prompt diversity; ``per_prompt`` has one row per prompt.
    """
    r = reward.fn_with_prompts(x, prompts).double().cpu().numpy()
    logp = torch.log_softmax(classifier(x), 1)
    align = logp.gather(1, prompts[:, None])[:, 0].double().numpy()
    correct = (logp.argmax(1) == prompts).double().numpy()
    bl, br = beta_left, beta_right
    row = {"method": name, "n": len(r), "reward_mean": r.mean(), f"reward_cvar_left_{bl:g}": cvar(r, bl, "left"),
           f"reward_cvar_right_{br:g}": cvar(r, br, "right"), "align_mean": align.mean(),
           f"align_cvar_left_{bl:g}": cvar(align, bl, "left"), f"align_cvar_right_{br:g}": cvar(align, br, "right"),
           "accuracy": correct.mean()}
    pp = []
    pr = prompts.numpy()
    for c in np.unique(pr):
        m = pr == c
        pp.append({"method": name, "prompt": int(c), "n": int(m.sum()), "reward_mean": r[m].mean(),
                   f"reward_cvar_left_{bl:g}": cvar(r[m], bl, "left"),
                   f"reward_cvar_right_{br:g}": cvar(r[m], br, "right"), "align_mean": align[m].mean(),
                   f"align_cvar_left_{bl:g}": cvar(align[m], bl, "left"), "accuracy": correct[m].mean()})
    per = pd.DataFrame(pp)
    row["worst_prompt_align_mean"] = float(per["align_mean"].min())
    row[f"worst_prompt_align_cvar_left_{bl:g}"] = float(per[f"align_cvar_left_{bl:g}"].min())
    row["worst_prompt"] = int(per.loc[per["align_mean"].idxmin(), "prompt"])
    row["diversity"] = within_prompt_diversity(x, prompts)
    return row, per


# ----------------------------------------------------------------------------
# Plots
# ----------------------------------------------------------------------------
def plot_grid(panels: Mapping[str, tuple[torch.Tensor, torch.Tensor]], path: str | Path, per_prompt: int = 8,
              title: str = "") -> None:
    """Sample grids side by side: one panel per model, one row per prompt, ``per_prompt`` images a row.

    ``panels``: ``{label: (x (n, 64), prompts (n,))}``; the first ``per_prompt`` images of each prompt are shown.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    labels = list(panels)
    prompts = sorted(set(int(c) for c in next(iter(panels.values()))[1].tolist()))
    k = per_prompt
    fig, axes = plt.subplots(1, len(labels), figsize=(0.55 * k * len(labels) + 0.3, 0.55 * len(prompts) + 0.7),
                             squeeze=False)
    for ax, lab in zip(axes[0], labels):
        x, c = panels[lab]
        img = np.ones((len(prompts) * 9 - 1, k * 9 - 1))  # 1-pixel white gutters
        ims = state_to_images(x).numpy()
        for i, p in enumerate(prompts):
            sel = np.flatnonzero(c.numpy() == p)[:k]
            for j, s in enumerate(sel):
                img[i * 9:i * 9 + 8, j * 9:j * 9 + 8] = 1.0 - ims[s]  # ink dark on white
        ax.imshow(img, cmap="gray", vmin=0, vmax=1, interpolation="nearest")
        ax.set_title(lab, fontsize=9)
        ax.set_xticks([])
        ax.set_yticks([i * 9 + 3.5 for i in range(len(prompts))])
        ax.set_yticklabels([str(p) for p in prompts], fontsize=7)
    if title:
        fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_same_noise(panels: Mapping[str, tuple[torch.Tensor, torch.Tensor]], scores: Mapping[str, np.ndarray],
                    path: str | Path, k: int = 12, title: str = "") -> None:
    """The reference model's ``k`` lowest-scoring images and, below, every other model's image from the same noise.

    ``panels``: ``{label: (x (n, 64), prompts (n,))}`` sampled with the same seed (position ``i`` = same noise);
    ``scores``: ``{label: (n,) reward}``; the first entry is the reference.  Each image is captioned
    ``prompt: score``.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    labels = list(panels)
    ref = labels[0]
    idx = np.argsort(scores[ref], kind="stable")[:k]
    fig, axes = plt.subplots(len(labels), len(idx), figsize=(0.95 * len(idx) + 1.2, 1.15 * len(labels) + 0.5),
                             squeeze=False)
    for i, lab in enumerate(labels):
        x, c = panels[lab]
        ims = state_to_images(x).numpy()
        for j, s in enumerate(idx):
            ax = axes[i, j]
            ax.imshow(1.0 - ims[s], cmap="gray", vmin=0, vmax=1, interpolation="nearest")
            ax.set_xticks([])
            ax.set_yticks([])
            ax.set_title(f"{int(c[s])}: {scores[lab][s]:.2f}", fontsize=7)
            if j == 0:
                ax.set_ylabel(lab, fontsize=8)
    fig.suptitle(title or f"the {len(idx)} lowest-scoring images of {ref} and the same noise under each model "
                 f"(caption: prompt: score)", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_reward_hists(rewards: Mapping[str, tuple[np.ndarray, np.ndarray]], path: str | Path, xlabel: str,
                      tail: Optional[str] = None, beta: Optional[float] = None, eta: Optional[float] = None) -> None:
    """Reward histograms, pooled (large panel) and per prompt (small panels), one colour per model.

    ``rewards``: ``{label: (r (n,), prompts (n,))}``; the first entry is the reference whose ``beta``
    tail is shaded; ``eta`` (stage-1 threshold) is drawn as a dashed line.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    labels = list(rewards)
    allr = np.concatenate([rewards[k][0] for k in labels])
    lo, hi = float(np.quantile(allr, 0.002)), float(allr.max())
    bins = np.linspace(lo, hi + 1e-9, 40)
    prompts = sorted(set(int(c) for c in rewards[labels[0]][1].tolist()))
    ncol = 5
    nrow = math.ceil(len(prompts) / ncol)
    fig = plt.figure(figsize=(13, 3.2 + 1.9 * nrow))
    gs = fig.add_gridspec(1 + nrow, ncol, height_ratios=[2.2] + [1] * nrow)
    ax = fig.add_subplot(gs[0, :])
    for j, lab in enumerate(labels):
        r = np.clip(rewards[lab][0], lo, None)
        ax.hist(r, bins=bins, alpha=0.45, color=f"C{j}", weights=np.full(len(r), 1.0 / len(r)), label=lab)
    if tail and beta is not None:
        q = float(var(rewards[labels[0]][0], beta, tail))
        lo_s, hi_s = (q, hi) if tail == "right" else (lo, q)
        ax.axvspan(lo_s, hi_s, color="grey", alpha=0.15, label=f"{labels[0]} {tail} tail at beta={beta:g}")
    if eta is not None:
        ax.axvline(eta, color="k", ls="--", lw=1, label=f"eta* = {eta:.3g}")
    ax.set_title(f"all prompts pooled (values below {lo:.3g} drawn at it)")
    ax.set_xlabel(xlabel)
    ax.set_ylabel("fraction of images (log scale)")
    ax.set_yscale("log")
    ax.legend(fontsize=8)
    for i, p in enumerate(prompts):
        a = fig.add_subplot(gs[1 + i // ncol, i % ncol])
        for j, lab in enumerate(labels):
            r, c = rewards[lab]
            rr = np.clip(r[c == p], lo, None)
            a.hist(rr, bins=bins, alpha=0.45, color=f"C{j}", weights=np.full(len(rr), 1.0 / max(len(rr), 1)))
        a.set_yscale("log")
        a.set_title(f"prompt {p}", fontsize=8)
        a.tick_params(labelsize=6)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


# ----------------------------------------------------------------------------
# The run
# ----------------------------------------------------------------------------
@dataclass
class DigitsFinetuneResult:
    """What :func:`finetune` returns.

    Attributes:
        config: the validated config; run_dir: the report directory.
        metrics: two rows (``pretrained`` and the method), pooled over all prompts.
        per_prompt: one row per (model, prompt).
        kl: control-cost estimate of ``KL(p_ft || p_pre)`` (nats; ``nan`` if skipped).
        eta: stage-1 threshold (``None`` for the expected-reward baseline).
        tfft: the core's :class:`~tfftmol.core.tfft.TFFTResult`.
        samples: ``{"pretrained": (x, prompts), method: (x, prompts)}`` of the evaluation.
        timings: seconds per phase; files: name -> path of every file written.
    """

    config: DigitsFinetuneConfig
    run_dir: Path
    metrics: pd.DataFrame
    per_prompt: pd.DataFrame
    kl: float
    eta: Optional[float]
    tfft: TFFTResult
    samples: dict
    timings: dict
    files: dict

    @property
    def model(self):
        return self.tfft.model

    def table(self) -> pd.DataFrame:
        """The before/after table (headline columns)."""
        cols = ["method", "reward_mean", "reward_cvar_left_0.1", "reward_cvar_right_0.9", "align_mean",
                "align_cvar_left_0.1", "accuracy", "worst_prompt_align_mean", "diversity", "kl"]
        return self.metrics[[c for c in cols if c in self.metrics.columns]]


def load_models(cfg: DigitsFinetuneConfig, device="cpu"):
    """``(base flow, classifier, reward)`` of a config."""
    from .digits_pretrained import load_digits_classifier, load_digits_flow

    base = load_digits_flow(device=device, guidance=cfg.guidance, prompts=cfg.prompts)
    clf = load_digits_classifier(device=device)
    reward = make_digit_reward(dict(cfg.reward), clf, cfg.prompts)
    return base, clf, reward


def finetune(config: Any, *, resume: bool = False, progress: bool = True,
             callbacks: Optional[list[Callable[[AdjointMatching, dict], None]]] = None,
             log: Callable[[str], None] = print) -> DigitsFinetuneResult:
    """Run one image fine-tune end to end and write its report (module docstring).

    Args:
        config: a :class:`DigitsFinetuneConfig`, a mapping or a YAML path (validated first).
        resume: continue from ``<run_dir>/checkpoint`` (same config); without it an old checkpoint is discarded.
        progress: progress bars; callbacks: extra ``cb(trainer, stats)`` after every stage-2 step.

    Raises:
        ConfigError: bad config (before any compute).
        KeyboardInterrupt: on SIGINT during stage 2, after the checkpoint is saved.
    """
    cfg = load_config(config)
    t_start = time.perf_counter()
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    run_dir = cfg.run_dir
    ckpt_dir = run_dir / "checkpoint"
    cfg_path = run_dir / "config.yaml"
    if resume and cfg_path.exists() and load_checkpoint(ckpt_dir) is not None:
        if to_dict(load_config(cfg_path)) != to_dict(cfg):
            raise ConfigError(f"resume: the config differs from the interrupted run's {cfg_path}; "
                              "run without resume to start over")
    if not resume and ckpt_dir.exists():
        shutil.rmtree(ckpt_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    atomic_write_text(cfg_path, dump_yaml(cfg))

    device = torch.device(cfg.device)
    base, clf, reward = load_models(cfg, device)
    t = cfg.tfft
    log(f"[{cfg.name}] {t.method} fine-tune of {cfg.model} (guidance {base.guidance:g}, prompts {cfg.prompts}) "
        f"on reward {reward.name} ({t.tail} tail, beta={t.beta:g}, alpha={t.alpha:g}, {t.am.steps} steps)")
    res = run_tfft(base, reward, t, cache_dir=cfg.offline_cache_dir, checkpoint_dir=ckpt_dir,
                   checkpoint_every=cfg.checkpoint_every, resume=resume, device=device, progress=progress,
                   cond_sampler=base.cond_sampler, callbacks=list(callbacks or []), log=log)
    timings = dict(res.timings)

    t_eval = time.perf_counter()
    model = res.model.eval()
    x_pre, c_pre = sample_digits(base, cfg.eval_samples, cfg.eval_steps, cfg.eval_sampler, seed=cfg.seed + 1,
                                 prompts=cfg.prompts)
    x_ft, c_ft = sample_digits(model, cfg.eval_samples, cfg.eval_steps, cfg.eval_sampler, seed=cfg.seed + 1,
                               prompts=cfg.prompts)
    kl = float("nan")
    if cfg.kl_samples:
        kl = estimate_kl(model, base, n=cfg.kl_samples, steps=t.am.time_steps, seed=cfg.seed + 2,
                         cond_sampler=base.cond_sampler, batch_size=min(cfg.kl_samples, 1000))
    row_pre, pp_pre = evaluate_images(x_pre, c_pre, reward, clf, "pretrained")
    row_ft, pp_ft = evaluate_images(x_ft, c_ft, reward, clf, t.method if t.method == "expected" else f"tfft-{t.tail}")
    row_pre["kl"], row_ft["kl"] = 0.0, kl
    eta = float(res.threshold.eta) if res.threshold is not None else None
    metrics = pd.DataFrame([row_pre, row_ft])
    metrics.insert(1, "run", cfg.name)
    metrics["reward"] = reward.name
    metrics["tail"], metrics["beta"], metrics["alpha"] = t.tail, t.beta, t.alpha
    metrics["eta"] = [np.nan, np.nan if eta is None else eta]
    metrics["steps"] = [0, t.am.steps]
    metrics["train_seconds"] = [0.0, timings.get("stage2", np.nan)]
    per_prompt = pd.concat([pp_pre, pp_ft], ignore_index=True)
    timings["evaluate"] = time.perf_counter() - t_eval
    timings["tfft_total"] = timings.pop("total", np.nan)
    timings["total"] = time.perf_counter() - t_start
    samples = {"pretrained": (x_pre, c_pre), row_ft["method"]: (x_ft, c_ft)}
    files = write_report(cfg, res, metrics, per_prompt, samples, reward, kl, timings)
    log(f"report: {files['report']}")
    return DigitsFinetuneResult(cfg, run_dir, metrics, per_prompt, kl, eta, res, samples, timings, files)


def write_report(cfg: DigitsFinetuneConfig, res: TFFTResult, metrics: pd.DataFrame, per_prompt: pd.DataFrame,
                 samples: dict, reward: DigitReward, kl: float, timings: dict) -> dict:
    """Write the report directory (module docstring); returns ``{name: path}``."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    d = cfg.run_dir
    d.mkdir(parents=True, exist_ok=True)
    files = {"config": d / "config.yaml", "metrics": d / "metrics.csv", "per_prompt": d / "per_prompt.csv",
             "history": d / "history.csv", "weights": d / "model.safetensors", "grid_before": d / "grid_before.png",
             "grid_after": d / "grid_after.png", "tail_grid": d / "tail_grid.png", "reward_hist": d / "reward_hist.png",
             "training": d / "training.png", "report": d / "report.md"}
    metrics.to_csv(files["metrics"], index=False)
    per_prompt.to_csv(files["per_prompt"], index=False)
    pd.DataFrame(res.history).to_csv(files["history"], index=False)
    sd = {k: v for k, v in res.model.state_dict().items() if not k.startswith("base.")}
    save_tensors(files["weights"], sd, metadata={"base_model": cfg.model, "run": cfg.name, "method": cfg.tfft.method})
    (pre_lab, pre), (ft_lab, ft) = list(samples.items())
    k = cfg.grid_per_prompt
    plot_grid({pre_lab: pre}, files["grid_before"], k, f"before: {cfg.model}, one row per prompt")
    plot_grid({ft_lab: ft}, files["grid_after"], k, f"after: {ft_lab} on {reward.name}, one row per prompt")
    eta = res.threshold.eta if res.threshold is not None else None
    rw = {lab: (reward.fn_with_prompts(x, c).double().numpy(), c.numpy()) for lab, (x, c) in samples.items()}
    plot_reward_hists(rw, files["reward_hist"], f"reward ({reward.name})", cfg.tfft.tail, cfg.tfft.beta, eta)
    plot_same_noise(samples, {lab: v[0] for lab, v in rw.items()}, files["tail_grid"], k=12)
    hist = pd.DataFrame(res.history)
    fig, axes = plt.subplots(1, 4, figsize=(14, 3.2))
    for ax, col in zip(axes, ["loss", "reward_mean", "active_fraction", "kl"]):
        if col in hist.columns and len(hist):
            ax.plot(hist["step"], hist[col], marker=".")
        ax.set_title(col)
        ax.set_xlabel("step")
    fig.tight_layout()
    fig.savefig(files["training"], dpi=100)
    plt.close(fig)

    t = cfg.tfft
    pooled = [c for c in ["method", "reward_mean", "reward_cvar_left_0.1", "reward_cvar_right_0.9", "align_mean",
                          "align_cvar_left_0.1", "accuracy", "worst_prompt_align_mean",
                          "worst_prompt_align_cvar_left_0.1", "diversity", "kl"] if c in metrics.columns]
    pp = per_prompt.pivot(index="prompt", columns="method", values="reward_mean").reset_index()
    pp.columns = ["prompt"] + [f"reward_mean {c}" for c in pp.columns[1:]]
    ppl = per_prompt.pivot(index="prompt", columns="method", values="reward_cvar_left_0.1").reset_index()
    for c in ppl.columns[1:]:
        pp[f"reward_cvar_left_0.1 {c}"] = ppl[c].to_numpy()
    lines = [f"# Fine-tuning report: {cfg.name}", "",
             f"- model: `{cfg.model}` (guidance {cfg.guidance if cfg.guidance is not None else 'card default'}), "
             f"prompts {cfg.prompts} round-robin; reward: `{json.dumps(cfg.reward)}` (`{reward.name}`)",
             f"- method: **{t.method}**, {t.tail} tail, beta = {t.beta:g}, alpha = {t.alpha:g}, {t.am.steps} "
             f"Adjoint Matching steps of {t.am.batch_size} trajectories ({t.am.time_steps} time steps), seed {cfg.seed}",
             f"- evaluation: {cfg.eval_samples} fresh images per model ({cfg.eval_sampler}, {cfg.eval_steps} steps, "
             f"same noise); `align` = log p(prompt | image) from `{cfg.classifier}`, `accuracy` = its arg-max "
             f"equals the prompt; `diversity` = mean pairwise pixel distance within a prompt", "",
             "## Before and after (all prompts pooled)", "", markdown_table(metrics[pooled]), "",
             f"`kl` is the control-cost estimate of KL(p_ft || p_pre) in nats ({cfg.kl_samples} trajectories).", "",
             "## Per prompt", "", markdown_table(pp), ""]
    if res.threshold is not None:
        lines += ["## Stage 1", "", "```", res.threshold.summary(), "```", ""]
    lines += ["## Timings (s)", "", markdown_table(pd.DataFrame([{k: float(v) for k, v in timings.items()}])), "",
              "## Plots", "", "Samples per prompt, before:", "", "![before](grid_before.png)", "",
              "and after:", "", "![after](grid_after.png)", "",
              "The pre-trained model's lowest-reward images and the fine-tuned model's images from the same noise:", "",
              "![bottom tail, same noise](tail_grid.png)", "", "![reward histograms](reward_hist.png)", "",
              "![training curves](training.png)", "",
              "## Files", "", "- `metrics.csv`: pooled metrics (all columns); `per_prompt.csv`: per prompt",
              "- `model.safetensors`: fine-tuned weights; `config.yaml`: the config of this run",
              "- `history.csv`: stage-2 training statistics", ""]
    atomic_write_text(files["report"], "\n".join(lines))
    return files
