"""benchmarks/tail_frontier.py: --quick end to end (CSV, curve, md, png, --append, --replot) and the matched-KL rule."""

import json

import numpy as np
import pandas as pd
import pytest

from helpers.bench import load_benchmark


@pytest.fixture(scope="module")
def tf():
    mod = load_benchmark("tail_frontier")
    return mod


def test_plan_runs_the_config_alpha_first_and_its_extra_seeds_last(tf):
    p = tf.plan(["qed_right"], [0.3, 1.0, 3.0], seeds=2, config_seeds=3)
    assert len(p) == 2 * (2 + 3 + 2)
    assert p[0] == ("qed_right", "tfft", 1.0, 0) and p[1] == ("qed_right", "expected", 1.0, 0)
    assert p[-2:] == [("qed_right", "tfft", 1.0, 2), ("qed_right", "expected", 1.0, 2)]
    assert sum(1 for t, m, f, s in p if f == 1.0 and m == "tfft") == 3


def test_plan_from_a_first_seed_keeps_only_the_later_seeds(tf):
    full = tf.plan(["qed_right"], [0.3, 1.0, 3.0], seeds=2, config_seeds=3)
    later = tf.plan(["qed_right"], [0.3, 1.0, 3.0], seeds=2, config_seeds=3, first_seed=1)
    assert later == [j for j in full if j[3] >= 1]
    assert len(later) == 2 * (3 + 1)
    assert tf.plan(["qed_right"], [0.3, 1.0, 3.0], seeds=1, config_seeds=3, first_seed=2) == [
        ("qed_right", "tfft", 1.0, 2), ("qed_right", "expected", 1.0, 2)]


def test_matched_kl_interpolates_along_expected_frontier(tf):
    rows = []
    for seed, noise in ((0, -0.01), (1, 0.01)):
        # expected-FT: KL 1 -> CVaR 0.6, KL 3 -> CVaR 0.7 (mean over seeds); pre-trained 0.5 at KL 0
        rows += [dict(target="t", tail="right", method="expected", alpha=a, alpha_factor=f, seed=seed, kl=kl,
                      cvar_own=c + noise, cvar_pretrained=0.5, train_seconds=10.0)
                 for a, f, kl, c in ((0.1, 1.0, 1.0, 0.6), (0.03, 0.3, 3.0, 0.7))]
        rows += [dict(target="t", tail="right", method="tfft", alpha=a, alpha_factor=f, seed=seed, kl=kl,
                      cvar_own=c + noise, cvar_pretrained=0.5, train_seconds=10.5)
                 for a, f, kl, c in ((0.1, 1.0, 2.0, 0.72), (0.3, 3.0, 0.5, 0.55), (0.03, 0.3, 5.0, 0.9),
                                     (0.01, 0.1, 6.0, 0.62))]
    df = pd.DataFrame(rows)
    df["cvar_predicted"], df["cvar_mean_tilt"] = 0.8, 0.74 + 0.01 * df.seed  # exact optima: margins 0.06, 0.05
    m = tf.matched(df).set_index("alpha_factor")
    assert m.loc[1.0, "tail_margin"] == pytest.approx(0.055)
    assert np.isnan(tf.matched(df.drop(columns="cvar_mean_tilt")).tail_margin).all()
    df.loc[df.method == "tfft", "cvar_mean_tilt"] = np.nan  # TFFT's rows unfilled: expected-FT's at that alpha
    df.loc[(df.method == "expected") & (df.alpha == 0.1), "cvar_mean_tilt"] = 0.77
    m = tf.matched(df).set_index("alpha_factor")
    assert m.loc[1.0, "tail_margin"] == pytest.approx(0.03) and np.isnan(m.loc[3.0, "tail_margin"])
    assert m.loc[1.0, "cvar_expected_at_kl"] == pytest.approx(0.65)  # halfway between KL 1 and 3
    assert m.loc[3.0, "cvar_expected_at_kl"] == pytest.approx(0.55)  # between the pre-trained point and KL 1
    assert m.loc[1.0, "verdict"] == "TFFT above" and m.loc[3.0, "verdict"] == "within spread"
    assert np.isnan(m.loc[0.3, "cvar_expected_at_kl"]) and "outside" in m.loc[0.3, "verdict"]
    # beyond expected-FT's KL range: below its best point at less KL (0.7 at KL 3) by more than the spread
    assert np.isnan(m.loc[0.1, "cvar_expected_at_kl"]) and m.loc[0.1, "verdict"] == "TFFT below, at more KL"
    assert m.loc[0.1, "cvar_expected_less_kl"] == pytest.approx(0.7) and m.loc[0.1, "kl_expected_less_kl"] == 3.0
    assert m.loc[0.1, "tfft_minus_expected_less_kl"] == pytest.approx(-0.08)
    assert m.loc[0.3, "tfft_minus_expected_less_kl"] == pytest.approx(0.2)  # above it: no one-sided verdict
    assert m.loc[1.0, "spread"] == pytest.approx(np.hypot(np.std([-0.01, 0.01], ddof=1),
                                                          np.std([-0.01, 0.01], ddof=1)))


@pytest.mark.slow  # about 11 s: four smoke-budget fine-tunes
def test_quick_mode_writes_csv_md_png_and_appends(tf, tmp_path):
    out, runs = tmp_path / "out", tmp_path / "runs"
    tf.main(["--quick", "--quiet", "--out", str(out), "--runs", str(runs)])
    t = pd.read_csv(out / "tail_frontier.csv")
    for col in ["target", "tail", "beta", "method", "alpha", "seed", "kl", "cvar_own", "cvar_pretrained",
                "cvar_predicted", "kl_predicted", "realisation", "validity", "uniqueness", "train_seconds"]:
        assert col in t.columns, col
    assert len(t) == 4 and set(t.method) == {"tfft", "expected"} and set(t.target) == {"qed_right"}
    assert sorted(t.alpha.unique()) == pytest.approx([0.1, 0.4])
    # stage 1's prediction at the run's alpha, for expected-FT rows too, from the seed's offline batch
    assert np.isfinite(t[["kl", "cvar_own", "cvar_predicted", "kl_predicted", "realisation"]].to_numpy()).all()
    for _, g in t.groupby("alpha"):
        assert g.cvar_predicted.nunique() == 1 and g.kl_predicted.nunique() == 1
    assert np.allclose(t.realisation, (t.cvar_own - t.cvar_pretrained) / (t.cvar_predicted - t.cvar_pretrained))
    # the exact expected-reward optimum at stage 1's KL never holds more of the tail than stage 1's optimum
    assert np.isfinite(t.cvar_mean_tilt).all() and (t.cvar_mean_tilt <= t.cvar_predicted + 1e-9).all()
    curve = pd.read_csv(out / "tail_frontier_curve.csv")
    assert len(curve) >= len(tf.GRID) and (np.diff(curve.sort_values("alpha").kl_predicted) <= 1e-9).all()
    assert (curve.cvar_mean_tilt <= curve.cvar_predicted + 1e-9).all()
    md = (out / "tail_frontier.md").read_text()
    assert "Quick mode" in md and "matched KL" in md and "tail_margin" in md and "Checks at the config's alpha" in md
    assert (out / "tail_frontier.png").stat().st_size > 1000
    # --append skips runs already in the CSV; --replot rebuilds the md from the CSVs
    tf.main(["--quick", "--quiet", "--append", "--out", str(out), "--runs", str(runs)])
    assert len(pd.read_csv(out / "tail_frontier.csv")) == 4
    (out / "tail_frontier.md").unlink()
    tf.main(["--replot", "--quiet", "--out", str(out)])
    assert (out / "tail_frontier.md").read_text() == md
    # --fill-margins restores the expected-reward optimum's CVaR from the cached offline batches
    full, cfull = pd.read_csv(out / "tail_frontier.csv"), pd.read_csv(out / "tail_frontier_curve.csv")
    full.drop(columns="cvar_mean_tilt").to_csv(out / "tail_frontier.csv", index=False)
    cfull.drop(columns="cvar_mean_tilt").to_csv(out / "tail_frontier_curve.csv", index=False)
    tf.main(["--fill-margins", "--quiet", "--out", str(out), "--runs", str(runs)])
    again, cagain = pd.read_csv(out / "tail_frontier.csv"), pd.read_csv(out / "tail_frontier_curve.csv")
    np.testing.assert_allclose(again.cvar_mean_tilt, full.cvar_mean_tilt, rtol=1e-9)
    np.testing.assert_allclose(cagain.cvar_mean_tilt, cfull.cvar_mean_tilt, rtol=1e-9)
    assert (out / "tail_frontier.md").read_text() == md


@pytest.mark.slow  # about 6 s: two smoke-budget fine-tunes
def test_patch_reaches_the_run_and_is_recorded(tf, tmp_path):
    """--patch merges into every run's config (here the late loss times of the qm9 graph flow's
    terminal_time 0.5), is kept in the row's ``patch`` column and named in the report."""
    out, runs = tmp_path / "out", tmp_path / "runs"
    patch = {"tfft": {"am": {"late_loss_steps": 3}}}
    tf.main(["--quick", "--quiet", "--alphas", "1", "--patch", json.dumps(patch), "--out", str(out),
             "--runs", str(runs)])
    t = pd.read_csv(out / "tail_frontier.csv")
    assert len(t) == 2 and (t.patch == json.dumps(patch, sort_keys=True)).all()
    for name in ("qed_right-tfft-a1-s0", "qed_right-expected-a1-s0"):
        assert "late_loss_steps: 3" in (runs / name / "config.yaml").read_text()
    assert "Config patch: `" in (out / "tail_frontier.md").read_text()
    with pytest.raises(SystemExit):
        tf.main(["--patch", "{not json", "--quiet", "--out", str(out)])


def test_every_target_builds_a_valid_config_at_every_budget():
    """The nested drug-like configs take the flat budget keys where a RunConfig keeps them."""

    from tfftmol.pipeline import load_run_config

    tf = load_benchmark("tail_frontier")
    for target in tf.TARGETS:
        for budget in ("quick", "demo"):
            cfg = load_run_config(tf.target_config(target, budget))
            assert cfg.tfft.am.steps == tf.budget_patch(budget)["tfft"]["am"]["steps"], (target, budget)
    assert {"zinc_qed_right", "zinc_osimertinib_mpo_right", "zinc_fexofenadine_mpo_right"} <= set(tf.TARGETS)
