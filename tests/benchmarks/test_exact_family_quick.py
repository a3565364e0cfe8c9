"""benchmarks/exact_family.py --quick, and the exact statistics of the hinge-tilted GMM target it relies on."""

import numpy as np
import pandas as pd
import pytest

from tfftmol.core.risk import cvar
from tfftmol.toy2d.gmm import hinge_target_stats, population_threshold, random_gmm
from helpers.bench import load_benchmark


@pytest.mark.parametrize("tail,beta,alpha", [("right", 0.9, 0.5), ("left", 0.1, 0.5), ("right", 0.9, 2.0)])
def test_exact_target_statistics_match_exact_samples(tail, beta, alpha):
    """KL, own-tail CVaR and mass of p* from hinge_target_stats against 400k exact draws; CVaR - alpha KL = F(eta*)."""
    g = random_gmm(3)
    w = np.array([0.3, -0.4])
    eta, value = population_threshold(g, w, alpha, beta, tail)
    s = hinge_target_stats(g, w, eta, alpha, beta, tail)
    r = g.sample_tilted_hinge(400000, w, eta, alpha, beta, tail, seed=1).double().numpy() @ w
    c = 1 / (alpha * (1 - beta)) if tail == "right" else 1 / (alpha * beta)
    pseudo = c * np.maximum(r - eta, 0) if tail == "right" else -c * np.maximum(eta - r, 0)
    assert s["cvar"] == pytest.approx(cvar(r, beta, tail), rel=5e-3)
    assert s["kl"] == pytest.approx(pseudo.mean() - s["log_z"], rel=2e-2, abs=3e-3)  # Monte Carlo error ~1%
    assert s["mass_beyond"] == pytest.approx(1 - beta if tail == "right" else beta, abs=1e-6)
    assert s["cvar"] - alpha * s["kl"] == pytest.approx(value, abs=1e-6)  # the optimal value of stage 1


def test_random_gmm_is_seeded_and_in_range():
    a, b = random_gmm(7), random_gmm(7)
    assert np.array_equal(a.means.numpy(), b.means.numpy())
    for k in range(20):
        g = random_gmm(k)
        assert 2 <= len(g.weights) <= 6
        assert float(g.stds.min()) >= 0.2 and float(g.stds.max()) <= 1.0


def test_quick_mode_writes_the_table(tmp_path):
    mod = load_benchmark("exact_family")
    df = mod.main(["--quick", "--quiet", "--out", str(tmp_path)])
    t = pd.read_csv(tmp_path / "exact_family.csv")
    for col in ["case", "alpha", "tail", "cvar_ft", "cvar_exact", "rel_error", "mass_beyond", "mass_target", "kl_ft",
                "kl_exact", "flagged", "sampler"]:
        assert col in t.columns, col
    assert len(t) == len(df) == 2 and set(t["tail"]) == {"right", "left"}
    assert (t.sampler == "sde").all()
    assert np.isfinite(t[["cvar_ft", "cvar_exact", "kl_exact"]].to_numpy()).all()
    md = (tmp_path / "exact_family.md").read_text()
    assert "median |rel_error|" in md and "mass in [0.07, 0.13]" in md
