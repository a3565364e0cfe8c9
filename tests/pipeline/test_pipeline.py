"""The one pipeline: one config runs the same from the CLI, the Python API and an Optuna trial;
configs never mutate silently; the run directory never loses or mixes up a run."""
from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest
import torch
import yaml

from tfftmol.core.checkpoint import CheckpointError, load_checkpoint, save_checkpoint
from tfftmol.core.config import ConfigError, from_dict, to_dict
from tfftmol.core.settings import TFFTConfig
from tfftmol.pipeline import RunDir, RunDirError, load_run_config, run

TINY = {
    "task": "toy2d", "name": "tiny", "seed": 4,
    "eval": {"samples": 600, "steps": 12, "kl_samples": 100, "batch_size": 300},
    "tfft": {"alpha": 1.0, "offline_samples": 1000, "offline_steps": 12, "bootstrap": 0, "refine_samples": 500,
             "am": {"steps": 8, "batch_size": 32, "time_steps": 12, "loss_time_steps": 4}},
    "options": {"model": "gmm-exact", "reward": {"name": "linear", "w": [1.0, 0.0]}},
}


def _cfg(out, **over) -> dict:
    d = json.loads(json.dumps(TINY))
    d["out_dir"] = str(out)
    d.update(over)
    return d


def _numeric(row: pd.Series) -> dict:
    skip = {"train_seconds"}
    return {k: float(v) for k, v in row.items() if k not in skip and isinstance(v, (int, float, np.number))
            and not isinstance(v, bool)}


@pytest.mark.slow
def test_one_config_gives_the_same_row_from_cli_api_and_optuna(tmp_path):
    from tfftmol.cli import main
    from tfftmol.tuning import run_study

    api = run(_cfg(tmp_path / "api"), progress=False, log=lambda s: None).metrics.iloc[-1]

    path = tmp_path / "tiny.yaml"
    path.write_text(yaml.safe_dump(_cfg(tmp_path / "cli")))
    assert main(["run", "--config", str(path), "--quiet"]) == 0
    cli = pd.read_csv(tmp_path / "cli" / "tiny" / "metrics.csv").iloc[-1]

    study = {"kind": "run", "base": _cfg(tmp_path / "unused"), "space": {"beta": [0.85, 0.95], "alpha": [0.5, 2.0]},
             "objectives": [{"metric": "cvar", "direction": "maximize"}], "pruner": "none",
             "enqueue_default": True, "heartbeat_interval": 1, "grace_period": 3}
    res = run_study(study, "same", n_trials=1, out_dir=tmp_path / "study", log=lambda s: None)
    trial = pd.read_csv(tmp_path / "study" / "same" / "trials" / "trial-0000" / "metrics.csv").iloc[-1]

    a, b, c = _numeric(api), _numeric(cli), _numeric(trial)
    assert a.keys() == b.keys() == c.keys()
    for k in a:
        np.testing.assert_allclose([b[k], c[k]], [a[k], a[k]], rtol=1e-6, atol=1e-9, err_msg=k)
    assert res.study.trials[0].user_attrs["cvar"] == pytest.approx(a["reward_cvar_right_0.9"], rel=1e-9)


def test_a_nested_seed_is_kept_and_conflicting_seeds_name_both_fields(tmp_path):
    cfg = load_run_config(_cfg(tmp_path, seed=0, tfft={**TINY["tfft"], "seed": 5}))
    assert (cfg.seed, cfg.tfft.seed, cfg.tfft.am.seed) == (5, 5, 5)
    with pytest.raises(ConfigError) as err:
        load_run_config(_cfg(tmp_path, seed=3, tfft={**TINY["tfft"], "seed": 5}))
    assert "seed=3" in str(err.value) and "tfft.seed=5" in str(err.value)
    # the flat form of earlier releases: `tfft: {seed: 5}` with no top-level seed used to load as 0
    flat = {"name": "x", "model": "qm9-graph", "tfft": {"seed": 5}}
    path = tmp_path / "flat.yaml"
    path.write_text(yaml.safe_dump(flat))
    c = load_run_config(path)
    assert (c.seed, c.tfft.seed, c.tfft.am.seed) == (5, 5, 5)


def test_a_saved_config_reloads_with_another_beta():
    saved = to_dict(TFFTConfig(beta=0.9))
    assert saved["adaptive_active"] == 0  # nothing derived was written back
    saved["beta"] = 0.98
    t = from_dict(TFFTConfig, saved)
    assert t.adaptive_active_fraction == pytest.approx(0.75 * 0.02)
    # and a whole run config round-trips to an equal object
    rc = load_run_config(TINY)
    assert to_dict(load_run_config(to_dict(rc))) == to_dict(rc)


@pytest.mark.parametrize("name", ["..", ".", "../x", "a/b", "", "-rf", ".hidden", "x" * 200])
def test_a_run_name_is_one_path_component(tmp_path, name):
    with pytest.raises(ConfigError, match="name="):
        load_run_config(_cfg(tmp_path / "out", name=name))
    assert not (tmp_path / "out").exists()


def test_a_second_run_of_the_same_name_refuses_and_keeps_the_first(tmp_path):
    first = run(_cfg(tmp_path), progress=False, log=lambda s: None)
    before = {p.name: p.read_bytes() for p in first.run_dir.iterdir() if p.is_file()}
    with pytest.raises(RunDirError, match="already holds a finished run"):
        run(_cfg(tmp_path, tfft={**TINY["tfft"], "alpha": 0.5}), progress=False, log=lambda s: None)
    after = {p.name: p.read_bytes() for p in first.run_dir.iterdir() if p.is_file()}
    assert before == after
    # with overwrite it is replaced, and only the run directory is touched
    (tmp_path / "keep.txt").write_text("mine")
    run(_cfg(tmp_path, tfft={**TINY["tfft"], "alpha": 0.5}), overwrite=True, progress=False, log=lambda s: None)
    assert yaml.safe_load((first.run_dir / "config.yaml").read_text())["tfft"]["alpha"] == 0.5
    assert (tmp_path / "keep.txt").read_text() == "mine"


def test_a_foreign_directory_is_never_written_into(tmp_path):
    d = tmp_path / "tiny"
    d.mkdir()
    (d / "notes.txt").write_text("a user's file")
    for kw in ({}, {"overwrite": True}, {"resume": True}):
        with pytest.raises(RunDirError, match="not a tfftmol run directory"):
            run(_cfg(tmp_path), progress=False, log=lambda s: None, **kw)
    assert (d / "notes.txt").read_text() == "a user's file" and len(list(d.iterdir())) == 1


def test_a_run_directory_in_use_by_a_live_process_is_refused(tmp_path):
    cfg = load_run_config(_cfg(tmp_path))
    tmp_path.mkdir(exist_ok=True)
    (tmp_path / ".tiny.lock").write_text(str(os.getppid()))  # a live process that is not us
    with pytest.raises(RunDirError, match="in use by process"):
        with RunDir(cfg):
            pass
    (tmp_path / ".tiny.lock").write_text("999999999")  # a dead one: the stale lock is taken over
    with RunDir(cfg) as rd:
        assert rd.lock.read_text() == str(os.getpid())
    assert not rd.lock.exists()


def _state(step: int) -> dict:
    return {"w": torch.full((4,), float(step)), "step": step}


def test_resume_refuses_a_changed_config_a_changed_base_or_a_missing_manifest(tmp_path):
    cfg = load_run_config(_cfg(tmp_path))
    with RunDir(cfg) as rd:
        rd.prepare("fp-1")
        save_checkpoint(rd.checkpoint, _state(3))
    with RunDir(cfg, resume=True) as rd:          # same config, same base: resumes
        assert rd.prepare("fp-1") is True
    with RunDir(cfg, resume=True) as rd, pytest.raises(RunDirError, match="weights changed"):
        rd.prepare("fp-2")
    other = load_run_config(_cfg(tmp_path, tfft={**TINY["tfft"], "alpha": 0.01}))
    with RunDir(other, resume=True) as rd, pytest.raises(ConfigError, match="tfft.alpha"):
        rd.prepare("fp-1")
    (cfg.run_dir / "config.yaml").unlink()
    with RunDir(cfg, resume=True) as rd, pytest.raises(RunDirError, match="no config.yaml"):
        rd.prepare("fp-1")


@pytest.mark.parametrize("damage", ["truncate", "flip", "drop_tensors", "bad_json"])
def test_a_damaged_checkpoint_is_an_error_not_a_restart(tmp_path, damage):
    save_checkpoint(tmp_path, _state(7))
    meta = json.loads((tmp_path / "state.json").read_text())
    st = tmp_path / meta["tensors"]
    if damage == "truncate":
        st.write_bytes(st.read_bytes()[:-9])
    elif damage == "flip":
        b = bytearray(st.read_bytes())
        b[-3] ^= 0xFF
        st.write_bytes(bytes(b))
    elif damage == "drop_tensors":
        st.unlink()
    else:
        (tmp_path / "state.json").write_text("{not json")
    with pytest.raises(CheckpointError):
        load_checkpoint(tmp_path)


def test_a_write_killed_between_the_two_files_leaves_the_previous_checkpoint(tmp_path, monkeypatch):
    import tfftmol.core.checkpoint as ck

    save_checkpoint(tmp_path, _state(1))

    def killed(*a, **k):
        raise KeyboardInterrupt("killed after the tensors, before the manifest")

    monkeypatch.setattr(ck, "atomic_write_text", killed)
    with pytest.raises(KeyboardInterrupt):
        save_checkpoint(tmp_path, _state(2))
    monkeypatch.undo()
    state = load_checkpoint(tmp_path)                     # the previous pair is intact and verified
    assert state["step"] == 1 and float(state["w"][0]) == 1.0


def test_run_tfft_refuses_the_checkpoint_of_another_config(tmp_path):
    from tfftmol.core.tfft import run_tfft
    from tfftmol.toy2d.gmm import circle_gmm
    from tfftmol.toy2d.flows import linear_reward

    base, reward = circle_gmm(), linear_reward()
    t = from_dict(TFFTConfig, {**TINY["tfft"], "am": {**TINY["tfft"]["am"], "steps": 2}})
    run_tfft(base, reward, t, checkpoint_dir=tmp_path, progress=False, log=lambda s: None)
    other = from_dict(TFFTConfig, {**TINY["tfft"], "alpha": 0.01, "am": {**TINY["tfft"]["am"], "steps": 2}})
    with pytest.raises(CheckpointError, match="another run"):
        run_tfft(base, reward, other, checkpoint_dir=tmp_path, progress=False, log=lambda s: None)


def test_ctrl_c_during_the_offline_batch_says_so_and_resume_completes(tmp_path, monkeypatch, capsys):
    import tfftmol.core.tfft as tfft_mod
    from tfftmol.cli import main

    path = tmp_path / "tiny.yaml"
    path.write_text(yaml.safe_dump(_cfg(tmp_path / "out")))
    real = tfft_mod.offline_batch

    def interrupted(*a, **k):
        raise KeyboardInterrupt          # what Python raises on SIGINT: no message

    monkeypatch.setattr(tfft_mod, "offline_batch", interrupted)
    assert main(["run", "--config", str(path), "--quiet"]) == 130
    err = capsys.readouterr().err.strip()
    assert err.startswith("interrupted before stage 2") and err.endswith("continue with --resume")
    monkeypatch.setattr(tfft_mod, "offline_batch", real)
    assert main(["run", "--config", str(path), "--quiet", "--resume"]) == 0
    assert (tmp_path / "out" / "tiny" / "metrics.csv").exists()


@pytest.mark.filterwarnings("ignore::tfftmol.core.threshold.TfftWarning")  # 1.8% of 1,000 samples above eta
def test_spectral_and_constrained_objectives_run_from_a_config(tmp_path):
    """``tfft.levels`` / ``tfft.constraint`` in a run config: stage 1 solves that objective, the metrics carry
    every level's CVaR and the objective's own column, the report prints the stage-1 thresholds."""
    from tfftmol.core.risk import cvar
    from tfftmol.core.spectral import solve_constrained, solve_spectral

    levels = [{"tail": "right", "beta": 0.9, "weight": 1.0}, {"tail": "left", "beta": 0.2, "weight": 0.5}]
    d = _cfg(tmp_path, name="spec")
    d["tfft"].update(levels=levels, mean_weight=0.25, alpha=2.0)
    res = run(d, progress=False, log=lambda s: None)
    m = res.metrics
    for col in ("reward_cvar_right_0.9", "reward_cvar_left_0.2", "reward_spectral", "etas_stage1"):
        assert col in m.columns, col
    ev = res.evaluations["pretrained"].values
    want = 0.25 * ev.mean() + cvar(ev, 0.9, "right") + 0.5 * cvar(ev, 0.2, "left")
    assert abs(m["reward_spectral"].iloc[0] - want) < 1e-9
    direct = solve_spectral(res.tfft.offline_rewards, [("right", 0.9, 1.0), ("left", 0.2, 0.5)], 2.0, 0.25, warn=False)
    assert abs(m["cvar_predicted"].iloc[1] - direct.predicted_risk) < 1e-9
    assert m["etas_stage1"].iloc[1] == ";".join(f"{e:.6g}" for e in direct.etas)
    report = (res.run_dir / "report.md").read_text()
    assert "TFFT spectral threshold" in report and "`reward_spectral`" in report

    d = _cfg(tmp_path, name="con")
    d["tfft"].update(constraint={"tail": "left", "beta": 0.1, "floor": -0.5}, alpha=1.0)
    res = run(d, progress=False, log=lambda s: None)
    m = res.metrics
    direct = solve_constrained(res.tfft.offline_rewards, "left", 0.1, -0.5, 1.0, warn=False)
    assert m["multiplier"].iloc[1] == pytest.approx(direct.multiplier, rel=1e-9)
    assert m["cvar_predicted"].iloc[1] == pytest.approx(direct.predicted_mean, rel=1e-12)
    assert (m["constraint_floor"] == -0.5).all()
    assert m["constraint_value"].iloc[0] == pytest.approx(m["reward_cvar_left_0.1"].iloc[0])
    assert "TFFT constrained threshold" in (res.run_dir / "report.md").read_text()


@pytest.mark.filterwarnings("ignore::tfftmol.core.threshold.TfftWarning")
def test_an_optuna_study_tunes_a_spectral_objective_under_a_constraint(tmp_path):
    """A study over alpha of a two-sided objective: its objective is the run's ``reward_spectral``
    column, its constraint any metrics column (here the left level's CVaR), on real SQLite storage."""
    from tfftmol.tuning import run_study

    base = _cfg(tmp_path / "unused", name="spec")
    base["tfft"].update(levels=[{"tail": "right", "beta": 0.9}, {"tail": "left", "beta": 0.1}])
    study = {"kind": "run", "base": base, "space": {"alpha": [0.5, 4.0]},
             "objectives": [{"metric": "reward_spectral", "direction": "maximize"}],
             "constraints": [{"metric": "reward_cvar_left_0.1", "min": -10.0}], "pruner": "none",
             "heartbeat_interval": 1, "grace_period": 3}
    res = run_study(study, "spec", n_trials=2, out_dir=tmp_path / "study", plots=False, log=lambda s: None)
    done = [t for t in res.study.trials if t.value is not None]
    assert len(done) == 2 and done[0].params["alpha"] != done[1].params["alpha"]
    for t in done:
        row = pd.read_csv(tmp_path / "study" / "spec" / "trials" / f"trial-{t.number:04d}" / "metrics.csv").iloc[-1]
        assert t.value == pytest.approx(row["reward_spectral"], rel=1e-9)
