"""A chemist's workflow around a run: plan -> run -> inspect -> sample, degenerate tails, filters.

Tiny budgets on the shipped qm9-graph (a few hundred offline molecules, two Adjoint Matching steps);
the offline batches are cached in the module's directory, so each is sampled once.
"""
from __future__ import annotations

import math
import warnings
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml

from tfftmol.cli import main
from tfftmol.core.continuation import plan_stages
from tfftmol.core.threshold import TfftWarning
from tfftmol.pipeline import load_run_config, plan, run

CONFIGS = Path(__file__).resolve().parents[2] / "configs"

FSP3 = '''from rdkit.Chem import rdMolDescriptors


def fsp3(mol):
    """Fraction of sp3 carbons, in [0, 1]."""
    return rdMolDescriptors.CalcFractionCSP3(mol)
'''

TINY = {
    "model": "qm9-graph",
    "tfft": {"tail": "right", "beta": 0.9, "alpha": 1.0, "offline_samples": 300, "offline_steps": 12,
             "offline_sampler": "sde", "bootstrap": 20, "refine_samples": 40,
             "am": {"steps": 2, "batch_size": 8, "time_steps": 12, "loss_time_steps": 3, "terminal_time": 0.5}},
    "surrogate": {"epochs": 1, "patience": 0, "refit_epochs": 1, "hidden": 16, "layers": 1, "heads": 2},
    "refit_every": 0, "eval_samples": 40, "eval_steps": 12, "kl_samples": 0, "grid_size": 4, "top_k": 5,
    "checkpoint_every": 100, "seed": 0,
}


def _write(d, name, **over):
    cfg = yaml.safe_load(yaml.safe_dump(TINY))
    for k, v in over.items():
        if k == "tfft":
            cfg["tfft"].update(v)
        else:
            cfg[k] = v
    cfg["name"] = name
    path = d / f"{name}.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


@pytest.fixture(scope="module")
def work(tmp_path_factory):
    d = tmp_path_factory.mktemp("workflow")
    (d / "my_rewards.py").write_text(FSP3)  # next to the configs, not on sys.path
    fsp3 = {"name": "callable", "fn": "my_rewards:fsp3", "range": [0, 1]}
    return {"dir": d, "out": d / "runs",
            "fsp3_right": _write(d, "fsp3_right", reward=fsp3),
            "fsp3_left": _write(d, "fsp3_left", reward=fsp3, tfft={"tail": "left", "beta": 0.1, "alpha": 0.1}),
            "qed_right": _shipped(d, "qed_right"), "qed_left": _shipped(d, "qed_left_validity")}


def _shipped(d, name):
    """A shipped config (its reward, tail, beta and alpha) on the tiny budget."""
    cfg = yaml.safe_load((CONFIGS / f"{name}.yaml").read_text())
    keep = {k: cfg["tfft"][k] for k in ("tail", "beta", "alpha")}
    return _write(d, name, reward=cfg["reward"], tfft=keep)


def test_saturated_fsp3_right_tail_stops_before_stage2_from_the_cli(work, capsys):
    # the callable reward imports from the config's directory without PYTHONPATH
    rc = main(["run", "--config", str(work["fsp3_right"]), "--out", str(work["out"]), "--quiet"])
    err = capsys.readouterr().err
    assert rc == 3
    assert "stopped before stage 2: nothing to gain" in err
    assert "already score 1, the reward's upper bound" in err and "right tail of beta=0.9" in err
    assert "beta <= 0.7" in err or "beta <= 0.8" in err  # names a tail that can move (~22% tied at Fsp3 = 1)
    assert "--force" in err
    assert not (work["out"] / "fsp3_right" / "model.safetensors").exists()  # no stage 2


def test_a_run_a_guard_stops_ends_with_the_guard_message_not_a_traceback(tmp_path, capsys):
    """alpha 0.05 on the exact mixture: the self-consistent threshold runs from ~2.7 to ~8, far past what
    200 steps follow, so a stage-2 guard stops the run (measured: step 160); the CLI says so and exits 4.
    The tail balance (on by default) damps this runaway enough that no guard fires; off, the run is the one
    the test needs: a run the guards stop."""
    cfg = {"task": "toy2d", "name": "small_alpha", "seed": 0,
           "tfft": {"tail": "right", "beta": 0.9, "alpha": 0.05, "offline_samples": 3000, "track_balance": False,
                    "am": {"steps": 200, "batch_size": 64, "time_steps": 20, "loss_time_steps": 6}},
           "options": {"model": "gmm-exact", "reward": {"name": "linear", "w": [1.0, 0.0]}}}
    path = tmp_path / "small_alpha.yaml"
    path.write_text(yaml.safe_dump(cfg))
    rc = main(["run", "--config", str(path), "--out", str(tmp_path / "runs"), "--quiet"])
    err = capsys.readouterr().err
    assert rc == 4
    assert "stage 2 stopped at step" in err and "increase alpha" in err and "Traceback" not in err
    stage1_eta, now = (float(v) for v in err.split("(eta ")[1].split(" now)")[0].split(" at stage 1, "))
    assert now > stage1_eta + 2                      # the threshold was tracked far up before the stop
    assert str(tmp_path / "runs" / "small_alpha") in err and "tfftmol plan" in err
    assert (tmp_path / "runs" / "small_alpha" / "checkpoint").is_dir()


def test_left_fsp3_tail_warns_eta_at_the_maximum_and_names_the_alpha(work):
    res = plan(work["fsp3_left"], alphas=[0.1, 1.0], out_dir=str(work["out"]), plots=False, log=lambda s: None)
    row = res.table.set_index("alpha").loc[0.1]
    assert row["degenerate"] == "expected" and row["eta"] == 1.0
    assert res.table.set_index("alpha").loc[1.0, "degenerate"] == ""
    msg = next(m for m in res.messages if "eta*=1 is the maximum" in m)
    assert "scaled by 10" in msg and "alpha >=" in msg
    a_ok = float(msg.split("alpha >= ")[1].split(" ")[0])
    assert 0.1 < a_ok < 1.0
    cfg = load_run_config(work["fsp3_left"])
    with pytest.warns(TfftWarning, match=r"eta\*=1 is the maximum .*expected-reward fine-tuning"):
        stages = plan_stages(res.rewards, cfg.tfft, log=lambda s: None, bounds=(0.0, 1.0), stop_on_saturated=True)
    assert stages[-1].degeneracy.kind == "expected" and not stages[-1].degeneracy.stop


@pytest.mark.parametrize("which", ["qed_right", "qed_left"])  # configs/qed_right.yaml, configs/qed_left_validity.yaml
def test_qed_tails_are_not_degenerate_and_raise_no_warning(work, which):
    res = plan(work[which], out_dir=str(work["out"]), plots=False, log=lambda s: None)
    t = res.table
    assert t.loc[t["config"], "degenerate"].tolist() == [""]
    # only far smaller alphas than the config's reduce the left tail to expected-FT (eta* at the top sample)
    assert (t.loc[t["degenerate"] != "", "alpha"] < 0.1).all()
    cfg = load_run_config(work[which])
    with warnings.catch_warnings():
        warnings.simplefilter("error", TfftWarning)  # no dead-hinge claim the continuation can fix
        stages = plan_stages(res.rewards, cfg.tfft, log=lambda s: None, bounds=(0.0, 1.0), stop_on_saturated=True)
    assert stages[-1].degeneracy is None


@pytest.fixture(scope="module")
def tiny_run(work):
    return run(work["qed_right"], out_dir=str(work["out"]), progress=False, log=lambda s: None)


def test_plan_predicts_the_stage1_kl_of_a_real_run_and_recommends_an_alpha(work, tiny_run, capsys):
    assert main(["plan", "--config", str(work["qed_right"]), "--out", str(work["out"]), "--kl-budget", "0.3",
                 "--quiet"]) == 0
    out = capsys.readouterr().out
    assert "recommended alpha" in out and "<- config" in out
    table = pd.read_csv(work["out"] / "qed_right-plan" / "plan.csv")
    assert (work["out"] / "qed_right-plan" / "plan.png").stat().st_size > 1000
    row = table[table["config"]].iloc[0]
    s1 = tiny_run.tfft.stage1
    assert row["alpha"] == 0.1 and abs(row["predicted_kl"] - s1.predicted_kl) <= 1e-9
    assert abs(row["predicted_cvar"] - s1.predicted_cvar) <= 1e-9 and row["eta"] == pytest.approx(s1.eta, abs=1e-12)
    rec = table[table["recommended"]].iloc[0]
    assert rec["predicted_kl"] <= 0.3
    # predicted KL falls as alpha grows; the recommended alpha is the smallest within the budget
    grid = table[~table["recommended"] | table["config"]].sort_values("alpha")
    assert np.all(np.diff(grid["predicted_kl"].to_numpy()) <= 1e-12)
    assert not ((grid["predicted_kl"] <= 0.3) & (grid["alpha"] < rec["alpha"])).any()


def test_top_sdf_rereads_to_the_same_molecules_and_properties(tiny_run):
    from rdkit import Chem
    from rdkit.Chem import QED

    from tfftmol.chem.inspect import read_sdf

    d = tiny_run.run_dir
    top = pd.read_csv(d / "top.csv", keep_default_na=False)
    assert set(top["model"]) == {"pretrained", "tfft"} and set(top["end"]) == {"top", "bottom"}
    for col in ("smiles", "reward", "qed", "sa", "logp", "mw", "rings", "rings_3", "rings_4", "novel"):
        assert col in top.columns
    sdf = read_sdf(d / "top.sdf")
    assert len(sdf) == len(top)
    assert list(sdf["structure_smiles"]) == list(top["smiles"]) == list(sdf["smiles"])
    for col in ("reward", "qed", "sa", "logp", "mw"):
        np.testing.assert_allclose(sdf[col].astype(float), top[col].astype(float), rtol=1e-12)
    assert list(sdf["rings"].astype(int)) == list(top["rings"].astype(int))
    # the properties are RDKit's, and the reward is QED here
    for _, r in top.head(5).iterrows():
        assert float(r["qed"]) == pytest.approx(QED.qed(Chem.MolFromSmiles(r["smiles"])), abs=1e-12)
        assert float(r["reward"]) == pytest.approx(float(r["qed"]), abs=1e-9)
    # both models' samples are written; an invalid sample keeps its raw decode and reason
    for f in ("samples.csv", "samples_pretrained.csv", "properties.csv", "properties.png"):
        assert (d / f).exists()
    s = pd.read_csv(d / "samples_pretrained.csv", keep_default_na=False)
    bad = s[~s["valid"].astype(bool)]
    assert "raw" in s.columns and (bad["reason"] != "ok").all()
    assert (bad.loc[bad["reason"].isin(["valence", "disconnected"]), "raw"] != "").all()
    props = pd.read_csv(d / "properties.csv")
    assert {"qed_mean", "sa_mean", "strained_2+", "filters_pass"} <= set(props.columns)
    assert props["filters_pass"].between(0, 1).all()


def test_sampling_a_fine_tuned_run_from_the_cli(tiny_run, tmp_path, capsys):
    out = tmp_path / "ft.csv"
    assert main(["sample", "--model", str(tiny_run.run_dir), "-n", "24", "-o", str(out), "--steps", "12",
                 "--batch-size", "10"]) == 0
    df = pd.read_csv(out, keep_default_na=False)
    assert len(df) == 24 and df["valid"].mean() > 0.3
    assert "wrote 24 molecules" in capsys.readouterr().out
    import tfftmol
    m = tfftmol.load_pretrained(str(tiny_run.run_dir))
    direct = tfftmol.load_pretrained(str(tiny_run.run_dir / "model.safetensors"))
    assert m.state_dict().keys() == direct.state_dict().keys()
    with pytest.raises(SystemExit, match="model.safetensors"):
        main(["sample", "--model", str(tmp_path), "-n", "2", "-o", str(tmp_path / "x.csv")])


def test_medchem_filters_on_known_molecules():
    from rdkit import Chem

    from tfftmol.chem.filters import FilterConfig, FilteredReward, MedChemFilters
    from tfftmol.chem.rewards import build_reward
    from tfftmol.core.config import ConfigError

    f = MedChemFilters(FilterConfig(catalogs=["pains", "brenk"], max_small_rings=1, sa_max=None))
    rhodanine = Chem.MolFromSmiles("O=C1C(=Cc2ccccc2)SC(=S)N1")  # PAINS ene_rhod
    two_cyclopropyls = Chem.MolFromSmiles("C1CC1C1CC1")
    assert "pains" in f.failures(rhodanine)
    assert f.failures(two_cyclopropyls) == ["small_rings"] and f.failures(Chem.MolFromSmiles("CCO")) == []
    assert f.pass_rate(["CCO", "C1CC1C1CC1", "", "not a smiles"]) == 0.5
    qed = build_reward({"name": "qed"})
    hard = FilteredReward(qed, {"catalogs": ["pains"], "max_small_rings": 1})
    soft = FilteredReward(qed, {"catalogs": ["pains"], "max_small_rings": 1, "mode": "term", "weight": 0.5})
    res = hard(["CCO", "C1CC1C1CC1", "C1CC"])
    from rdkit.Chem import QED
    assert res.values[0] == pytest.approx(QED.qed(Chem.MolFromSmiles("CCO")))
    assert res.values[1] == -0.25 and res.values[2] == hard.penalty == -0.5  # failing > invalid
    assert soft(["C1CC1C1CC1"]).values[0] == pytest.approx(QED.qed(two_cyclopropyls) - 0.5)
    assert hard.identity() != qed.identity()  # a filtered reward never reuses the unfiltered cache
    with pytest.raises(ConfigError, match=r"filters.catalogs=.*'painz'.*unknown"):
        FilterConfig(catalogs=["painz"])
    with pytest.raises(ConfigError, match=r"sa_max"):
        FilterConfig(sa_max=12)


def test_models_lists_names_without_importing_torch():
    import subprocess
    import sys

    code = "import sys; from tfftmol.cli import main; main(['models']); assert 'torch' not in sys.modules"
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    assert "qm9-graph" in r.stdout and "zinc-selfies" in r.stdout


def test_cli_shows_each_warning_once_and_not_again_in_the_log(capsys):
    from tfftmol.pipeline.console import log_without, warnings_once

    with warnings.catch_warnings():
        warnings.simplefilter("always")
        shown = warnings_once(restore=False, plain=True).__enter__()
        for _ in range(2):
            warnings.warn("the hinge is dead", TfftWarning)
        log_without(shown)("TFFT threshold: right tail\n  eta*  0.6\n  warnings:\n  - the hinge is dead")
    cap = capsys.readouterr()
    assert cap.err.count("warning: the hinge is dead") == 1 and "test_workflow.py" not in cap.err
    assert "TFFT threshold" in cap.out and "hinge" not in cap.out and "warnings:" not in cap.out


def test_surrogate_report_names_why_a_precision_is_missing():
    from tfftmol.chem.surrogate import SurrogateReport

    rep = SurrogateReport(r2=0.5, spearman=0.8, precision_hi=math.nan, precision_lo=0.4, n_pred_hi=0, n_pred_lo=9,
                          q_hi=0.9, q_lo=0.1, rank_precision_hi=0.9, rank_precision_lo=0.5, mae=0.1,
                          r2_valid=0.7, spearman_valid=0.8, validity_accuracy=0.9, n_train=10, n_valid=5, epochs=1,
                          seconds=0.1)
    text = str(rep)
    assert "nan" not in text and "prec@q0.9=n/a (no prediction above it)" in text and "prec@q0.1=0.400" in text


def test_python_run_prints_each_warning_once_and_filters_still_see_it(tmp_path, capsys):
    from tfftmol.pipeline import run

    cfg = {"task": "toy2d", "name": "w", "out_dir": str(tmp_path),
           "eval": {"samples": 200, "kl_samples": 50, "steps": 8},
           "tfft": {"alpha": 0.05, "offline_samples": 300, "offline_steps": 8, "bootstrap": 20, "continuation": "none",
                    "am": {"steps": 2, "batch_size": 8, "time_steps": 8}},
           "options": {"model": "gmm-exact", "reward": {"name": "linear", "w": [1.0, 0.0]}}}
    with pytest.warns(TfftWarning, match="continuation cannot help") as rec:
        run(cfg, progress=False, plots=False)
    cap = capsys.readouterr()
    assert sum("continuation cannot help" in str(w.message) for w in rec) == 1   # recorded once, by the filter
    assert "continuation cannot help" not in cap.out                              # and not again in the summary
    assert "TFFT threshold" in cap.out or "eta*" in cap.out
