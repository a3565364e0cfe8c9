"""``benchmarks/information_ceiling.py --quick``: both frontiers and the measured runs beside them."""
from __future__ import annotations


import numpy as np
import pandas as pd
import pytest

from helpers.bench import load_benchmark


def _module():
    mod = load_benchmark("information_ceiling")
    return mod


def test_quick_mode_writes_both_frontiers_and_sets_a_run_beside_them(tmp_path):
    mod = _module()
    runs = tmp_path / "runs.csv"  # one measured TFFT run of the quick target (two seeds) and an expected-FT row
    pd.DataFrame([
        {"target": "zinc_qed_right", "method": "tfft", "alpha": 0.1, "seed": 0, "kl": 0.05, "cvar_own": 0.90,
         "cvar_pretrained": 0.88, "realisation": 0.4},
        {"target": "zinc_qed_right", "method": "tfft", "alpha": 0.1, "seed": 1, "kl": 0.07, "cvar_own": 0.89,
         "cvar_pretrained": 0.88, "realisation": 0.2},
        {"target": "zinc_qed_right", "method": "expected", "alpha": 0.1, "seed": 0, "kl": 0.3, "cvar_own": 0.95,
         "cvar_pretrained": 0.88, "realisation": 0.9}]).to_csv(runs, index=False)
    out = mod.main(["--quick", "--out", str(tmp_path), "--runs", str(runs)])
    fr = pd.read_csv(tmp_path / "information_ceiling_quick.csv")
    assert len(fr) == len(mod.FACTORS) and set(fr["target"]) == {"zinc_qed_right"}
    assert np.allclose(fr["alpha"], 0.1 * mod.FACTORS)
    # the restricted optimum never has a larger objective than stage 1 on the same samples
    assert ((fr["cvar_ceiling"] - fr["alpha"] * fr["kl_ceiling"])
            <= (fr["cvar_full"] - fr["alpha"] * fr["kl_full"]) + 1e-12).all()
    assert (fr["kl_full"] > 0).all() and (fr["gain_full"] > 0).all()
    m = pd.read_csv(tmp_path / "information_ceiling_quick_runs.csv")
    assert len(m) == 1  # expected-FT rows are not set beside
    row = m.iloc[0]
    assert row["seeds"] == 2 and row["gain"] == pytest.approx(0.015) and row["kl"] == pytest.approx(0.06)
    assert row["realisation"] == pytest.approx(0.3)
    one = fr[np.isclose(fr["alpha_factor"], 1.0)].iloc[0]
    assert row["gain_full_at_alpha"] == pytest.approx(one["gain_full"], rel=1e-9)
    assert row["gain_ceiling_at_alpha"] == pytest.approx(one["gain_ceiling"], rel=1e-9, abs=1e-12)
    # at the run's KL: the frontier's best CVaR at KL <= 0.06, linear in KL from the pre-trained point
    k = np.r_[0.0, fr["kl_ceiling"]]
    c = np.r_[fr["pre_cvar"].iloc[0], fr["cvar_ceiling"]]
    o = np.argsort(k, kind="stable")
    expect = np.interp(0.06, k[o], np.maximum.accumulate(c[o])) - fr["pre_cvar"].iloc[0]
    assert row["gain_ceiling_at_kl"] == pytest.approx(expect, rel=1e-9, abs=1e-12)
    assert (tmp_path / "information_ceiling_quick.md").read_text().startswith("# Information ceiling")
    assert out["info"]["spearman"].between(-1, 1).all()
