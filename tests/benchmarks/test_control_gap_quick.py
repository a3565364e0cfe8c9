"""benchmarks/control_gap.py: the projections onto the exact optimal control, and its --quick mode."""
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from tfftmol.toy2d.gmm import population_threshold, random_gmm
from helpers.bench import load_benchmark

ROOT = Path(__file__).resolve().parents[2]


def _load():
    sys.path.insert(0, str(ROOT / "benchmarks"))
    mod = load_benchmark("control_gap")
    return mod


def test_the_optimal_control_projects_to_one_and_the_base_to_zero():
    cg = _load()
    g = random_gmm(0)
    u = np.random.default_rng(1000).normal(size=2)
    w = 0.25 * u / np.linalg.norm(u)
    eta, _ = population_threshold(g, w, 1.0, 0.9, "right")
    opt = cg.OptimalFlow(g, w, eta, 1.0, 0.9, "right")
    d, s = cg.control_slopes(opt, g, w, eta, 1.0, 0.9, "right", time_steps=40, n=3000, seed=0)
    assert np.allclose(d["slope_model"], 1.0, atol=1e-5)
    # the Adjoint Matching target under the optimal policy is the optimal control (up to sampling and O(h))
    late = d[d["t"] >= 0.3]
    assert late["slope_target"].mean() == pytest.approx(1.0, abs=0.1)
    assert s["kl_model_on_paths"] == pytest.approx(s["kl_u_star_on_paths"], rel=1e-5)
    d0, s0 = cg.control_slopes(g, g, w, eta, 1.0, 0.9, "right", time_steps=20, n=500, seed=0)
    assert np.allclose(d0["slope_model"], 0.0) and s0["kl_model_on_paths"] == 0.0
    # under the base policy the on-policy target falls short of the optimum; the path weights restore it
    assert d0["slope_target"].mean() < 0.8 * d0["slope_weighted"].mean()


def test_quick_mode_writes_the_tables(tmp_path):
    cg = _load()
    df, sm = cg.main(["--quick", "--out", str(tmp_path)])
    got = pd.read_csv(tmp_path / "control_gap_quick.csv")
    assert {"case", "alpha", "tail", "t", "slope_model", "slope_target", "slope_weighted"} <= set(got.columns)
    assert len(got) == 9 and got["t"].is_monotonic_increasing
    assert (tmp_path / "control_gap_quick.md").read_text().startswith("# The learned control")
    bias = pd.read_csv(tmp_path / "control_gap_quick_bias.csv")
    assert list(bias["time_steps"]) == [10] and 0.3 < bias["target_slope_min"].iloc[0] < 1.1
    assert np.isfinite(sm[["rel_error", "mean_slope_model"]].to_numpy()).all()
