"""Speed and agreement of the exact stage-1 threshold solver against a generic scalar search.

For each case (tail, beta, alpha) on ``n`` rewards of a 6-component Gaussian
mixture, time

* ``tfftmol.core.threshold.solve_threshold`` (sort + closed form / kinks, with
  all diagnostics), and
* ``scipy.optimize.minimize_scalar(method="bounded")`` on ``F`` (right) or
  ``-G`` (left) over ``[min r, max r]``, each evaluation ``O(n)``,

report the median wall time of ``repeats`` runs and how far the two answers
are apart (``eta`` and the optimal objective value; the exact value can only be
better).  Writes ``threshold_speed.csv`` and ``threshold_speed.md``.

Usage::

    python benchmarks/threshold_speed.py             # n = 10^6, 5 repeats
    python benchmarks/threshold_speed.py --quick     # n = 10^4, 1 repeat
"""
from __future__ import annotations

import argparse
import csv
import statistics
import time
import warnings
from pathlib import Path
from typing import Optional, Sequence

import numpy as np
from scipy.optimize import minimize_scalar
from scipy.special import logsumexp

from tfftmol.core.threshold import TfftWarning, solve_eta, solve_threshold

DEFAULT_CASES = (("right", 0.9, 1.0), ("left", 0.1, 1.0), ("right", 0.95, 0.1), ("left", 0.05, 0.1))
COLUMNS = ["n", "tail", "beta", "alpha", "exact_s", "exact_with_diagnostics_s", "scipy_s", "speedup",
           "speedup_with_diagnostics", "eta_exact", "eta_scipy",
           "eta_abs_diff", "value_exact", "value_scipy", "value_rel_diff", "scipy_nfev"]


def gmm_rewards(n: int, seed: int = 0) -> np.ndarray:
    """``n`` rewards from a 6-component Gaussian mixture (separated modes, unequal widths), float64."""
    rng = np.random.default_rng(seed)
    means = np.array([-3.0, -1.5, 0.0, 1.0, 2.5, 4.0])
    stds = np.array([0.3, 0.5, 0.2, 0.4, 0.3, 0.1])
    k = rng.choice(6, size=n, p=[0.25, 0.25, 0.2, 0.15, 0.1, 0.05])
    return means[k] + stds[k] * rng.normal(size=n)


def _scipy_bounded(r: np.ndarray, tail: str, beta: float, alpha: float):
    """Brent's bounded search on F (right) or -G (left) over [min r, max r]; one O(n) pass per evaluation."""
    log_n = np.log(r.size)
    if tail == "right":
        c = 1.0 / (alpha * (1.0 - beta))

        def f(eta):
            return eta + alpha * (logsumexp(c * np.maximum(r - eta, 0.0)) - log_n)
    else:
        c = 1.0 / (alpha * beta)

        def f(eta):
            return -(eta + alpha * (logsumexp(-c * np.maximum(eta - r, 0.0)) - log_n))
    lo, hi = float(r.min()), float(r.max())
    res = minimize_scalar(f, bounds=(lo, hi), method="bounded",
                          options={"xatol": 1e-12 * max(1.0, hi - lo), "maxiter": 500})
    value = float(res.fun) if tail == "right" else -float(res.fun)
    return float(res.x), value, int(res.nfev)


def _median_time(fn, repeats: int):
    times, out = [], None
    for _ in range(repeats):
        t0 = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times), out


def run(n: int = 1_000_000, repeats: int = 5, seed: int = 0, rewards: Optional[np.ndarray] = None,
        cases: Sequence[tuple[str, float, float]] = DEFAULT_CASES) -> dict:
    """Time both solvers on each ``(tail, beta, alpha)`` case.

    Args:
        n: number of rewards (ignored when ``rewards`` is given).
        repeats: timed runs per solver; the median is reported.
        seed: seed of the default reward sample.
        rewards: optional rewards of shape ``(n,)`` to use instead of the mixture.
        cases: ``(tail, beta, alpha)`` triples.

    Returns:
        ``{"n", "repeats", "rows"}``; ``rows`` is a list of dicts with the keys in ``COLUMNS``.
    """
    r = gmm_rewards(n, seed) if rewards is None else np.asarray(rewards, dtype=np.float64)
    rows = []
    for tail, beta, alpha in cases:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", TfftWarning)  # starved tails are expected in some cases
            t_full, res = _median_time(lambda: solve_threshold(r, beta, alpha, tail), repeats)
            t_exact, (eta_only, _) = _median_time(lambda: solve_eta(r, beta, alpha, tail), repeats)
        assert eta_only == res.eta
        t_scipy, (eta_s, value_s, nfev) = _median_time(lambda: _scipy_bounded(r, tail, beta, alpha), repeats)
        rows.append({
            "n": int(r.size), "tail": tail, "beta": beta, "alpha": alpha,
            "exact_s": t_exact, "exact_with_diagnostics_s": t_full, "scipy_s": t_scipy,
            "speedup": t_scipy / t_exact, "speedup_with_diagnostics": t_scipy / t_full,
            "eta_exact": res.eta, "eta_scipy": eta_s, "eta_abs_diff": abs(res.eta - eta_s),
            "value_exact": res.value, "value_scipy": value_s,
            "value_rel_diff": abs(res.value - value_s) / max(1.0, abs(res.value)),
            "scipy_nfev": nfev,
        })
    return {"n": int(r.size), "repeats": repeats, "rows": rows}


def _markdown(result: dict) -> str:
    head = ("| tail | beta | alpha | exact (s) | exact + diagnostics (s) | scipy bounded (s) | speed-up | "
            "speed-up with diagnostics | eta exact | abs. eta diff | rel. value diff | scipy evals |")
    lines = [f"Threshold solve on n = {result['n']:,} rewards, median of {result['repeats']} run(s).", "",
             head, "|" + "---|" * (head.count("|") - 1)]
    for row in result["rows"]:
        lines.append(f"| {row['tail']} | {row['beta']:g} | {row['alpha']:g} | {row['exact_s']:.4f} | "
                     f"{row['exact_with_diagnostics_s']:.4f} | {row['scipy_s']:.4f} | {row['speedup']:.1f}x | "
                     f"{row['speedup_with_diagnostics']:.1f}x | {row['eta_exact']:.6g} | "
                     f"{row['eta_abs_diff']:.2e} | {row['value_rel_diff']:.2e} | {row['scipy_nfev']} |")
    return "\n".join(lines) + "\n"


def main(argv: Optional[Sequence[str]] = None) -> dict:
    """Command-line entry point; returns the :func:`run` result."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--n", type=int, default=1_000_000, help="number of rewards (default 10^6)")
    p.add_argument("--repeats", type=int, default=5, help="timed runs per solver (median reported)")
    p.add_argument("--quick", action="store_true", help="10^4 rewards, 1 repeat")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", type=Path, default=Path(__file__).resolve().parent / "results",
                   help="output directory for threshold_speed.csv and .md")
    args = p.parse_args(argv)
    n, repeats = (10_000, 1) if args.quick else (args.n, args.repeats)

    result = run(n, repeats, seed=args.seed)
    args.out.mkdir(parents=True, exist_ok=True)
    with open(args.out / "threshold_speed.csv", "w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=COLUMNS)
        writer.writeheader()
        writer.writerows(result["rows"])
    md = _markdown(result)
    (args.out / "threshold_speed.md").write_text(md)
    print(md)
    return result


if __name__ == "__main__":
    main()
