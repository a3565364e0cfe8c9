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


def test_reward_sampler_draws_the_rewards_of_the_full_sampler():
    """sample_tilted_hinge_rewards(seed) is w·x of sample_tilted_hinge(seed): the same draws, without x's other part."""
    g = random_gmm(5)
    w = np.array([0.2, 0.15])
    for tail, beta in (("right", 0.9), ("left", 0.1)):
        eta, _ = population_threshold(g, w, 0.5, beta, tail)
        x = g.sample_tilted_hinge(5000, w, eta, 0.5, beta, tail, seed=3).double().numpy()
        r = g.sample_tilted_hinge_rewards(5000, w, eta, 0.5, beta, tail, seed=3)
        assert r.dtype == np.float64 and r.shape == (5000,)
        np.testing.assert_allclose(r, x @ w, atol=1e-5)


def test_estimator_floor_is_the_asymptotic_spread_of_the_cvar_estimate():
    """cvar_se against the large-sample law of the sample CVaR, sd = sqrt((Var(r|tail) + (1-k)(CVaR-VaR)^2) / (k n)),
    with its moments taken from 400k exact draws (k = tail mass)."""
    mod = load_benchmark("exact_family")
    n = 2000
    for case, alpha, tail in ((0, 1.0, "right"), (2, 0.5, "left")):
        beta = 0.9 if tail == "right" else 0.1
        k = 1 - beta if tail == "right" else beta
        g, w = mod.make_case(case)
        eta, _ = population_threshold(g, w, alpha, beta, tail)
        r = g.sample_tilted_hinge_rewards(400000, w, eta, alpha, beta, tail, seed=9)
        var = np.quantile(r, beta)
        t = r[r >= var] if tail == "right" else r[r <= var]
        sd = np.sqrt((t.var() + (1 - k) * (t.mean() - var) ** 2) / (k * n))
        floor = mod.estimator_floor(case, alpha, tail, n)
        assert floor["cvar_se"] == pytest.approx(sd, rel=0.25)  # 100 batches: the sd itself is known to ~7%


def test_estimator_floor_says_when_the_relative_target_cannot_be_seen():
    """Exact CVaR -0.0005 (case 4, left, alpha 0.5): 8% of it is far below the evaluation's own noise, so even
    exact draws of p* meet it rarely; a target away from zero (case 0, right, alpha 1) is met every time."""
    mod = load_benchmark("exact_family")
    g, w = mod.make_case(4)
    eta, _ = population_threshold(g, w, 0.5, 0.1, "left")
    assert abs(hinge_target_stats(g, w, eta, 0.5, 0.1, "left")["cvar"]) < 1e-3
    near_zero = mod.estimator_floor(4, 0.5, "left", 20000, reps=40)
    far = mod.estimator_floor(0, 1.0, "right", 20000, reps=40)
    assert near_zero["exact_within_8pct"] < 0.2
    assert far["exact_within_8pct"] == 1.0
    assert 0 < far["cvar_se"] < 0.02 and 0 < near_zero["cvar_se"] < 0.02


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
                "kl_exact", "flagged", "sampler", "cvar_se", "exact_within_8pct"]:
        assert col in t.columns, col
    assert len(t) == len(df) == 2 and set(t["tail"]) == {"right", "left"}
    assert (t.sampler == "sde").all()
    assert np.isfinite(t[["cvar_ft", "cvar_exact", "kl_exact", "cvar_se", "exact_within_8pct"]].to_numpy()).all()
    assert (t.cvar_se > 0).all() and t.exact_within_8pct.between(0, 1).all()
    md = (tmp_path / "exact_family.md").read_text()
    assert "median |rel_error|" in md and "mass in [0.07, 0.13]" in md
    assert "runs whose exact p* meets 8% in < 95% of evaluations" in md
    # r = w·x has a gradient: the default path uses it
    assert (t.stage2 == "gradient").all() and (t.value_iters == 0).all() and "values only" not in md

    # --compare reads several CSVs: the run against its own rows, split by tail, matches both rows and finds
    # no run smaller than itself
    t[t["tail"] == "right"].to_csv(tmp_path / "right.csv", index=False)
    t[t["tail"] == "left"].to_csv(tmp_path / "left.csv", index=False)
    mod.main(["--report-only", str(tmp_path / "exact_family.csv"), "--compare", str(tmp_path / "right.csv"),
              str(tmp_path / "left.csv"), "--out", str(tmp_path / "report")])
    md = (tmp_path / "report" / "exact_family.md").read_text()
    assert "## Against right.csv, left.csv" in md
    last = [ln for ln in md.splitlines() if ln.startswith("| all | all |")][-1]
    assert last.startswith("| all | all | 2 |") and last.rstrip().endswith("| 0 |")


def test_quick_mode_values_only(tmp_path):
    """--stage2 value: the trainer gets the reward's values only, and the rows and the report say so."""
    mod = load_benchmark("exact_family")
    mod.main(["--quick", "--quiet", "--tails", "right", "--stage2", "value", "--value-iters", "2", "--out",
              str(tmp_path)])
    t = pd.read_csv(tmp_path / "exact_family.csv")
    assert list(t.stage2) == ["value"] and list(t.value_iters) == [2]
    assert np.isfinite(t[["cvar_ft", "kl_ft"]].to_numpy()).all()
    assert "Stage 2 from reward values only (" in (md := (tmp_path / "exact_family.md").read_text())
    assert "; 2 value-model update(s) per step" in md
    assert mod.case_config(0, 1.0, "right", 10, 100, 20, "auto", stage2="value", value_iters=3).am.value.iters == 3
