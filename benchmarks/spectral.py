"""Spectral risk and the CVaR-constrained form on the exact 2D Gaussian mixture (docs/design.md §10).

Base: the exact 6-component circle mixture flow (``gmm-exact``), reward ``r = w·x`` with
``w = (1, 0.5)``.  Cases:

* ``two_right``: ``CVaR_right(0.5) + CVaR_right(0.9)``, alpha 3;
* ``two_sided``: ``CVaR_right(0.9) + CVaR_left(0.1)`` (both tails at once), alpha 2;
* ``constrained_left``: ``max E[r] - alpha KL`` s.t. ``CVaR_left(0.1) >= -0.2``, alpha 1.

For each: stage 1 on an offline batch of the pre-trained model (exact draws, M rewards), the exact
population target (truncated-normal pieces, :mod:`tfftmol.toy2d.spectral`), and, unless ``--quick``
or ``--no-finetune``, one stage-2 fine-tune toward the spectral pseudo-reward
(``run_tfft(..., transform=...)``) evaluated on SDE samples.

Columns: ``case, source`` (``stage1``: the stage-1 prediction on the offline batch; ``finetune``: the
fine-tuned model), ``objective`` (in words), ``own_risk`` (the objective's risk: the spectral risk,
or the mean for the constrained case), ``exact_risk`` (the exact population target's), ``pre_risk``
(the pre-trained population's), ``rel_error = |own - exact| / |exact|``, ``gap_cut = (own - pre) /
(exact - pre)``, ``constraint_value`` / ``constraint_target`` (constrained case), per-level CVaRs of the
model and the target, KL, the stage-1 thresholds and the population ones, wall time.

    python benchmarks/spectral.py [--quick] [--case two_sided] [--steps 2000] [--offline 20000] [--out benchmarks/results]
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))

from tfftmol.core.risk import cvar  # noqa: E402
from tfftmol.core.spectral import Level, solve_constrained, solve_spectral  # noqa: E402
from tfftmol.toy2d.gmm import circle_gmm  # noqa: E402
from tfftmol.toy2d.spectral import (population_constrained, population_spectral,  # noqa: E402
                                    spectral_target_stats)

W = np.array([1.0, 0.5])
CASES = {
    "two_right": {"levels": [("right", 0.5, 1.0), ("right", 0.9, 1.0)], "alpha": 3.0, "mean_weight": 0.0},
    "two_sided": {"levels": [("right", 0.9, 1.0), ("left", 0.1, 1.0)], "alpha": 2.0, "mean_weight": 0.0},
    "constrained_left": {"constraint": ("left", 0.1, -0.2), "alpha": 1.0},
}


def _label(levels, mean_weight=0.0):
    parts = ([f"{mean_weight:g}*mean"] if mean_weight else []) + [Level(*lv).label() for lv in levels]
    return " + ".join(parts)


def _finetune(base, transform, alpha, steps, seed, n_eval, log, batch=256, adjoint_integrator="euler"):
    from tfftmol.core.adjoint import AMConfig
    from tfftmol.core.estimators import estimate_kl
    from tfftmol.core.samplers import sample_sde
    from tfftmol.core.tfft import TFFTConfig, run_tfft
    from tfftmol.toy2d.flows import linear_reward

    cfg = TFFTConfig(method="tfft", alpha=alpha, seed=seed, offline_samples=256,
                     am=AMConfig(steps=steps, batch_size=batch, loss_time_steps=0, hidden=128, lr=1e-3,
                                 grad_clip=0.0, ema=0.99, seed=seed,
                                 adjoint_integrator=adjoint_integrator))
    t0 = time.perf_counter()
    res = run_tfft(base, linear_reward(tuple(W)), cfg, progress=False, log=log, transform=transform)
    model = res.model.eval()
    x = sample_sde(model, n_eval, 100, generator=torch.Generator().manual_seed(seed + 12345))
    r = (x.double() @ torch.as_tensor(W)).numpy()
    kl = estimate_kl(model, base, min(2000, n_eval), 100, seed=seed)
    return r, kl, time.perf_counter() - t0


def run(quick: bool, finetune: bool, steps: int, offline: int, n_eval: int, seed: int, log=print,
        cases=None, batch=256, adjoint_integrator="euler") -> pd.DataFrame:
    g64 = circle_gmm(dtype=torch.float64)
    base = circle_gmm()
    x_off = g64.sample_data(offline, generator=torch.Generator().manual_seed(seed)).numpy()
    r_off = x_off @ W
    rows = []
    for case, spec in CASES.items():
        if cases and case not in cases:
            continue
        alpha = spec["alpha"]
        t0 = time.perf_counter()
        if "constraint" in spec:
            tail, beta, c = spec["constraint"]
            con = solve_constrained(r_off, tail, beta, c, alpha, warn=False)
            s1 = con.spectral
            exact = population_constrained(g64, W, tail, beta, c, alpha)
            pre = spectral_target_stats(g64, W, [], [], alpha, 0.0, extra_levels=[(tail, beta, 1.0)])
            levels, mw = [(tail, beta, con.multiplier)], 1.0
            objective = f"mean s.t. CVaR_{tail}({beta:g}) >= {c:g}"
            own1, exact_risk, pre_risk = s1.predicted_mean, exact["mean"], pre["mean"]
            con1, target = con.constraint_value, c
            pop_etas = (exact["eta"],)
            exact_kl, exact_cvars = exact["kl"], (exact["constraint_value"],)
            meas = [(tail, beta)]
        else:
            levels, mw = spec["levels"], spec["mean_weight"]
            s1 = solve_spectral(r_off, levels, alpha, mw, warn=False)
            pop_etas, _ = population_spectral(g64, W, levels, alpha, mw)
            st = spectral_target_stats(g64, W, levels, pop_etas, alpha, mw)
            pre = spectral_target_stats(g64, W, [], [], alpha, 0.0, extra_levels=levels)
            objective = _label(levels, mw)
            own1, exact_risk = s1.predicted_risk, st["risk"]
            pre_risk = mw * pre["mean"] + sum(lv[2] * cv for lv, cv in zip(levels, pre["extra_cvars"]))
            con1 = target = float("nan")
            exact_kl, exact_cvars = st["kl"], st["cvars"]
            meas = [(lv[0], lv[1]) for lv in levels]
        t_stage1 = time.perf_counter() - t0

        def row(source, own, cvars, kl, con_value, wall, **extra):
            d = {"case": case, "source": source, "objective": objective, "own_risk": own, "exact_risk": exact_risk,
                 "pre_risk": pre_risk, "rel_error": abs(own - exact_risk) / abs(exact_risk),
                 "gap_cut": (own - pre_risk) / (exact_risk - pre_risk) if abs(exact_risk - pre_risk) > 1e-12
                 else float("nan"),
                 "constraint_value": con_value, "constraint_target": target, "alpha": alpha, "kl": kl,
                 "exact_kl": exact_kl, "etas_stage1": ";".join(f"{e:.6g}" for e in s1.etas),
                 "etas_population": ";".join(f"{e:.6g}" for e in pop_etas), "M": offline, "seed": seed, "wall_s": wall}
            for (tl, b), cv, ecv in zip(meas, cvars, exact_cvars):
                d[f"cvar_{tl}_{b:g}"] = cv
                d[f"exact_cvar_{tl}_{b:g}"] = ecv
            d.update(extra)
            return d

        cv1 = s1.predicted_cvars if "constraint" not in spec else (con1,)
        rows.append(row("stage1", own1, cv1, s1.predicted_kl, con1, t_stage1))
        log(f"{case}: stage 1 {own1:.5g} vs exact {exact_risk:.5g} (pre {pre_risk:.5g}); thresholds "
            f"{rows[-1]['etas_stage1']} vs {rows[-1]['etas_population']}")
        if finetune:
            r, kl, wall = _finetune(base, s1.pseudo_reward(), alpha, steps, seed, n_eval, lambda s: None, batch,
                                    adjoint_integrator)
            cvs = tuple(cvar(r, b, tl) for tl, b in meas)
            if "constraint" in spec:
                own, con_v = float(r.mean()), cvs[0]
            else:
                own = mw * float(r.mean()) + sum(lv[2] * cv for lv, cv in zip(levels, cvs))
                con_v = float("nan")
            rows.append(row("finetune", own, cvs, kl, con_v, wall, steps=steps, batch=batch, n_eval=n_eval,
                            adjoint_integrator=adjoint_integrator))
            log(f"{case}: fine-tuned {own:.5g} (gap cut {rows[-1]['gap_cut']:.3f}, rel error "
                f"{rows[-1]['rel_error']:.3f}), KL {kl:.3g} vs exact {exact_kl:.3g}, {wall:.0f} s")
    return pd.DataFrame(rows)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--quick", action="store_true", help="stage 1 and exact targets only, small batch (tests)")
    p.add_argument("--no-finetune", action="store_true")
    p.add_argument("--steps", type=int, default=2000)
    p.add_argument("--offline", type=int, default=20000)
    p.add_argument("--eval-samples", type=int, default=20000)
    p.add_argument("--batch", type=int, default=256)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--case", action="append", choices=sorted(CASES),
                   help="run only this case (repeatable); its rows replace the same case's rows in the csv")
    p.add_argument("--adjoint-integrator", default="euler", choices=["euler", "exponential"],
                   help="AMConfig.adjoint_integrator of the fine-tunes (docs/design.md §4.7)")
    p.add_argument("--out", default=str(HERE / "results"))
    a = p.parse_args(argv)
    torch.set_num_threads(1)
    if a.quick:
        a.offline = 4000
    df = run(a.quick, not (a.quick or a.no_finetune), a.steps, a.offline, a.eval_samples, a.seed, cases=a.case, batch=a.batch,
             adjoint_integrator=a.adjoint_integrator)
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    if a.case and (out / "spectral.csv").exists():  # one case at a time: keep the other cases' rows
        old = pd.read_csv(out / "spectral.csv")
        df = pd.concat([old[~old["case"].isin(a.case)], df], ignore_index=True)
        df["order"] = df["case"].map({c: i for i, c in enumerate(CASES)})
        df["src"] = df["source"].map({"stage1": 0, "finetune": 1})
        df = df.sort_values(["order", "src"], kind="stable").drop(columns=["order", "src"])
    df.to_csv(out / "spectral.csv", index=False)
    print(f"wrote {out / 'spectral.csv'}")
    return df


if __name__ == "__main__":
    main()
