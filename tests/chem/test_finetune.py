"""End-to-end molecular fine-tuning on a tiny randomly initialised QM9 graph flow (CPU, seconds per run)."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
import yaml

from tfftmol.chem import finetune as ft
from tfftmol.chem.model import GraphTransformerConfig
from tfftmol.chem.qm9_model import QM9GraphFlow, save_qm9_graph
from tfftmol.core.config import ConfigError
from tfftmol.chem.rewards import build_reward
from tfftmol.chem.surrogate import Surrogate

ROOT = Path(__file__).resolve().parents[2]
REPORT_FILES = ["report.md", "metrics.csv", "samples.csv", "model.safetensors", "config.yaml", "reward_hist.png",
                "tails_top.png", "tails_bottom.png", "training.png"]


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory) -> str:
    torch.manual_seed(0)
    model = QM9GraphFlow(GraphTransformerConfig(d_node=16, d_edge=8, n_layers=1, n_heads=2, ff_mult=1,
                                                edge_ff_mult=1))
    path = tmp_path_factory.mktemp("model") / "tiny.safetensors"
    save_qm9_graph(model, path)
    return str(path)


def tiny_config(model: str, out: Path, name: str = "tiny", **over) -> dict:
    cfg = {
        "name": name, "model": model, "reward": {"name": "qed"},
        "tfft": {"method": "tfft", "tail": "right", "beta": 0.9, "alpha": 1.0, "offline_samples": 64,
                 "offline_steps": 5, "offline_sampler": "ode", "bootstrap": 0, "refine_samples": 32,
                 "am": {"steps": 6, "batch_size": 16, "time_steps": 6, "loss_time_steps": 3, "lr": 1e-2,
                        "terminal_time": 0.5}},
        "surrogate": {"hidden": 16, "layers": 1, "heads": 2, "epochs": 2, "refit_epochs": 1, "batch_size": 32},
        "refit_every": 2, "eval_samples": 48, "eval_steps": 5, "kl_samples": 16, "out_dir": str(out),
        "checkpoint_every": 2, "threads": 1,
    }
    cfg.update(over)
    return cfg


@pytest.fixture(scope="module")
def first_run(tiny_model, tmp_path_factory):
    out = tmp_path_factory.mktemp("runs")
    lines: list[str] = []
    res = ft.finetune(tiny_config(tiny_model, out), progress=False, log=lines.append)
    return res, lines, out


def test_end_to_end_writes_every_report_file(first_run):
    res, lines, _ = first_run
    for f in REPORT_FILES:
        assert (res.run_dir / f).is_file() and (res.run_dir / f).stat().st_size > 0, f
    metrics = pd.read_csv(res.run_dir / "metrics.csv")
    assert list(metrics["method"]) == ["pretrained", "tfft"]
    for col in ["validity", "uniqueness", "novelty", "int_div", "reward_mean", "reward_cvar_right_0.9",
                "reward_cvar_left_0.1", "kl", "eta"]:
        assert col in metrics.columns, col
    samples = pd.read_csv(res.run_dir / "samples.csv", keep_default_na=False)
    assert list(samples.columns) == ["smiles", "reward", "valid", "reason", "raw"] and len(samples) == 48
    assert np.isfinite(res.kl) and res.kl >= 0
    assert any("TFFT threshold" in line for line in lines)  # stage-1 diagnostics were printed
    assert any(line.startswith("surrogate refit") for line in lines)
    assert ft.load_config(res.run_dir / "config.yaml").name == "tiny"
    text = (res.run_dir / "report.md").read_text()
    assert "Before and after" in text and "eta*" in text


def test_offline_batch_cache_is_reused(first_run, tiny_model, monkeypatch):
    _, lines, out = first_run
    assert any("samples (sampled)" in line for line in lines)
    cache = sorted((out / "cache").glob("offline-*.safetensors"))
    assert len(cache) == 1
    mtime = cache[0].stat().st_mtime_ns

    import tfftmol.core.offline as core_offline

    def no_sampling(*a, **k):
        raise AssertionError("the offline batch was recomputed")

    monkeypatch.setattr(core_offline, "sample", no_sampling)  # the offline batch's sampler
    lines2: list[str] = []
    cfg = tiny_config(tiny_model, out, name="tiny-again", eval_samples=8, kl_samples=0)
    cfg["tfft"]["am"]["steps"] = 1
    ft.finetune(cfg, progress=False, log=lines2.append)
    assert any("samples (cached)" in line for line in lines2)
    assert sorted((out / "cache").glob("offline-*.safetensors")) == cache
    assert cache[0].stat().st_mtime_ns == mtime


@pytest.mark.parametrize("patch, field", [
    ({"learning_rate": 0.1}, "learning_rate"),
    ({"tfft": {"beta": 1.5}}, "beta"),
    ({"tfft": {"am": {"stepz": 3}}}, "stepz"),
    ({"reward": {"name": "no_such_reward"}}, "no_such_reward"),
    ({"surrogate": {"hidden": 10, "heads": 4}}, "heads"),
    ({"eval_sampler": "rk4"}, "sampler"),
])
def test_bad_config_fails_before_any_compute(tiny_model, tmp_path, monkeypatch, patch, field):
    cfg = tiny_config(tiny_model, tmp_path / "runs")
    for k, v in patch.items():
        if isinstance(v, dict) and isinstance(cfg.get(k), dict) and k != "reward":
            cfg[k] = {**cfg[k], **v}
        else:
            cfg[k] = v

    def no_compute(*a, **k):
        raise AssertionError("compute started before the config was validated")

    import importlib

    import tfftmol.chem.task as chem_task

    pipeline_run = importlib.import_module("tfftmol.pipeline.run")  # the module, not the function it exports

    monkeypatch.setattr(chem_task, "load_base", no_compute)
    monkeypatch.setattr(pipeline_run, "run_tfft", no_compute)
    with pytest.raises(ConfigError) as err:
        ft.finetune(cfg, progress=False, log=lambda s: None)
    assert field in str(err.value)
    if field == "no_such_reward":
        assert "reward" in str(err.value)
    assert not (tmp_path / "runs").exists()


def test_bad_config_file_from_cli_names_the_field(tiny_model, tmp_path):
    from tfftmol.cli import main

    cfg = tiny_config(tiny_model, tmp_path / "runs")
    cfg["tfft"]["beta"] = 1.5
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump(cfg))
    with pytest.raises(SystemExit) as err:
        main(["finetune", "--config", str(path)])
    assert "beta" in str(err.value)


_KILL_SCRIPT = textwrap.dedent("""
    import sys, time
    from pathlib import Path
    from tfftmol.chem.finetune import finetune
    cfg, marker, at = sys.argv[1], Path(sys.argv[2]), int(sys.argv[3])

    def hang(trainer, stats):
        if trainer.step_count == at:        # the checkpoint of step at - 1 is on disk
            marker.write_text("ready")
            time.sleep(600)                 # killed here, in the middle of stage 2

    finetune(cfg, progress=False, callbacks=[hang])
""")


@pytest.mark.slow  # 22 s: a SIGKILLed run and its resume in subprocesses
def test_sigkill_during_stage2_then_resume_matches_uninterrupted(tiny_model, tmp_path):
    out = tmp_path / "runs"
    cfg = tiny_config(tiny_model, out, name="killed", refit_every=3, checkpoint_every=2)
    # the expected-reward baseline: every sample carries gradient, so the weights move at every step
    # (the tiny random model's on-policy samples rarely reach a TFFT tail)
    cfg["tfft"]["method"] = "expected"
    cfg["tfft"]["am"]["steps"] = 8
    cfg_path = tmp_path / "killed.yaml"
    cfg_path.write_text(yaml.safe_dump(cfg))
    script = tmp_path / "run.py"
    script.write_text(_KILL_SCRIPT)
    marker = tmp_path / "marker"
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen([sys.executable, str(script), str(cfg_path), str(marker), "5"], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        deadline = time.time() + 300         # generous: a loaded machine is slow to import and sample
        while not marker.exists():
            assert proc.poll() is None, proc.stderr.read().decode()[-2000:]
            assert time.time() < deadline, "the run never reached stage 2"
            time.sleep(0.2)
        assert (out / "killed" / "checkpoint" / "state.json").exists()
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == -signal.SIGKILL
    assert not (out / "killed" / "metrics.csv").exists()

    lines: list[str] = []
    resumed = ft.finetune(cfg_path, resume=True, progress=False, log=lines.append)
    assert any("resumed from checkpoint at step 4" in line for line in lines)
    assert any("surrogate: restored" in line for line in lines)
    straight = ft.finetune({**cfg, "name": "straight"}, progress=False, log=lambda s: None)

    cols = [c for c in resumed.metrics.columns if c not in ("run", "train_seconds")]
    a, b = resumed.metrics[cols], straight.metrics[cols]
    num = a.select_dtypes("number").columns
    np.testing.assert_allclose(a[num].to_numpy(float), b[num].to_numpy(float), rtol=1e-5, atol=1e-7)
    assert list(a["method"]) == list(b["method"])
    assert list(resumed.samples["smiles"]) == list(straight.samples["smiles"])
    assert resumed.kl > 0


def test_surrogate_state_survives_a_checkpoint(tmp_path):
    """A restored MolecularReward refits to the same surrogate as the original (resume determinism)."""
    from tfftmol.chem.graph import decode
    from tfftmol.chem.rewards import build_reward
    from tfftmol.chem.surrogate import Surrogate
    from tfftmol.core.checkpoint import load_checkpoint, save_checkpoint

    gen = torch.Generator().manual_seed(0)
    x = torch.randn(64, 189, generator=gen)
    values = torch.linspace(0.0, 1.0, 64, dtype=torch.float64)
    valid = torch.ones(64, dtype=torch.bool)
    valid[::5] = False
    values[~valid] = -0.5

    def make():
        sur = Surrogate(hidden=16, layers=1, heads=2, batch_size=32, seed=3)
        return ft.MolecularReward(build_reward({"name": "qed"}), decode, sur, ft.SurrogateConfig(
            hidden=16, layers=1, heads=2, epochs=2, refit_epochs=1), refit_every=1, log=lambda s: None)

    a = make()
    a.fit_offline(x, values, valid)
    a._pending = [(x[:32].clone(), values[:32].clone(), valid[:32].clone())]
    save_checkpoint(tmp_path, {"extra": {"mol_reward": a.state()}})
    b = make()
    b.load_state(load_checkpoint(tmp_path)["extra"]["mol_reward"])
    x_new = torch.randn(16, 189, generator=gen)
    for r in (a, b):
        r._pending.append((x_new, values[:16], valid[:16]))
        r.refit(step=1)
    torch.testing.assert_close(a.surrogate.predict(x_new), b.surrogate.predict(x_new))
    assert [(r["step"], r["kind"]) for r in b.reports] == [(0, "fit"), (1, "refit")]
    assert b.reports[1]["r2"] == pytest.approx(a.reports[1]["r2"], nan_ok=True)


@pytest.mark.slow  # 131 s: benchmarks/property_targets.py --quick in a subprocess
def test_property_targets_benchmark_quick(tiny_model, tmp_path):
    out, runs = tmp_path / "results", tmp_path / "runs"
    proc = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "property_targets.py"), "--quick",
                           "--model", tiny_model, "--out", str(out), "--runs", str(runs), "--jobs", "2"],
                          env={**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"},
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    df = pd.read_csv(out / "property_targets.csv")
    assert set(df["target"]) == {"qed_right", "qed_left_validity", "gap_right", "sa_left"}
    assert set(df["method"]) == {"pretrained", "expected", "tfft"} and set(df["seed"]) == {0, 1}
    for col in ["reward_mean", "reward_cvar_right_0.9", "reward_cvar_left_0.1", "validity", "uniqueness",
                "novelty", "int_div", "kl", "train_seconds"]:
        assert col in df.columns, col
    # equal budgets: the same alpha and number of steps for both fine-tunes of a target
    ft_rows = df[df.method != "pretrained"]
    assert (ft_rows.groupby("target")[["alpha", "steps"]].nunique() == 1).all().all()
    md = (out / "property_targets.md").read_text()
    assert "±" in md and "time_ratio_tfft_over_expected" in md and "Quick mode" in md
    assert (out / "property_targets.png").stat().st_size > 0


def test_cli_finetune_prints_the_before_after_table(tiny_model, tmp_path, capsys):
    from tfftmol.cli import main

    cfg = tiny_config(tiny_model, tmp_path / "runs", name="cli", eval_samples=16, kl_samples=0)
    cfg["tfft"]["am"]["steps"] = 2
    path = tmp_path / "cli.yaml"
    path.write_text(yaml.safe_dump(cfg))
    out = tmp_path / "elsewhere"
    assert main(["finetune", "--config", str(path), "--out", str(out), "--quiet"]) == 0
    printed = capsys.readouterr().out
    assert "pretrained" in printed and "reward_cvar_right_0.9" in printed
    assert (out / "cli" / "report.md").is_file()
    # a finished run resumed is evaluated again without training
    assert main(["finetune", "--config", str(path), "--out", str(out), "--quiet", "--resume"]) == 0
    assert "resumed from checkpoint at step 2" in capsys.readouterr().out


@pytest.mark.parametrize("name, reward, tail, beta", [
    ("qed_right", "qed", "right", 0.9),
    ("qed_left_validity", "qed", "left", 0.1),
    ("gap_right", "qm9_gap", "right", 0.9),
    ("sa_left", "sa", "left", 0.1),
])
def test_shipped_configs_validate(name, reward, tail, beta, capsys):
    from tfftmol.cli import main

    cfg = ft.load_config(ROOT / "configs" / f"{name}.yaml")
    assert (cfg.task, cfg.name, cfg.options.model, cfg.options.reward["name"], cfg.tfft.tail, cfg.tfft.beta) == \
        ("molecule", name, "qm9-graph", reward, tail, beta)
    if name == "sa_left":  # lower SA is better: the reward is -SA
        assert cfg.options.reward["transform"] == [{"affine": {"scale": -1.0}}]
    assert main(["finetune", "--config", str(ROOT / "configs" / f"{name}.yaml"), "--check"]) == 0
    assert "config OK" in capsys.readouterr().out


def test_denoised_copies_are_keyed_and_the_surrogate_trains_on_them(tiny_model):
    base = ft.load_base(tiny_model)
    x1 = torch.randn(40, 189)
    fn = ft.denoised_copies(base, 0.5, seed=3)
    a, b, c = fn(x1, 7), fn(x1, 7), fn(x1, 8)
    torch.testing.assert_close(a, b)                       # same key, same noise: resumable
    assert not torch.allclose(a, c) and a.shape == x1.shape
    # the posterior mean of x_t = 0.5 x1 + 0.5 eps under the base flow, by hand
    eps = torch.randn(x1.shape, generator=torch.Generator().manual_seed(3 * 1_000_003 + 7))
    xt = 0.5 * x1 + 0.5 * eps
    with torch.no_grad():
        ref = xt + 0.5 * base.velocity(xt, torch.full((40,), 0.5))
    torch.testing.assert_close(a, ref)
    seen = []

    class Spy(Surrogate):
        def fit(self, x, y, valid=None, **kw):
            seen.append(x.shape[0])
            return super().fit(x, y, valid, **kw)

    mr = ft.MolecularReward(build_reward("qed"), base.decode, Spy(hidden=16, layers=1, heads=2, seed=0),
                            ft.SurrogateConfig(hidden=16, layers=1, heads=2, epochs=1), denoise=fn, log=lambda s: None)
    values = torch.linspace(0, 1, 40, dtype=torch.float64)
    mr.fit_offline(x1, values, torch.ones(40, dtype=torch.bool))
    assert seen == [80]                                    # the 40 states and their 40 denoised copies


def test_noised_copies_are_the_linear_path_state_and_a_noisy_terminal_state_trains_on_them(tiny_model, tmp_path):
    from tfftmol.chem.task import MoleculeTask, noised_copies
    from tfftmol.pipeline import load_run_config

    x1 = torch.randn(40, 189)
    fn = noised_copies(0.7, seed=3)
    eps = torch.randn(x1.shape, generator=torch.Generator().manual_seed(3 * 1_000_003 + 7))
    torch.testing.assert_close(fn(x1, 7), 0.7 * x1 + 0.3 * eps)  # same keying as denoised_copies
    assert not torch.allclose(fn(x1, 7), fn(x1, 8))
    # the task gives the surrogate noisy copies with terminal_state: noisy, denoised ones by default
    base = ft.load_base(tiny_model)
    made = {}
    for state in ("noisy", "denoised"):
        cfg = load_run_config({"task": "molecule", "name": f"t_{state}", "out_dir": str(tmp_path), "seed": 3,
                               "tfft": {"am": {"terminal_time": 0.7, "terminal_state": state}},
                               "options": {"model": tiny_model, "reward": {"name": "qed"}}})
        made[state] = MoleculeTask().build_reward(cfg, base, torch.device("cpu"), lambda s: None).denoise(x1, 7)
    torch.testing.assert_close(made["noisy"], fn(x1, 7))
    torch.testing.assert_close(made["denoised"], ft.denoised_copies(base, 0.7, seed=3)(x1, 7))


def test_molecule_grid_is_written_with_the_notebook_renderer_installed(tmp_path):
    """Inside Jupyter, RDKit's IPython renderer makes MolsToGridImage return an IPython Image."""
    from rdkit.Chem.Draw import IPythonConsole

    df = pd.DataFrame({"smiles": ["CCO", "c1ccccc1O", ""], "reward": [0.4, 0.5, -0.5]})
    IPythonConsole.InstallIPythonRenderer()
    try:
        from rdkit.Chem import Draw

        img = Draw.MolsToGridImage([__import__("rdkit.Chem", fromlist=["x"]).MolFromSmiles("CC")])
        assert not hasattr(img, "save")                      # the renderer really is active
        from tfftmol.chem.task import _grid

        _grid(df, tmp_path / "grid.png", "top")
    finally:
        IPythonConsole.UninstallIPythonRenderer()
    assert (tmp_path / "grid.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
