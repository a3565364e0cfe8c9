"""Issue 16, items 3 and 4 and the medium findings: caches are verified, reward failures are counted and
stop a run, configs fail before compute with a message naming the field, user code is imported only from
where the config says.  Each test fails on the code before the change."""
from __future__ import annotations

import json
import os
import sys
import tempfile
import types
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from tfftmol.core.config import ConfigError
from tfftmol.core.offline import offline_batch
from tfftmol.core.reward import DifferentiableReward
from tfftmol.toy2d.gmm import circle_gmm
from tfftmol.toy2d.flows import linear_reward
from tfftmol.pipeline import RunDir, RunDirError, load_run_config

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


# -- item 3: the offline cache -------------------------------------------------------------------

def _batch(tmp_path, n, logs=None):
    return offline_batch(circle_gmm(), linear_reward(), n, steps=6, sampler="sde", seed=1, cache_dir=tmp_path,
                         log=(logs.append if logs is not None else (lambda s: None)))


def _cache_files(d: Path, n_key: str | None = None):
    return sorted(d.glob("offline-*.safetensors"))


def test_a_cache_with_fewer_rows_than_asked_is_recomputed(tmp_path):
    """Finding 3a: a cache of 10 rows was used for offline_samples: 64."""
    small, big = tmp_path / "small", tmp_path / "big"
    _batch(small, 10)
    _batch(big, 64)
    (s_st,), (b_st,) = _cache_files(small), _cache_files(big)
    b_st.write_bytes(s_st.read_bytes())                       # the 10-row tensors under the 64-row name
    b_st.with_suffix(".json").write_bytes(s_st.with_suffix(".json").read_bytes())
    logs: list[str] = []
    x, v, ok, cached = _batch(big, 64, logs)
    assert not cached and x.shape[0] == v.shape[0] == ok.shape[0] == 64
    assert any("not trusted" in s and "n=10" in s for s in logs), logs


def test_cached_rewards_edited_in_place_are_not_used(tmp_path):
    """Finding 3b: cached rewards shifted by +0.3 moved eta* silently."""
    from tfftmol.core.checkpoint import load_tensors, save_tensors

    x0, v0, ok0, _ = _batch(tmp_path, 200)
    (st,) = _cache_files(tmp_path)
    t = load_tensors(st)
    from safetensors import safe_open
    with safe_open(str(st), framework="pt") as f:
        meta = f.metadata()
    save_tensors(st, {**t, "values": t["values"] + 0.3}, metadata=meta)   # metadata key and n still match
    logs: list[str] = []
    x, v, ok, cached = _batch(tmp_path, 200, logs)
    assert not cached and torch.equal(v, v0)
    assert any("SHA-256" in s or "bytes" in s for s in logs), logs
    x, v, ok, cached = _batch(tmp_path, 200)                  # the recomputed cache is trusted again
    assert cached and torch.equal(v, v0)


@pytest.mark.parametrize("damage", ["truncate", "flip", "nan_consistent", "no_manifest", "bad_manifest",
                                    "no_tensors", "garbage"])
def test_a_damaged_cache_is_recomputed_never_a_crash(tmp_path, damage):
    """Finding 3d: a truncated or NaN cache crashed every later run with a message that blamed the reward."""
    from tfftmol.core.checkpoint import load_tensors
    from tfftmol.core.offline import _save_cache

    x0, v0, ok0, _ = _batch(tmp_path, 100)
    (st,) = _cache_files(tmp_path)
    man = st.with_suffix(".json")
    if damage == "truncate":
        st.write_bytes(st.read_bytes()[:-50])
    elif damage == "flip":
        b = bytearray(st.read_bytes())
        b[len(b) // 2] ^= 0x10
        st.write_bytes(bytes(b))
    elif damage == "nan_consistent":                          # a NaN written with a consistent manifest
        t = load_tensors(st)
        v = t["values"].clone()
        v[3] = float("nan")
        key = json.loads(man.read_text())["key"]
        _save_cache(st, key, 100, t["x"], v, t["valid"].bool())
    elif damage == "no_manifest":
        man.unlink()
    elif damage == "bad_manifest":
        man.write_text("{not json")
    elif damage == "no_tensors":
        st.unlink()
    else:
        st.write_bytes(b"\x00" * 7)
    logs: list[str] = []
    x, v, ok, cached = _batch(tmp_path, 100, logs)
    assert not cached and torch.equal(v, v0) and torch.equal(x, x0)
    assert len(logs) == 1 and "not trusted, recomputing" in logs[0]


def test_load_offline_cache_checks_shapes_against_the_model(tmp_path):
    from tfftmol.core.offline import load_offline_cache

    _batch(tmp_path, 20)
    (st,) = _cache_files(tmp_path)
    key = json.loads(st.with_suffix(".json").read_text())["key"]
    got, why = load_offline_cache(st, key, 20, (2,))
    assert got is not None and why is None
    got, why = load_offline_cache(st, key, 20, (3,))
    assert got is None and "shape" in why
    got, why = load_offline_cache(st, "other", 20, (2,))
    assert got is None and "key" in why


def test_an_unwritable_cache_does_not_lose_the_batch(tmp_path, monkeypatch):
    import tfftmol.core.offline as off

    def denied(*a, **k):
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr(off, "_save_cache", denied)
    logs: list[str] = []
    x, v, ok, cached = _batch(tmp_path, 30, logs)
    assert x.shape[0] == 30 and not cached and any("cannot be written" in s for s in logs)


def _molecular_reward(spec, smiles, log=None, frac=0.2):
    from tfftmol.chem.rewards import build_reward
    from tfftmol.chem.task import MolecularReward

    from tfftmol.chem.mol import check

    def decode(x):  # decoder results, as a flow's codec gives them (.mol, .smiles, .reason)
        out = []
        for i in x[:, 0].tolist():
            c = check(smiles[int(i)])
            out.append(types.SimpleNamespace(mol=c.mol, smiles=c.smiles, reason=c.reason))
        return out

    return MolecularReward(build_reward(spec), decode, surrogate=None, log=log or (lambda s: None),
                           max_failure_fraction=frac)


def test_fixing_a_callable_reward_invalidates_its_cache(tmp_path):
    """Finding 3c: after a user fixed a buggy reward function, the cache of the buggy version was reused."""
    mod = tmp_path / "user_reward_fix.py"
    mod.write_text("def score(mol):\n    return mol.GetNumAtoms() + 1.0  # bug\n")
    spec = {"name": "callable", "fn": str(mod) + ":score", "range": [0, 50]}
    r1 = _molecular_reward(spec, ["C"])
    assert r1.reward(["CCO"]).values[0] == 4.0
    mod.write_text("def score(mol):\n    return mol.GetNumAtoms() * 1.0  # fixed\n")
    r2 = _molecular_reward(spec, ["C"])
    assert r2.reward(["CCO"]).values[0] == 3.0                # the fixed code runs
    assert r1.cache_key != r2.cache_key                       # and the buggy cache is not reused
    assert _molecular_reward(spec, ["C"]).cache_key == r2.cache_key


# -- item 4: reward failures -----------------------------------------------------------------------

def _fails_on_ethane(mol):
    if mol.GetNumAtoms() == 2:
        raise ZeroDivisionError("no ethane here")
    return float(mol.GetNumAtoms())


def _nan_on_ethane(mol):
    return float("nan") if mol.GetNumAtoms() == 2 else float(mol.GetNumAtoms())


SMILES = ["CCO", "CC", "c1ccccc1", "CCCC", "C1CC", "CCN"]   # "CC" is the one the user reward fails on; "C1CC" invalid


def _x(idx):
    return torch.tensor([[float(i), 0.0] for i in idx])


def test_a_rare_reward_failure_is_counted_and_logged_once_with_its_traceback():
    """Finding 4a: a reward that raised on some molecules finished silently."""
    logs: list[str] = []
    spec = {"name": "callable", "fn": f"{__name__}:_fails_on_ethane", "range": [0, 20]}
    r = _molecular_reward(spec, SMILES, logs.append)
    rb = r.evaluate(_x([0, 1, 2, 3, 5, 0, 2, 3, 5, 0]))       # 1 of 10 fails: below the 20% limit
    assert not bool(rb.valid[1]) and float(rb.values[1]) == r.reward.penalty
    rb = r.evaluate(_x([1, 0, 2, 3, 5, 0, 2, 3, 5, 0]))
    assert r.failures["reward_error"] == 2 and r.n_scored == 20
    fail_logs = [s for s in logs if "reward_error" in s]
    assert len(fail_logs) == 1 and "Traceback" in fail_logs[0] and "no ethane here" in fail_logs[0]
    assert r.failure_summary() == {"scored": 20, "reward_error": 2}


@pytest.mark.parametrize("fn,reason", [("_fails_on_ethane", "reward_error"), ("_nan_on_ethane", "reward_nan")])
def test_a_batch_failing_in_the_reward_beyond_the_limit_stops_the_run(fn, reason):
    """Finding 4b: a reward raising on every molecule ended with an error telling the user to check the model."""
    from tfftmol.core.reward import RewardFailureError

    spec = {"name": "callable", "fn": f"{__name__}:{fn}", "range": [0, 20]}
    r = _molecular_reward(spec, SMILES)
    with pytest.raises(RewardFailureError, match=rf"30% > max_reward_failure_fraction=0.2.*{reason}=3 \(30%\)"):
        r.evaluate(_x([1, 1, 1, 0, 2, 3, 5, 0, 2, 3]))
    r = _molecular_reward(spec, SMILES, frac=0.5)             # the limit is an option
    r.evaluate(_x([1, 1, 1, 0, 2, 3, 5, 0, 2, 3]))
    assert r.failures[reason] == 3


def test_chemically_invalid_molecules_do_not_count_as_reward_failures():
    spec = {"name": "callable", "fn": f"{__name__}:_fails_on_ethane", "range": [0, 20]}
    r = _molecular_reward(spec, SMILES)
    r.evaluate(_x([4, 4, 4, 4, 4, 4, 0, 2, 3, 5]))            # 60% invalid SMILES, no reward failure
    assert r.failures.get("reward_error", 0) == 0 and sum(r.failures.values()) == 6


def test_max_reward_failure_fraction_is_a_validated_option():
    from tfftmol.chem.task import MoleculeOptions

    assert MoleculeOptions().max_reward_failure_fraction == 0.2
    for bad in (-0.1, 1.5, "lots", float("nan")):
        with pytest.raises(ConfigError, match="max_reward_failure_fraction"):
            MoleculeOptions(max_reward_failure_fraction=bad)


def test_a_penalty_above_valid_rewards_is_a_warning():
    """Finding 4c: a penalty above the reward's range lets invalid molecules outrank valid ones."""
    logs: list[str] = []
    spec = {"name": "callable", "fn": f"{__name__}:_fails_on_ethane", "range": [0, 20], "penalty": 2.5}
    r = _molecular_reward(spec, SMILES, logs.append)
    r.evaluate(_x([0, 2, 3, 4]))                               # CCO scores 3 > 2.5: fine
    assert not any("penalty" in s for s in logs)
    r.evaluate(_x([5, 4, 0]))                                  # CCN scores 3; still fine
    r2 = _molecular_reward({**spec, "penalty": 3.5}, SMILES, logs.append)
    r2.evaluate(_x([0, 2, 4]))
    r2.evaluate(_x([0, 2, 4]))
    warn = [s for s in logs if "warning" in s and "penalty 3.5" in s]
    assert len(warn) == 1 and "outrank" in warn[0]


def test_the_evaluation_row_has_reward_failure_columns(monkeypatch):
    import tfftmol.chem.task as ct

    monkeypatch.setattr(ct, "_reference_smiles", lambda latent=False: set())
    spec = {"name": "callable", "fn": f"{__name__}:_fails_on_ethane", "range": [0, 20]}
    r = _molecular_reward(spec, SMILES)
    cfg = types.SimpleNamespace(tfft=types.SimpleNamespace(tail="right", beta=0.9), seed=0,
                                options=types.SimpleNamespace(model="qm9-graph", reward_jobs=1))
    ev = ct.MoleculeTask().evaluate(cfg, types.SimpleNamespace(x=_x([0, 1, 2, 4])), r, "tfft")
    assert ev.row["invalid_reward_error"] == 0.25 and ev.row["invalid_reward_nan"] == 0.0
    assert ev.row["invalid_parse_failed"] == 0.25 and list(ev.samples["reason"]) == ["ok", "reward_error", "ok",
                                                                                     "parse_failed"]


def test_sys_exit_as_a_reward_is_a_counted_failure_not_an_exit():
    """Finding (medium): `fn: sys:exit` ended the run with a molecule's repr as the only message."""
    from tfftmol.chem.rewards import build_reward

    res = build_reward({"name": "callable", "fn": "sys:exit", "range": [0, 1]})(["CCO", "CC"])
    assert res.counts["reward_error"] == 2 and "SystemExit" in res.messages["reward_error"]


def test_nan_rewards_with_method_expected_stop_stage_2():
    """Finding 4d: with method: expected, NaN and inf rewards were silently dropped."""
    from tfftmol.core.settings import AMConfig, TFFTConfig
    from tfftmol.core.tfft import run_tfft

    def fn(x):
        return torch.where(x[:, 0] > 0.5, torch.full_like(x[:, 0], float("nan")), x[:, 0])

    cfg = TFFTConfig(method="expected", alpha=1.0, am=AMConfig(steps=3, batch_size=64, time_steps=6,
                                                               loss_time_steps=2))
    with pytest.raises(ValueError, match="non-finite"):
        run_tfft(circle_gmm(), DifferentiableReward(fn, "nan-right"), cfg, progress=False, log=lambda s: None)


def test_non_finite_rewards_in_a_fresh_offline_batch_name_the_reward(tmp_path):
    def fn(x):
        return torch.where(x[:, 0] > 0.5, torch.full_like(x[:, 0], float("inf")), x[:, 0])

    with pytest.raises(ValueError, match="'inf-right' returned .* non-finite"):
        offline_batch(circle_gmm(), DifferentiableReward(fn, "inf-right"), 50, steps=6, sampler="sde",
                      cache_dir=tmp_path)
    assert not list(tmp_path.glob("offline-*"))               # nothing cached


# -- medium: config validation before compute -------------------------------------------------------

@pytest.mark.parametrize("patch,field", [
    ({"seed": -5}, "seed"),
    ({"tfft": {**TINY["tfft"], "bootstrap": -3}}, "bootstrap"),
    ({"tfft": {**TINY["tfft"], "am": {**TINY["tfft"]["am"], "log_every": 0}}}, "log_every"),
    ({"tfft": {**TINY["tfft"], "offline_steps": 0}}, "offline_steps"),
    ({"tfft": {**TINY["tfft"], "am": {**TINY["tfft"]["am"], "lr": "fast"}}}, "lr"),
    ({"tfft": {**TINY["tfft"], "alpha": "1e-2x"}}, "alpha"),
    ({"device": 3}, "device"),
    ({"device": "tpu"}, "device"),
])
def test_a_bad_field_is_a_config_error_naming_it(tmp_path, patch, field):
    with pytest.raises(ConfigError, match=field):
        load_run_config(_cfg(tmp_path, **patch))


@pytest.mark.skipif(torch.cuda.is_available(), reason="the machine has CUDA")
@pytest.mark.parametrize("device", ["cuda", "cuda:0", "cuda:3"])
def test_device_cuda_without_cuda_is_a_config_error_at_load_time(tmp_path, device):
    with pytest.raises(ConfigError, match="no CUDA device"):
        load_run_config(_cfg(tmp_path, device=device))


def test_yaml_numbers_without_a_dot_are_numbers(tmp_path):
    """YAML 1.1 reads `lr: 3e-4` as the string '3e-4'."""
    p = tmp_path / "c.yaml"
    text = yaml.safe_dump(_cfg(tmp_path)).replace("loss_time_steps: 4", "loss_time_steps: 4\n    lr: 3e-4")
    p.write_text(text.replace("alpha: 1.0", "alpha: 5e-1"))
    assert yaml.safe_load(p.read_text())["tfft"]["am"]["lr"] == "3e-4"
    cfg = load_run_config(p)
    assert cfg.tfft.am.lr == 3e-4 and cfg.tfft.alpha == 0.5 and isinstance(cfg.tfft.am.lr, float)


@pytest.mark.parametrize("text,match", [
    ("task: toy2d\nname: [unclosed\n", r"c\.yaml, line \d+, column \d+: not valid YAML"),
    ("task: toy2d\n  name: x\n bad: 1\n", r"line \d+"),
    ("- task\n- toy2d\n", "must hold a mapping"),
    ("just a string\n", "must hold a mapping"),
    ("", "config is empty"),
    ("# only a comment\n", "config is empty"),
    ("{}\n", "config is empty"),
    ("\xff\xfe", "UTF-8|valid YAML"),
    ("task: toy2d\nseed: 2020-01-01\n", "not plain config data"),
])
def test_a_yaml_that_is_not_a_config_is_a_config_error(tmp_path, text, match):
    p = tmp_path / "c.yaml"
    p.write_bytes(text.encode("latin-1"))
    with pytest.raises(ConfigError, match=match):
        load_run_config(p)


def test_the_cli_reports_a_bad_yaml_without_a_traceback(tmp_path):
    import subprocess

    p = tmp_path / "c.yaml"
    p.write_text("task: toy2d\nname: [oops\n")
    out = subprocess.run([sys.executable, "-m", "tfftmol.cli", "run", "--config", str(p), "--check"],
                         capture_output=True, text=True, cwd=tmp_path, timeout=120)
    assert out.returncode != 0 and "Traceback" not in out.stderr and "line" in out.stderr


def test_an_unwritable_out_dir_fails_before_compute(tmp_path, monkeypatch):
    """A read-only out_dir gave a PermissionError traceback after the offline batch was computed and lost."""
    blocker = tmp_path / "file"
    blocker.write_text("x")
    cfg = load_run_config(_cfg(blocker / "runs"))
    with pytest.raises(RunDirError, match="out_dir=.*not writable.*nothing was computed"):
        with RunDir(cfg):
            pass

    def denied(*a, **k):
        raise PermissionError(13, "Permission denied")

    cfg = load_run_config(_cfg(tmp_path / "ro"))
    monkeypatch.setattr(tempfile, "NamedTemporaryFile", denied)
    with pytest.raises(RunDirError, match="not writable"):
        with RunDir(cfg):
            pass


def test_an_unwritable_out_dir_stops_run_before_the_base_model_loads(tmp_path, monkeypatch):
    from tfftmol.pipeline import registry, run

    task = registry.get_task("toy2d")
    monkeypatch.setattr(type(task), "load_base", lambda *a, **k: pytest.fail("compute started"))
    blocker = tmp_path / "file"
    blocker.write_text("x")
    with pytest.raises(RunDirError):
        run(_cfg(blocker / "runs"), progress=False, log=lambda s: None)


# -- medium: user code is imported only from where the config says ----------------------------------

def _reward_cfg(out, fn):
    return {"task": "molecule", "name": "m", "out_dir": str(out),
            "options": {"model": "qm9-graph", "reward": {"name": "callable", "fn": fn, "range": [0, 1]}}}


def test_a_module_planted_in_the_working_directory_is_never_imported(tmp_path, monkeypatch):
    """A planted evilmod.py ran when the CLI was started with `python -m` from its directory."""
    marker = tmp_path / "ran"
    (tmp_path / "evilmod_i16.py").write_text(f"open({str(marker)!r}, 'w').write('x')\ndef f(m):\n    return 0.5\n")
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "path", ["", *sys.path])
    with pytest.raises(ConfigError, match="cannot import 'evilmod_i16:f'.*working directory is not searched"):
        load_run_config(_reward_cfg(tmp_path / "out", "evilmod_i16:f"))
    assert not marker.exists() and "evilmod_i16" not in sys.modules


def test_a_module_beside_the_config_or_named_by_path_is_imported(tmp_path, monkeypatch):
    cdir = tmp_path / "configs"
    cdir.mkdir()
    (cdir / "beside_i16.py").write_text("def f(mol):\n    return 0.25\n")
    (cdir / "sub").mkdir()
    (cdir / "sub" / "by_path_i16.py").write_text("def g(mol):\n    return 0.75\n")
    other = tmp_path / "elsewhere"
    other.mkdir()
    monkeypatch.chdir(other)                                  # started from another directory
    for fn, want in (("beside_i16:f", 0.25), ("sub/by_path_i16.py:g", 0.75)):
        p = cdir / "run.yaml"
        p.write_text(yaml.safe_dump(_reward_cfg(tmp_path / "out", fn)))
        cfg = load_run_config(p)
        from tfftmol.chem.rewards import build_reward
        from tfftmol.core.config import config_search_dirs
        with config_search_dirs(*cfg.source_dirs):
            assert build_reward(dict(cfg.options.reward))(["CCO"]).values[0] == want
    sys.modules.pop("beside_i16", None)


# -- item 4 end to end: a tiny molecular run --------------------------------------------------------

def _fails_always(mol):
    raise RuntimeError("this reward is broken")


def _fails_sometimes(mol):
    from rdkit import Chem
    import zlib

    if zlib.crc32(Chem.MolToSmiles(mol).encode()) % 4 == 0:
        raise KeyError("unlucky molecule")
    return float(mol.GetNumAtoms()) / 9.0


@pytest.fixture(scope="module")
def tiny_qm9(tmp_path_factory) -> str:
    from tfftmol.chem.model import GraphTransformerConfig
    from tfftmol.chem.qm9_model import QM9GraphFlow, save_qm9_graph

    torch.manual_seed(0)
    model = QM9GraphFlow(GraphTransformerConfig(d_node=16, d_edge=8, n_layers=1, n_heads=2, ff_mult=1,
                                                edge_ff_mult=1))
    path = tmp_path_factory.mktemp("model") / "tiny.safetensors"
    save_qm9_graph(model, path)
    return str(path)


def _tiny_mol_cfg(model, out, fn, frac):
    return {
        "task": "molecule", "name": "fails", "out_dir": str(out), "seed": 0, "threads": 1, "checkpoint_every": 100,
        "eval": {"samples": 48, "steps": 5, "kl_samples": 0},
        "tfft": {"method": "tfft", "beta": 0.9, "alpha": 1.0, "offline_samples": 64, "offline_steps": 5,
                 "offline_sampler": "ode", "bootstrap": 0, "refine_samples": 32,
                 "am": {"steps": 4, "batch_size": 16, "time_steps": 6, "loss_time_steps": 3, "terminal_time": 0.5}},
        "options": {"model": model, "reward": {"name": "callable", "fn": f"{__name__}:{fn}", "range": [0, 1]},
                    "surrogate": {"hidden": 16, "layers": 1, "heads": 2, "epochs": 2, "refit_epochs": 1,
                                  "batch_size": 32},
                    "refit_every": 0, "max_reward_failure_fraction": frac},
    }


def test_a_run_whose_reward_always_fails_stops_naming_the_reward(tiny_qm9, tmp_path):
    """Finding 4b end to end: the error names reward_error and the fraction, not the model."""
    from tfftmol.core.reward import RewardFailureError
    from tfftmol.pipeline import run

    logs: list[str] = []
    with pytest.raises(RewardFailureError, match=r"reward_error=\d+ .*this reward is broken"):
        run(_tiny_mol_cfg(tiny_qm9, tmp_path, "_fails_always", 0.0), progress=False, log=logs.append)
    assert any("Traceback" in s and "this reward is broken" in s for s in logs)


def test_a_run_with_rare_reward_failures_reports_them(tiny_qm9, tmp_path, monkeypatch):
    """Finding 4a end to end: failures are in the log, report.md, reward_failures.csv and metrics.csv."""
    import pandas as pd

    import tfftmol.chem.task as ct
    from tfftmol.pipeline import run

    monkeypatch.setattr(ct, "_reference_smiles", lambda latent=False: set())
    logs: list[str] = []
    res = run(_tiny_mol_cfg(tiny_qm9, tmp_path, "_fails_sometimes", 1.0), progress=False, log=logs.append)
    failures = res.reward.failure_summary() if hasattr(res, "reward") else None
    d = res.run_dir
    m = pd.read_csv(d / "metrics.csv")
    assert {"invalid_reward_error", "invalid_reward_nan"} <= set(m.columns)
    text = (d / "report.md").read_text()
    assert "## Reward failures" in text
    rf = pd.read_csv(d / "reward_failures.csv")
    assert int(rf["scored"].iloc[0]) >= 64 + 4 * 16
    assert int(rf["reward_error"].iloc[0]) > 0                # some valid molecules hit the failing branch
    assert "unlucky molecule" in text and sum("reward_error" in s and "Traceback" in s for s in logs) == 1
    assert failures is None or failures["scored"] == int(rf["scored"].iloc[0])
