"""The 2D comparison: pre-trained vs expected-FT vs TFFT-right vs TFFT-left, against exact targets.

Used by ``tfftmol toy2d`` and ``benchmarks/toy2d.py``.  For the exact GMM with a
linear reward every target is known in closed form (expected-FT: a tilted
mixture; TFFT: each component split at ``eta*`` into truncated normals);
otherwise the target is sampled by importance resampling of a large
pre-trained batch (with its ESS reported).
"""
from __future__ import annotations

import copy
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Optional

import numpy as np
import pandas as pd
import torch

from ..core.adjoint import AMConfig, estimate_kl
from ..core.risk import cvar
from ..core.samplers import sample_sde
from ..core.tfft import TFFTConfig, run_tfft
from .gmm import GaussianMixtureFlow

__all__ = ["Toy2DConfig", "run_toy2d", "target_samples", "plot_toy2d"]


@dataclass
class Toy2DConfig:
    """Settings of the 2D comparison (one ``alpha`` and step budget for every method)."""

    model: str = "gmm-exact"
    reward: dict = field(default_factory=lambda: {"name": "linear", "w": [1.0, 0.0]})
    alpha: float = 1.0
    beta_right: float = 0.9
    beta_left: float = 0.1
    methods: list = field(default_factory=lambda: ["pretrained", "expected", "tfft-right", "tfft-left"])
    eval_samples: int = 20000
    eval_steps: int = 50
    kl_samples: int = 2000
    seed: int = 0
    tfft: TFFTConfig = field(default_factory=TFFTConfig)


def target_samples(base, reward, method: str, alpha: float, beta: float, eta: Optional[float], n: int,
                   seed: int = 0, pool: int = 200000) -> tuple[torch.Tensor, str]:
    """Samples of the exact fine-tuning target of ``method``.

    Returns ``(x, how)`` with ``how`` one of ``"closed form"``, ``"exact truncated normals"``,
    ``"importance resampling (ESS=...)"``.
    """
    lam = 1.0 / alpha
    w = getattr(reward, "w", None)
    if isinstance(base, GaussianMixtureFlow) and w is not None:
        if method == "expected":
            return base.tilted_linear(w, lam).sample_data(n, torch.Generator().manual_seed(seed)), "closed form"
        tail = "right" if method == "tfft-right" else "left"
        return base.sample_tilted_hinge(n, w.numpy(), eta, alpha, beta, tail, seed=seed), "exact truncated normals"
    gen = torch.Generator().manual_seed(seed)
    if isinstance(base, GaussianMixtureFlow):
        xp = base.sample_data(pool, gen)
    else:
        from ..core.samplers import sample_ode
        xp = sample_ode(base, pool, 50, generator=gen)
    r = reward.evaluate(xp).values.double()
    if method == "expected":
        logw = lam * r
    elif method == "tfft-right":
        logw = lam * torch.clamp(r - eta, min=0) / (1 - beta)
    else:
        logw = -lam * torch.clamp(eta - r, min=0) / beta
    wts = torch.softmax(logw, 0)
    ess = float(1.0 / (wts ** 2).sum())
    idx = torch.multinomial(wts.float(), n, replacement=True, generator=gen)
    return xp[idx], f"importance resampling (ESS={ess:.0f} of {pool})"


def _row(name, x, reward, beta_r, beta_l, eta=None, tail=None):
    r = reward.evaluate(x).values.double().numpy()
    row = {"method": name, "mean": r.mean(), f"cvar_right_{beta_r:g}": cvar(r, beta_r, "right"),
           f"cvar_left_{beta_l:g}": cvar(r, beta_l, "left")}
    if eta is not None:
        row["mass_beyond_eta"] = float((r > eta).mean() if tail == "right" else (r < eta).mean())
    return row, r


def run_toy2d(cfg: Toy2DConfig, out_dir: str | Path | None = None, progress: bool = True, log=print):
    """Run every method of ``cfg.methods``; return ``(table, extras)``.

    ``table`` is a DataFrame with one row per method: mean, right-CVaR, left-CVaR,
    KL estimate, wall time, mass beyond ``eta*`` and the same figures for the
    exact target.  ``extras`` holds samples and thresholds for plotting.
    """
    from ..pretrained import load_pretrained
    from .flows import make_reward

    base = load_pretrained(cfg.model)
    reward = make_reward(cfg.reward)
    rows, extras = [], {"samples": {}, "targets": {}, "thresholds": {}, "rewards": {}, "target_rewards": {}}
    br, bl = cfg.beta_right, cfg.beta_left
    eval_gen = lambda: torch.Generator().manual_seed(cfg.seed + 12345)
    cache = Path(out_dir) / "cache" if out_dir is not None else None
    times = {}
    for method in cfg.methods:
        if method == "pretrained":
            t0 = time.perf_counter()
            x = sample_sde(base, cfg.eval_samples, cfg.eval_steps, generator=eval_gen())
            row, r = _row(method, x, reward, br, bl)
            row.update(kl=0.0, wall_s=time.perf_counter() - t0)
            rows.append(row)
            extras["samples"][method], extras["rewards"][method] = x, r
            continue
        if method not in ("expected", "tfft-right", "tfft-left"):
            raise ValueError(f"unknown method {method!r}; valid: pretrained, expected, tfft-right, tfft-left")
        tail = "left" if method == "tfft-left" else "right"
        beta = bl if tail == "left" else br
        tc = replace(cfg.tfft, method="expected" if method == "expected" else "tfft", tail=tail, beta=beta,
                     alpha=cfg.alpha, seed=cfg.seed, am=replace(cfg.tfft.am, seed=cfg.seed))
        t0 = time.perf_counter()
        res = run_tfft(base, reward, tc, cache_dir=cache, progress=progress, log=log)
        wall = time.perf_counter() - t0
        times[method] = (wall, res.timings.get("stage2", wall))
        model = res.model.eval()
        eta = res.threshold.eta if res.threshold is not None else None
        x = sample_sde(model, cfg.eval_samples, cfg.eval_steps, generator=eval_gen())
        row, r = _row(method, x, reward, br, bl, eta, tail)
        row.update(kl=estimate_kl(model, base, cfg.kl_samples, cfg.eval_steps, seed=cfg.seed),
                   wall_s=wall, stage2_s=res.timings.get("stage2", float("nan")),
                   offline_s=res.timings.get("offline", 0.0), refine_s=res.timings.get("refine", 0.0))
        xt, how = target_samples(base, reward, method, cfg.alpha, beta, eta, cfg.eval_samples, seed=cfg.seed)
        trow, rt = _row(method, xt, reward, br, bl, eta, tail)
        for k in ("mean", f"cvar_right_{br:g}", f"cvar_left_{bl:g}", "mass_beyond_eta"):
            if k in trow:
                row[f"target_{k}"] = trow[k]
        row["target_from"] = how
        if res.threshold is not None:
            row["eta"] = eta
            row["stage1_active_fraction"] = res.threshold.active_fraction
            row["stages"] = len(res.stages)
            own = f"cvar_{tail}_{beta:g}"
            pre = rows[0][own] if rows and rows[0]["method"] == "pretrained" else None
            if pre is not None:
                gap0 = trow[own] - pre
                row["gap_cut"] = (row[own] - pre) / gap0 if abs(gap0) > 1e-12 else float("nan")
                # the same tail measured at its own level on both model and target
        rows.append(row)
        extras["samples"][method], extras["rewards"][method] = x, r
        extras["targets"][method], extras["thresholds"][method] = xt, res.threshold
        extras["target_rewards"][method] = rt
    table = pd.DataFrame(rows)
    if "expected" in times:
        for m in ("tfft-right", "tfft-left"):
            if m in times:
                table.loc[table.method == m, "time_ratio_vs_expected"] = times[m][0] / times["expected"][0]
                table.loc[table.method == m, "stage2_time_ratio_vs_expected"] = times[m][1] / times["expected"][1]
    if out_dir is not None:
        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        table.to_csv(out / "toy2d.csv", index=False)
        plot_toy2d(extras, cfg, out / "toy2d.png")
    return table, extras


def plot_toy2d(extras: dict, cfg: Toy2DConfig, path: str | Path) -> None:
    """Scatter panels per method (with the exact target in grey) and reward histograms with the tail shaded."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    methods = list(extras["samples"])
    fig, axes = plt.subplots(2, len(methods), figsize=(3.2 * len(methods), 6.2), squeeze=False)
    pre_r = extras["rewards"].get("pretrained")
    for j, m in enumerate(methods):
        ax = axes[0, j]
        if m in extras["targets"]:
            xt = extras["targets"][m][:3000]
            ax.scatter(xt[:, 0], xt[:, 1], s=2, c="0.75", label="target p*")
        x = extras["samples"][m][:3000]
        ax.scatter(x[:, 0], x[:, 1], s=2, c="C0" if m == "pretrained" else "C3", label=m)
        ax.set_title(m)
        ax.set_aspect("equal")
        ax.set_xlim(-4, 4)
        ax.set_ylim(-4, 4)
        ax.legend(loc="lower left", fontsize=7, markerscale=4)
        ax = axes[1, j]
        r = extras["rewards"][m]
        bins = np.linspace(min(r.min(), pre_r.min() if pre_r is not None else r.min()),
                           max(r.max(), pre_r.max() if pre_r is not None else r.max()), 60)
        if pre_r is not None and m != "pretrained":
            ax.hist(pre_r, bins=bins, density=True, color="C0", alpha=0.35, label="pre-trained")
        ax.hist(r, bins=bins, density=True, color="C3" if m != "pretrained" else "C0", alpha=0.6, label=m)
        if m in extras.get("target_rewards", {}):
            ax.hist(extras["target_rewards"][m], bins=bins, density=True, histtype="step", color="k", lw=1,
                    label="target p*")
        thr = extras["thresholds"].get(m)
        if thr is not None:
            ax.axvline(thr.eta, color="k", ls="--", lw=1, label="eta*")
            lo, hi = (thr.eta, bins[-1]) if thr.tail == "right" else (bins[0], thr.eta)
            ax.axvspan(lo, hi, color="C1", alpha=0.15, label=f"{thr.tail} tail")
        ax.set_xlabel("reward")
        ax.legend(fontsize=7)
    fig.suptitle(f"{cfg.model}, reward {cfg.reward.get('name')}, alpha={cfg.alpha}")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
