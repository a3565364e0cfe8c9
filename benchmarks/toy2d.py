"""2D benchmark on the exact Gaussian-mixture flow (docs/design.md §7 ground truth).

For ``alpha`` in {1, 0.5} (0.5 is the starved case: ~1e-4 of the pre-trained mass
above ``eta*``) and reward ``r = x_1``, runs pre-trained, expected-FT, TFFT-right
(beta=0.9) and TFFT-left (beta=0.1) at the same step budget, and compares each
with its exact target.  Also measures

* the linear-reward Adjoint Matching fit (the expected-FT row): mean error and
  total variation of the component weights against the closed-form tilted mixture;
* the dead-hinge continuation choices in the starved case (none / alpha / beta);
* the threshold solve at 10^6 rewards against ``scipy.optimize.minimize_scalar(method="bounded")``.

Writes ``benchmarks/results/toy2d.csv`` / ``.md`` (and ``toy2d_continuation.*``,
``toy2d.png``).  ``--quick`` runs a tiny budget (used by the tests).

    python benchmarks/toy2d.py [--steps 2000] [--quick] [--out benchmarks/results]
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import pandas as pd
import torch

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from tfftmol.core.adjoint import AMConfig  # noqa: E402
from tfftmol.core.estimators import estimate_kl  # noqa: E402
from tfftmol.core.risk import cvar  # noqa: E402
from tfftmol.core.samplers import sample_sde  # noqa: E402
from tfftmol.core.tfft import TFFTConfig  # noqa: E402
from tfftmol.core.tracking import ThresholdGuardError  # noqa: E402
from tfftmol.toy2d.experiment import Toy2DConfig, run_toy2d  # noqa: E402
from tfftmol.toy2d.gmm import circle_gmm, population_threshold  # noqa: E402
from tfftmol.tables import markdown_table  # noqa: E402

METHODS = list(Toy2DConfig().methods)  # pretrained, expected, tfft-right, tfft-left


def _weights_tv(x, gmm, target):
    k = target.assign(x)
    emp = torch.bincount(k, minlength=len(target.weights)).double() / len(k)
    return float(0.5 * (emp - target.weights.double()).abs().sum())


def run_main(steps, offline, eval_samples, alphas, seed, out, quiet, refine=20000, methods=None):
    g = circle_gmm()
    w = [1.0, 0.0]
    rows = []
    for alpha in alphas:
        cfg = Toy2DConfig(alpha=alpha, methods=list(methods or METHODS), eval_samples=eval_samples, eval_steps=100,
                          kl_samples=min(2000, eval_samples),
                          seed=seed,
                          tfft=TFFTConfig(offline_samples=offline, bootstrap=50, refine_samples=refine,
                                          am=AMConfig(steps=steps, batch_size=256, loss_time_steps=0, hidden=128,
                                                      lr=1e-3, grad_clip=0.0, ema=0.99)))
        table, extras = run_toy2d(cfg, out_dir=None, progress=not quiet, log=(lambda s: None) if quiet else print)
        table.insert(0, "alpha", alpha)
        tgt = g.tilted_linear(torch.tensor(w), 1.0 / alpha)
        for i, r in table.iterrows():
            m = r["method"]
            if m == "expected":
                x = extras["samples"][m]
                table.loc[i, "mean_error"] = float((x.mean(0) - tgt.mean()).norm())
                table.loc[i, "weight_tv"] = _weights_tv(x, g, tgt)
            if m.startswith("tfft"):
                tail = "right" if m == "tfft-right" else "left"
                beta = cfg.beta_right if tail == "right" else cfg.beta_left
                eta_pop, _ = population_threshold(g, w, alpha, beta, tail)
                r1 = extras["rewards"][m]
                table.loc[i, "eta_population"] = eta_pop
                table.loc[i, "mass_beyond_eta_population"] = float((r1 > eta_pop).mean() if tail == "right" else (r1 < eta_pop).mean())
                xt = g.sample_tilted_hinge(eval_samples, w, eta_pop, alpha, beta, tail, seed=seed)
                rt = xt[:, 0].double().numpy()
                from tfftmol.core.risk import cvar
                own = cvar(rt, beta, tail)
                table.loc[i, "exact_target_own_cvar"] = own
                pre = table.loc[table.method == "pretrained", f"cvar_{tail}_{beta:g}"].iloc[0]
                fin = r[f"cvar_{tail}_{beta:g}"]
                table.loc[i, "own_cvar_rel_error"] = abs(fin - own) / abs(own)
                table.loc[i, "gap_cut_vs_exact"] = (fin - pre) / (own - pre)
                pre_mass = float((extras["rewards"]["pretrained"] > eta_pop).mean() if tail == "right"
                                 else (extras["rewards"]["pretrained"] < eta_pop).mean())
                table.loc[i, "pretrained_mass_beyond_eta_population"] = pre_mass
        rows.append(table)
        if out is not None and alpha == alphas[-1] and methods is None:
            from tfftmol.toy2d.experiment import plot_toy2d
            plot_toy2d(extras, cfg, Path(out) / "toy2d.png")
    return pd.concat(rows, ignore_index=True)


def run_continuation(steps, offline, eval_samples, seed, quiet, refine=20000):
    """The starved case (right tail, beta=0.9, alpha=0.5) under each continuation setting."""
    g = circle_gmm()
    rows = []
    eta_pop, _ = population_threshold(g, [1.0, 0.0], 0.5, 0.9, "right")
    for cont, rmode in [("none", "never"), ("alpha", "auto"), ("beta", "auto"), ("adaptive", "never"), ("adaptive", "auto")]:
        cfg = Toy2DConfig(alpha=0.5, methods=["pretrained", "tfft-right"], eval_samples=eval_samples, eval_steps=100,
                          kl_samples=min(2000, eval_samples), seed=seed,
                          tfft=TFFTConfig(offline_samples=offline, continuation=cont, refine_threshold=rmode, bootstrap=0, refine_samples=refine,
                                          am=AMConfig(steps=steps, batch_size=256, loss_time_steps=0, hidden=128,
                                                      lr=1e-3, grad_clip=0.0, ema=0.99)))
        t0 = time.perf_counter()
        try:
            table, extras = run_toy2d(cfg, out_dir=None, progress=not quiet, log=(lambda s: None) if quiet else print)
        except ThresholdGuardError as err:  # stopped by a guard: evaluate the model where it stopped
            model = err.trainer.final_model().eval()
            # the evaluation noise run_toy2d draws for every method (its generator is seeded with seed + 12345)
            x = sample_sde(model, eval_samples, 100, generator=torch.Generator().manual_seed(seed + 12345))
            r1 = x[:, 0].double().numpy()
            rows.append({"continuation": cont, "refine_threshold": rmode, "eta_used": err.quantities["eta"],
                         "eta_population": eta_pop, "cvar_right_0.9": cvar(r1, 0.9, "right"),
                         "mass_beyond_eta_population": float((r1 > eta_pop).mean()),
                         "kl": estimate_kl(model, g, min(2000, eval_samples), 100, seed=seed),
                         "wall_s": time.perf_counter() - t0, "stages": None, "stopped": True})
            continue
        r = table[table.method == "tfft-right"].iloc[0]
        r1 = extras["rewards"]["tfft-right"]
        rows.append({"continuation": cont, "refine_threshold": rmode, "eta_used": r["eta"], "eta_population": eta_pop,
                     "cvar_right_0.9": r["cvar_right_0.9"], "mass_beyond_eta_population": float((r1 > eta_pop).mean()),
                     "kl": r["kl"], "wall_s": r["wall_s"], "stages": r["stages"], "stopped": False})
    return pd.DataFrame(rows)


def merge_rows(old: pd.DataFrame, new: pd.DataFrame) -> pd.DataFrame:
    """``old`` with its ``(alpha, method)`` rows replaced by those of ``new`` (the pre-trained row of an
    alpha is the same model and noise, so the new one replaces it too); rows sorted as the benchmark writes them.

    A re-run row keeps no ``time_ratio_vs_expected``: wall times of separate runs (another load, another
    day) do not compare, so a time ratio is only ever taken within one run.
    """
    key = list(zip(new["alpha"], new["method"]))
    keep = old[[k not in key for k in zip(old["alpha"], old["method"])]]
    df = pd.concat([keep, new], ignore_index=True)
    order = {m: i for i, m in enumerate(METHODS)}
    df["_a"] = [-a for a in df["alpha"]]
    df["_m"] = [order.get(m, len(order)) for m in df["method"]]
    return df.sort_values(["_a", "_m"], kind="stable").drop(columns=["_a", "_m"]).reset_index(drop=True)


def run_threshold_speed(quick):
    import threshold_speed
    res = threshold_speed.run(n=10 ** 4 if quick else 10 ** 6, repeats=1 if quick else 5)
    return pd.DataFrame(res["rows"])


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--steps", type=int, default=2000)
    p.add_argument("--offline", type=int, default=1000000)
    p.add_argument("--eval-samples", type=int, default=50000)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--refine", type=int, default=20000, help="samples for the threshold refinement")
    p.add_argument("--quick", action="store_true")
    p.add_argument("--skip-continuation", action="store_true")
    p.add_argument("--only-continuation", action="store_true",
                   help="only the dead-hinge continuation ablation (writes toy2d_continuation.csv)")
    p.add_argument("--alphas", type=float, nargs="+", default=[1.0, 0.5])
    p.add_argument("--methods", nargs="+", choices=METHODS[1:], default=None,
                   help="run only these methods (with the pre-trained row); with --merge their rows replace "
                        "the same (alpha, method) rows of OUT/toy2d.csv, the others are kept")
    p.add_argument("--merge", action="store_true",
                   help="merge into the existing OUT/toy2d.csv (and keep OUT/toy2d_continuation.csv in the "
                        "markdown when --skip-continuation)")
    p.add_argument("--out", default=str(HERE / "results"))
    p.add_argument("--quiet", action="store_true")
    a = p.parse_args(argv)
    torch.set_num_threads(1)
    if a.quick:
        a.steps, a.offline, a.eval_samples, a.refine = 10, 3000, 1000, 1000
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    if a.only_continuation:
        ct = run_continuation(a.steps, a.offline, a.eval_samples, a.seed, a.quiet, a.refine)
        ct.to_csv(out / "toy2d_continuation.csv", index=False)
        print(ct.to_string(index=False))
        return ct
    methods = None if a.methods is None else ["pretrained"] + list(a.methods)
    main_t = run_main(a.steps, a.offline, a.eval_samples, a.alphas, a.seed, out, a.quiet, a.refine, methods)
    if a.merge and (out / "toy2d.csv").exists():
        main_t = merge_rows(pd.read_csv(out / "toy2d.csv"), main_t)
    main_t.to_csv(out / "toy2d.csv", index=False)
    md = [f"# toy2d benchmark\n\nExact 6-component circle GMM flow, r(x) = x_1, {a.steps} Adjoint Matching steps "
          f"(batch 256, 50 SDE steps, all time steps in the loss, Adam 1e-3 cosine, EMA 0.99), offline batch "
          f"M = {a.offline} ({TFFTConfig().offline_sampler} sampler, 50 steps), evaluation on {a.eval_samples} SDE samples at 100 steps.\n"]
    keep = [c for c in ["alpha", "method", "mean", "cvar_right_0.9", "cvar_left_0.1", "kl", "wall_s", "offline_s", "refine_s", "stage2_s", "time_ratio_vs_expected", "stage2_time_ratio_vs_expected",
                        "eta", "eta_population", "mass_beyond_eta", "mass_beyond_eta_population",
                        "pretrained_mass_beyond_eta_population", "target_mean", "target_cvar_right_0.9",
                        "target_cvar_left_0.1", "exact_target_own_cvar", "own_cvar_rel_error", "gap_cut_vs_exact",
                        "mean_error", "weight_tv", "stages"] if c in main_t.columns]
    md.append(markdown_table(main_t[keep]))
    print(main_t[keep].to_string(index=False))
    ct = None
    if not a.skip_continuation:
        ct = run_continuation(a.steps, a.offline, a.eval_samples, a.seed, a.quiet, a.refine)
        ct.to_csv(out / "toy2d_continuation.csv", index=False)
    elif a.merge and (out / "toy2d_continuation.csv").exists():
        ct = pd.read_csv(out / "toy2d_continuation.csv")
    if ct is not None:
        md.append("\n## Dead-hinge continuation (right tail, beta=0.9, alpha=0.5)\n")
        md.append(markdown_table(ct))
        print(ct.to_string(index=False))
    ts = run_threshold_speed(a.quick)
    ts.to_csv(out / "toy2d_threshold_speed.csv", index=False)
    md.append("\n## Threshold solve: exact sort-based solver vs scipy bounded search\n")
    md.append(markdown_table(ts))
    print(ts.to_string(index=False))
    md.append(f"\nTotal benchmark time {time.perf_counter() - t0:.0f} s.\n")
    (out / "toy2d.md").write_text("\n".join(md))
    print(f"wrote {out / 'toy2d.csv'} and {out / 'toy2d.md'}")
    return main_t


if __name__ == "__main__":
    main()
