"""The digits task: the prompted 8x8-digit flow, image rewards, per-prompt metrics and image grids.

Options (``RunConfig.options``)::

    model: digits-flow             # the shipped class-conditional flow
    classifier: digits-classifier  # the classifier of the alignment reward and of the evaluation
    guidance: null                 # classifier-free guidance weight (null = the card's default)
    prompts: [0, 1, ..., 9]        # assigned round-robin; their number must divide 1000
    reward: {name: alignment}      # alignment | ink | contrast | {name: sum, weights: {...}}
    grid_per_prompt: 8

The flow's round-robin prompts are the core's per-sample condition; the reward
scores sample ``i`` of a batch against prompt ``i mod P`` (see
:mod:`tfftmol.digits.models`).  Evaluation adds the alignment ``log p(prompt | x)``,
the classifier accuracy, the per-prompt worst case and a diversity proxy; the
report adds per-prompt tables, sample grids before and after, and the lowest-reward
images of the pre-trained model beside the fine-tuned model's from the same noise.
"""
from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Optional, Sequence

import numpy as np
import pandas as pd
import torch

from tfftmol.tables import markdown_table
from ..core.checkpoint import save_tensors
from ..core.config import ConfigError, check_int
from ..core.risk import cvar, var
from .models import (DigitClassifier, DigitReward, check_prompts, make_digit_reward, prompt_schedule,
                              state_to_images, within_prompt_diversity)
from ..pipeline.task import Evaluation, ReportContext

__all__ = ["DIGIT_MODELS", "DigitsOptions", "DigitsTask", "evaluate_images", "plot_grid", "plot_same_noise",
           "plot_reward_hists"]

DIGIT_MODELS = ("digits-flow",)


@dataclass
class DigitsOptions:
    """Options of a digits run (see the module docstring)."""

    model: str = "digits-flow"
    classifier: str = "digits-classifier"
    guidance: Optional[float] = None
    prompts: list = field(default_factory=lambda: list(range(10)))
    reward: Any = field(default_factory=lambda: {"name": "alignment"})
    grid_per_prompt: int = 8

    def __post_init__(self):
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
        check_int(self, "grid_per_prompt")


class DigitsTask:
    """The prompted digit flow through the one pipeline (:mod:`tfftmol.pipeline`)."""

    kind = "digits"
    options_class = DigitsOptions

    def check(self, cfg) -> None:
        p = len(cfg.options.prompts)
        if cfg.eval.samples % p:
            raise ConfigError(f"eval.samples={cfg.eval.samples} must be a multiple of the number of prompts ({p})")
        if cfg.eval.batch_size % p:
            raise ConfigError(f"eval.batch_size={cfg.eval.batch_size} must be a multiple of the number of "
                              f"prompts ({p})")

    def describe(self, cfg) -> str:
        o = cfg.options
        return (f"model `{o.model}` (guidance {o.guidance if o.guidance is not None else 'card default'}), "
                f"prompts {o.prompts} round-robin; reward `{json.dumps(o.reward)}`")

    def load_base(self, cfg, device):
        from .pretrained import load_digits_flow

        o = cfg.options
        base = load_digits_flow(device=device, guidance=o.guidance, prompts=o.prompts)
        for p in base.parameters():
            p.requires_grad_(False)
        return base.eval()

    def build_reward(self, cfg, base, device, log):
        from .pretrained import load_digits_classifier

        clf = load_digits_classifier(device=device)
        reward = make_digit_reward(dict(cfg.options.reward), clf, cfg.options.prompts)
        reward.classifier_model = clf
        return reward

    def cond_sampler(self, cfg, base):
        return base.cond_sampler

    def callbacks(self, reward) -> list:
        return []

    def evaluate(self, cfg, samples, reward, label: str) -> Evaluation:
        x, c = samples.x.detach().cpu(), samples.cond.cpu()
        name = label if label in ("pretrained", "expected") else f"tfft-{cfg.tfft.tail}"
        row, per = evaluate_images(x, c, reward, reward.classifier_model.cpu(), name)
        r = reward.fn_with_prompts(x, c).double().numpy()
        keep = {k: v for k, v in row.items() if k.startswith(("align", "accuracy", "worst_prompt", "diversity"))}
        table = pd.DataFrame({"prompt": c.numpy(), "reward": r})
        return Evaluation(r, np.isfinite(r), keep, table, {"x": x, "prompts": c, "per_prompt": per})

    def report(self, cfg, run_dir: Path, ctx: ReportContext) -> tuple[list[str], dict]:
        o, t = cfg.options, cfg.tfft
        evs = ctx.evaluations
        (pre_lab, pre), (ft_lab, ft) = list(evs.items())
        samples = {pre_lab: (pre.extra["x"], pre.extra["prompts"]), ft_lab: (ft.extra["x"], ft.extra["prompts"])}
        files = {"grid_before": run_dir / "grid_before.png", "grid_after": run_dir / "grid_after.png",
                 "tail_grid": run_dir / "tail_grid.png", "per_prompt": run_dir / "per_prompt.csv",
                 "reward_hist_prompts": run_dir / "reward_hist_prompts.png"}
        k = o.grid_per_prompt
        plot_grid({pre_lab: samples[pre_lab]}, files["grid_before"], k, f"before: {o.model}, one row per prompt")
        plot_grid({ft_lab: samples[ft_lab]}, files["grid_after"], k,
                  f"after: {ft_lab} on {ctx.reward.name}, one row per prompt")
        rw = {lab: (evs[lab].values, evs[lab].extra["prompts"].numpy()) for lab in evs}
        eta = ctx.result.threshold.eta if ctx.result.threshold is not None else None
        plot_reward_hists(rw, files["reward_hist_prompts"], f"reward ({ctx.reward.name})", t.tail, t.beta, eta)
        plot_same_noise(samples, {lab: v[0] for lab, v in rw.items()}, files["tail_grid"], k=12)
        per_prompt = pd.concat([pre.extra["per_prompt"], ft.extra["per_prompt"]], ignore_index=True)
        per_prompt.to_csv(files["per_prompt"], index=False)
        pp = per_prompt.pivot(index="prompt", columns="method", values="reward_mean").reset_index()
        pp.columns = ["prompt"] + [f"reward_mean {c}" for c in pp.columns[1:]]
        lines = ["## Per prompt", "", "`align` = log p(prompt | image) from the classifier, `accuracy` = its "
                 "arg-max equals the prompt; `diversity` = mean pairwise pixel distance within a prompt.", "",
                 markdown_table(pp), "", "## Images", "", "Samples per prompt, before:", "",
                 "![before](grid_before.png)", "", "and after:", "", "![after](grid_after.png)", "",
                 "The pre-trained model's lowest-reward images and the fine-tuned model's images from the same "
                 "noise:", "", "![bottom tail, same noise](tail_grid.png)", "",
                 "![reward histograms per prompt](reward_hist_prompts.png)", ""]
        return lines, files

    def save_model(self, cfg, model, path: Path, metadata: dict) -> None:
        sd = {k: v for k, v in model.state_dict().items() if not k.startswith("base.")}
        save_tensors(path, sd, metadata={"base_model": cfg.options.model, **{k: str(v) for k, v in metadata.items()}})


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
