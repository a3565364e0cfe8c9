"""Where a fine-tune's tail falls short: its control against the exact optimal control, time by time.

On the exact family (:mod:`benchmarks.exact_family`: random 2D Gaussian mixtures, ``r = w·x``) the
optimal control of the hinge tilt is known in closed form,
``u*(x, t) = sigma(t) grad_x log E[exp(pseudo(r(X_1)) / alpha) | X_t = x]``
(:meth:`tfftmol.toy2d.gmm.GaussianMixtureFlow.hinge_optimal_control`).  After a TFFT run this script
draws on-policy trajectories of the fine-tuned model and, at every grid time ``t_k``, projects three
fields onto ``u*`` (``slope = <f, u*> / <u*, u*>`` over the batch; 1 = the optimum's size):

* ``slope_model``: the learned control ``u_theta``;
* ``slope_target``: the on-policy Adjoint Matching target ``-sigma_k a_{k+1}`` (lean adjoint of the
  run's final pseudo-reward).  Below 1, the fixed-point iteration has not caught up: the target
  itself is computed under the fine-tune's own (under-tilted) future;
* ``slope_weighted``: the same target with the full path weights ``dP*/dP_u`` (Girsanov, untempered),
  normalised by ``<W u*, u*>``: 1 up to sampling error, whatever the policy.

``slope_model`` close to ``slope_target`` with both below 1 means the shortfall is the fixed-point lag;
``slope_model`` below ``slope_target`` means the regression itself lags.  Also reported per run: the
control costs of ``u*`` and of ``u_theta`` along the fine-tune's own paths and the run's own-tail CVaR error.

Writes ``benchmarks/results/control_gap.csv`` (one row per run and time) and ``.md`` (per run).

    python benchmarks/control_gap.py [--cases 0 1 2] [--alphas 1.0] [--tails right] [--steps 800] [--quick]
"""
from __future__ import annotations

import argparse
import sys
import time
import warnings
from pathlib import Path

import numpy as np
import pandas as pd
import torch

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from exact_family import BETA, case_config, make_case  # noqa: E402
from tfftmol.tables import markdown_table  # noqa: E402
from tfftmol.core.adjoint import lean_adjoint, path_log_weights  # noqa: E402
from tfftmol.core.pseudo import PseudoReward  # noqa: E402
from tfftmol.core.risk import cvar  # noqa: E402
from tfftmol.core.samplers import sample_sde  # noqa: E402
from tfftmol.core.sde import control, sigma_memoryless  # noqa: E402
from tfftmol.core.tfft import run_tfft  # noqa: E402
from tfftmol.core.threshold import TfftWarning  # noqa: E402
from tfftmol.core.value import sample_controlled  # noqa: E402
from tfftmol.toy2d.flows import linear_reward  # noqa: E402
from tfftmol.toy2d.gmm import hinge_target_stats, population_threshold  # noqa: E402


class OptimalFlow:
    """The base mixture driven by the exact optimal control of the hinge tilt: ``v = v_base + sigma u* / 2``."""

    def __init__(self, g, w, eta: float, alpha: float, beta: float, tail: str):
        self.g, self.args = g, (w, eta, alpha, beta, tail)
        self.state_shape = g.state_shape

    def sample_prior(self, n, generator=None, device=None):
        return self.g.sample_prior(n, generator=generator, device=device)

    def velocity(self, x, t, cond=None):
        t = torch.as_tensor(t, dtype=x.dtype).reshape(-1).expand(x.shape[0])
        out = self.g.velocity(x, t).clone()
        for tv in t.unique():                      # one time per sampling step (a validator probes several)
            i, tt = t == tv, float(tv)
            out[i] += 0.5 * float(sigma_memoryless(torch.tensor(tt))) * self.g.hinge_optimal_control(x[i], tt, *self.args)
        return out


def target_bias(case: int, alpha: float, tail: str, grids, n: int) -> pd.DataFrame:
    """The Adjoint Matching target *under the exact optimal policy*, projected on ``u*``, per SDE grid.

    1 at every time would make ``u*`` a fixed point of the discrete regression; below 1 the discrete
    fixed point is a shrunk control whatever the optimiser does (an O(h) bias of the grid).
    """
    beta = BETA[tail]
    g, w = make_case(case)
    eta, _ = population_threshold(g, w, alpha, beta, tail)
    rows = []
    for steps in grids:
        d, s = control_slopes(OptimalFlow(g, w, eta, alpha, beta, tail), g, w, eta, alpha, beta, tail, steps, n,
                              seed=50_000 + case)
        early, late = d[d["t"] < 0.5], d[d["t"] >= 0.5]
        rows.append({"case": case, "alpha": alpha, "tail": tail, "time_steps": steps,
                     "target_slope_t<0.5": float(early["slope_target"].mean()),
                     "target_slope_t>=0.5": float(late["slope_target"].mean()),
                     "target_slope_min": float(d["slope_target"].min()),
                     "kl_u_star_on_paths": s["kl_u_star_on_paths"]})
    return pd.DataFrame(rows)


def control_slopes(model, g, w, eta: float, alpha: float, beta: float, tail: str, time_steps: int, n: int,
                   seed: int) -> tuple[pd.DataFrame, dict]:
    """Per grid time, the projections of the model's control and of the AM targets onto ``u*``."""
    gen = torch.Generator().manual_seed(seed)
    x0 = g.sample_prior(n, generator=gen)
    ct = sample_controlled(model, g, n, time_steps, generator=gen, x_start=x0)
    traj = ct.traj
    wt = torch.as_tensor(w, dtype=traj.final.dtype)
    r = traj.final @ wt
    pseudo = PseudoReward(tail=tail, beta=beta, eta=float(eta))
    a_T = -(1.0 / alpha) * pseudo.grad(r)[:, None] * wt[None]
    adj = lean_adjoint(g, traj, a_T)
    with torch.no_grad():
        pw = torch.softmax(path_log_weights(ct, 1.0 / alpha, pseudo.value(r)).double(), 0) * n
    rows, h = [], 1.0 / time_steps
    kl_star = kl_model = 0.0
    for k in range(traj.xs.shape[0] - 1):
        x, t = traj.xs[k], traj.ts[k]
        us = g.hinge_optimal_control(x, float(t), w, eta, alpha, beta, tail).double()
        tgt = (-sigma_memoryless(t) * adj[k + 1]).double()
        with torch.no_grad():
            um = control(model.velocity(x, t), g.velocity(x, t), t).double()
        den = float((us * us).sum())
        wden = float((pw[:, None] * us * us).sum())
        kl_star += 0.5 * float((us ** 2).sum(1).mean()) * h
        kl_model += 0.5 * float((um ** 2).sum(1).mean()) * h
        rows.append({"t": float(t), "slope_model": float((um * us).sum()) / den,
                     "slope_target": float((tgt * us).sum()) / den,
                     "slope_weighted": float((pw[:, None] * tgt * us).sum()) / wden,
                     "u_star_sq": float((us ** 2).sum(1).mean()), "u_model_sq": float((um ** 2).sum(1).mean())})
    return pd.DataFrame(rows), {"kl_u_star_on_paths": kl_star, "kl_model_on_paths": kl_model,
                                "path_weight_ess": float(n / (pw ** 2).sum())}


def run(case: int, alpha: float, tail: str, steps: int, batch: int, lr: float, time_steps: int, n: int,
        eval_samples: int) -> tuple[pd.DataFrame, dict]:
    beta = BETA[tail]
    g, w = make_case(case)
    cfg = case_config(case, alpha, tail, steps, 10000, time_steps, "auto", batch, lr)
    t0 = time.perf_counter()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", TfftWarning)
        res = run_tfft(g, linear_reward([float(v) for v in w]), cfg, progress=False, log=lambda s: None)
    wall = time.perf_counter() - t0
    eta = float(res.tracking["eta"]) if res.tracking else float(res.threshold.eta)
    per_t, summ = control_slopes(res.model, g, w, eta, alpha, beta, tail, time_steps, n, seed=40_000 + case)
    xs = sample_sde(res.model, eval_samples, time_steps, generator=torch.Generator().manual_seed(10_000 + case))
    r = (xs.double() @ torch.as_tensor(w, dtype=torch.float64)).numpy()
    eta_pop, _ = population_threshold(g, w, alpha, beta, tail)
    ex = hinge_target_stats(g, w, eta_pop, alpha, beta, tail)
    c = cvar(r, beta, tail)
    key = {"case": case, "alpha": alpha, "tail": tail, "steps": steps}
    per_t = per_t.assign(**key)[list(key) + list(per_t.columns)]
    summ = {**key, "eta": eta, "eta_exact": eta_pop, "rel_error": (c - ex["cvar"]) / abs(ex["cvar"]),
            "mean_slope_model": float(per_t["slope_model"].mean()),
            "mean_slope_target": float(per_t["slope_target"].mean()),
            "mean_slope_weighted": float(per_t["slope_weighted"].mean()), **summ, "kl_exact": ex["kl"],
            "wall_s": wall}
    return per_t, summ


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--cases", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--alphas", type=float, nargs="+", default=[1.0])
    p.add_argument("--tails", nargs="+", default=["right"], choices=["right", "left"])
    p.add_argument("--steps", type=int, nargs="*", default=[800], help="fine-tune budgets (none: the bias table only)")
    p.add_argument("--batch", type=int, default=256)
    p.add_argument("--lr", type=float, default=2e-3)
    p.add_argument("--time-steps", type=int, default=20)
    p.add_argument("--trajectories", type=int, default=8000, help="on-policy trajectories for the projections")
    p.add_argument("--eval-samples", type=int, default=20000)
    p.add_argument("--bias-grids", type=int, nargs="*", default=[20, 50, 100],
                   help="SDE grids at which to measure the target under the optimal policy (none: skip)")
    p.add_argument("--quick", action="store_true", help="one case, 10 steps, small batches (used by the tests)")
    p.add_argument("--out", default=str(HERE / "results"))
    a = p.parse_args(argv)
    if a.quick:
        a.cases, a.alphas, a.tails, a.steps, a.batch, a.trajectories, a.eval_samples = [0], [1.0], ["right"], [10], 32, 500, 2000
        a.time_steps, a.bias_grids = 10, [10]
    bias = pd.concat([target_bias(c, al, tl, a.bias_grids, a.trajectories) for c in a.cases for al in a.alphas
                      for tl in a.tails], ignore_index=True) if a.bias_grids else pd.DataFrame()
    if len(bias):
        print(bias.to_string(index=False), flush=True)
    per_t, runs = [], []
    for case in a.cases:
        for alpha in a.alphas:
            for tail in a.tails:
                for steps in a.steps:
                    d, s = run(case, alpha, tail, steps, a.batch, a.lr, a.time_steps, a.trajectories, a.eval_samples)
                    per_t.append(d)
                    runs.append(s)
                    print(f"case {case} alpha {alpha:g} {tail} {steps} steps: rel_error {s['rel_error']:+.4f}, slopes "
                          f"model {s['mean_slope_model']:.3f} target {s['mean_slope_target']:.3f} weighted "
                          f"{s['mean_slope_weighted']:.3f}; KL on paths u* {s['kl_u_star_on_paths']:.4f} "
                          f"model {s['kl_model_on_paths']:.4f} (exact {s['kl_exact']:.4f})", flush=True)
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    stem = "control_gap_quick" if a.quick else "control_gap"
    if len(bias):
        bias.to_csv(out / f"{stem}_bias.csv", index=False)
    if not runs:
        print(f"wrote {out / (stem + '_bias.csv')}")
        return pd.DataFrame(), pd.DataFrame()
    df, sm = pd.concat(per_t, ignore_index=True), pd.DataFrame(runs)
    df.to_csv(out / f"{stem}.csv", index=False)
    md = ["# The learned control against the exact optimal control (hinge tilt, exact family)", "",
          f"{a.batch} trajectories per step, {a.time_steps} SDE steps, Adam {a.lr:g}; projections on "
          f"{a.trajectories} on-policy trajectories.  slope = <f, u*> / <u*, u*> (1 = the optimum).", "",
          "## The target under the exact optimal policy (the discrete fixed point's bias)", "",
          markdown_table(bias) if len(bias) else "(not measured)", "",
          "## Per run", "", markdown_table(sm), "", "## Per time (mean over runs)", "",
          markdown_table(df.groupby(["steps", "t"])[["slope_model", "slope_target", "slope_weighted"]].mean().reset_index())]
    (out / f"{stem}.md").write_text("\n".join(md) + "\n")
    print(f"wrote {out / (stem + '.csv')} and .md")
    return df, sm


if __name__ == "__main__":
    main()
