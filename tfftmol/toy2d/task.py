"""The 2D task: shipped 2D flows or a Gaussian mixture of one's own, with exact targets where they exist.

Options (``RunConfig.options``)::

    model: gmm-exact          # gmm-exact | toy2d-gmm | toy2d-moons | toy2d-ring
    gmm: null                 # or {means: [[x, y], ...], stds: [...], weights: [...]}: your own mixture
    reward: {name: linear, w: [1.0, 0.0]}

For a Gaussian mixture with a linear reward the fine-tuning target is known exactly
(each component splits at ``eta*`` into truncated normals); the report then states
the target's own-tail CVaR, the share of the gap the run closed and the mass the
fine-tuned model puts beyond ``eta*`` (the target puts ``1 - beta`` or ``beta`` there).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

import numpy as np
import pandas as pd
import torch

from ..core.checkpoint import save_tensors
from ..core.config import ConfigError
from ..core.risk import cvar
from ..pipeline.task import Evaluation, ReportContext

__all__ = ["Toy2DOptions", "Toy2DTask", "TOY2D_MODELS"]

TOY2D_MODELS = ("gmm-exact", "toy2d-gmm", "toy2d-moons", "toy2d-ring")


@dataclass
class Toy2DOptions:
    """Options of a 2D run.

    Attributes:
        model: a shipped 2D model (``gmm-exact``, ``toy2d-gmm``, ``toy2d-moons``, ``toy2d-ring``),
            ignored when ``gmm`` is given.
        gmm: your own isotropic Gaussian mixture ``{means: (K, d), stds: (K,), weights: (K,)}``
            (closed-form velocity), or ``None``.
        reward: ``{name: linear, w: [...]}`` or ``{name: multimodal}``.
        exact_samples: samples of the exact target for the report (GMM + linear reward).
    """

    model: str = "gmm-exact"
    gmm: Optional[dict] = None
    reward: Any = field(default_factory=lambda: {"name": "linear", "w": [1.0, 0.0]})
    exact_samples: int = 20000

    def __post_init__(self):
        from .flows import make_reward

        if self.gmm is None and self.model not in TOY2D_MODELS:
            raise ConfigError(f"model={self.model!r} must be one of {list(TOY2D_MODELS)} (or give 'gmm')")
        if self.gmm is not None:
            if not isinstance(self.gmm, dict) or not {"means", "stds"} <= set(self.gmm) or \
                    not set(self.gmm) <= {"means", "stds", "weights"}:
                raise ConfigError(f"gmm={self.gmm!r} must be a mapping with means, stds and optional weights")
            try:
                self.build_gmm()
            except (TypeError, ValueError, RuntimeError) as e:
                raise ConfigError(f"gmm: {e}") from None
        if isinstance(self.reward, str):
            self.reward = {"name": self.reward}
        try:
            make_reward(self.reward)
        except (TypeError, ValueError) as e:
            raise ConfigError(f"reward: {e}") from None
        if not (isinstance(self.exact_samples, int) and self.exact_samples >= 100):
            raise ConfigError(f"exact_samples={self.exact_samples!r} must be an integer >= 100")

    def build_gmm(self):
        from .gmm import GaussianMixtureFlow

        g = self.gmm
        means = np.asarray(g["means"], dtype=float)
        stds = np.asarray(g["stds"], dtype=float)
        if means.ndim != 2 or stds.shape != (means.shape[0],) or not (stds > 0).all():
            raise ValueError(f"means must be (K, d) and stds (K,) positive; got {means.shape} and {stds.shape}")
        w = g.get("weights")
        if w is not None and (np.asarray(w).shape != (means.shape[0],) or not (np.asarray(w) > 0).all()):
            raise ValueError(f"weights must be (K,) positive; got {w!r}")
        return GaussianMixtureFlow(means, stds, w)


class Toy2DTask:
    """2D flows (closed-form GMMs and shipped MLP flows) through the one pipeline."""

    kind = "toy2d"
    options_class = Toy2DOptions

    def check(self, cfg) -> None:
        pass

    def describe(self, cfg) -> str:
        o = cfg.options
        model = "own Gaussian mixture" if o.gmm is not None else f"`{o.model}`"
        return f"model {model}; reward `{o.reward}`"

    def load_base(self, cfg, device):
        from ..pretrained import load_pretrained

        o = cfg.options
        base = o.build_gmm().to(device) if o.gmm is not None else load_pretrained(o.model, device=str(device))
        if isinstance(base, torch.nn.Module):
            for p in base.parameters():
                p.requires_grad_(False)
            base.eval()
        return base

    def build_reward(self, cfg, base, device, log):
        from .flows import make_reward

        return make_reward(cfg.options.reward)

    def cond_sampler(self, cfg, base):
        return None

    def callbacks(self, reward) -> list:
        return []

    def evaluate(self, cfg, samples, reward, label: str) -> Evaluation:
        x = samples.x.detach().cpu()
        r = reward.evaluate(x).values.double().cpu().numpy()
        return Evaluation(r, np.isfinite(r), {}, pd.DataFrame({"x0": x[:, 0].numpy(), "x1": x[:, 1].numpy(),
                                                               "reward": r}), {"x": x})

    def exact_target(self, cfg, base, reward, eta: Optional[float]):
        """Samples of the exact fine-tuning target and how they were obtained."""
        from .experiment import target_samples

        t = cfg.tfft
        method = "expected" if t.method == "expected" else f"tfft-{t.tail}"
        return target_samples(base, reward, method, t.alpha, t.beta, eta, cfg.options.exact_samples, seed=cfg.seed)

    def report(self, cfg, run_dir: Path, ctx: ReportContext) -> tuple[list[str], dict]:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        t = cfg.tfft
        res = ctx.result
        eta = None if res.threshold is None else float(res.threshold.eta)
        lines: list[str] = []
        if t.method == "expected" or eta is not None:
            xt, how = self.exact_target(cfg, ctx.base, ctx.reward, eta)
            rt = ctx.reward.evaluate(xt).values.double().numpy()
            own = f"reward_cvar_{t.tail}_{t.beta:g}"
            pre, post = (float(v) for v in ctx.metrics[own].iloc[:2])
            target = cvar(rt, t.beta, t.tail)
            gap = target - pre
            lines += ["## Against the target", "",
                      f"- target ({how}): `{own}` = {target:.4g}; the run closed "
                      f"{(post - pre) / gap if abs(gap) > 1e-12 else float('nan'):.0%} of the gap "
                      f"({pre:.4g} -> {post:.4g})"]
            if eta is not None:
                r_ft = ctx.evaluations[t.method].values
                beyond = float((r_ft > eta).mean() if t.tail == "right" else (r_ft < eta).mean())
                lines += [f"- mass beyond eta* = {eta:.4g}: {beyond:.3f} (the target puts {t.tail_mass:.3f} there)"]
            lines += ["", "![samples](samples.png)", ""]
        else:
            xt = None
        fig, ax = plt.subplots(figsize=(5, 5))
        for label, ev in ctx.evaluations.items():
            x = ev.extra["x"][:3000]
            ax.scatter(x[:, 0], x[:, 1], s=2, alpha=0.4, label=label)
        if xt is not None:
            ax.scatter(xt[:3000, 0], xt[:3000, 1], s=2, alpha=0.2, c="grey", label="exact target")
        ax.legend(markerscale=5, fontsize=8)
        ax.set_aspect("equal")
        fig.tight_layout()
        path = run_dir / "samples.png"
        fig.savefig(path, dpi=90)
        plt.close(fig)
        return lines, {"scatter": path}

    def save_model(self, cfg, model, path: Path, metadata: dict) -> None:
        sd = {k: v for k, v in model.state_dict().items() if not k.startswith("base.")} \
            if isinstance(model, torch.nn.Module) else {}
        save_tensors(path, sd, metadata={k: str(v) for k, v in metadata.items()})
