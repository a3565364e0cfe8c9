"""The 8x8-digit image submodule: shipped models, rewards, prompts through the core, TFFT-left, CLI, benchmark."""
import json
from pathlib import Path

import pandas as pd
import pytest
import torch
import yaml

import tfftmol
from tfftmol.core.adjoint import AdjointMatching, AMConfig, IdentityTransform
from tfftmol.core.config import ConfigError
from tfftmol.core.risk import cvar
from tfftmol.core.tfft import TFFTConfig, offline_batch, run_tfft
from tfftmol.digits.models import (check_prompts, classifier_accuracy, load_digits_data, make_digit_reward,
                                    prompt_schedule, sample_digits)
from tfftmol.image2d.digits_finetune import is_digits_config, load_config
from helpers.bench import load_benchmark

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def flow():
    return tfftmol.load_pretrained("digits-flow")


@pytest.fixture(scope="module")
def clf():
    return tfftmol.load_pretrained("digits-classifier")


# -- shipped models -------------------------------------------------------------------------------
def test_flow_samples_recognisable_digits(flow, clf):
    """The classifier reads the prompt back from the flow's samples (measured: 0.990 at 30 SDE steps)."""
    x, c = sample_digits(flow, 500, steps=30, sampler="sde", seed=11)
    assert x.shape == (500, 64) and torch.equal(c, prompt_schedule(500))
    acc = classifier_accuracy(clf, x, c)
    assert acc >= 0.8, acc
    # and a wrong prompt is read as wrong: shifting the labels by one drops the accuracy to near zero
    assert classifier_accuracy(clf, x, (c + 1) % 10) < 0.1


def test_classifier_card_states_its_held_out_accuracy(clf):
    card = tfftmol.model_card("digits-classifier")
    xte, yte = load_digits_data("test")
    acc = classifier_accuracy(clf, xte, yte)
    assert len(yte) == card["metrics"]["n_test"] == 450
    assert acc == pytest.approx(card["metrics"]["test_accuracy"], abs=1e-6)
    assert acc >= 0.95


def test_shipped_weights_are_small_and_cards_complete():
    for name in ("digits-flow", "digits-classifier"):
        card = tfftmol.model_card(name)
        w = ROOT / "tfftmol" / "digits" / "weights" / f"{name}.safetensors"
        assert w.stat().st_size == card["size_bytes"] < 20e6
        assert card["budget"]["seconds"] > 0 and "load_digits" in card["data"]
    fc = tfftmol.model_card("digits-flow")
    assert fc["metrics"]["by_guidance"]["w=1,sde"]["accuracy_prompt_as_label"] >= 0.8


# -- rewards and prompts ------------------------------------------------------------------------------
@pytest.mark.parametrize("value, ink", [(-1.0, 0.0), (1.0, 1.0), (0.0, 0.5)])
def test_ink_and_contrast_known_values(value, ink):
    x = torch.full((3, 64), value)
    assert torch.allclose(make_digit_reward("ink")(x), torch.full((3,), ink))
    assert torch.allclose(make_digit_reward("contrast")(x), torch.zeros(3), atol=1e-7)
    half = torch.cat([torch.full((1, 32), -1.0), torch.full((1, 32), 1.0)], 1)  # half blank, half black
    assert float(make_digit_reward("contrast")(half)) == pytest.approx((64 / 63) ** 0.5 * 0.5, rel=1e-5)


def test_ink_gradient_is_uniform():
    rb = make_digit_reward("ink").value_and_grad(torch.randn(4, 64))
    assert torch.allclose(rb.grad, torch.full((4, 64), 1 / 128))  # d/dx mean((x + 1) / 2)


def test_alignment_is_log_prob_of_the_scheduled_prompt(clf):
    x, y = load_digits_data("test")
    x, y = x[:40], y[:40]
    r = make_digit_reward("alignment", clf)
    want = torch.log_softmax(clf(x), 1)[torch.arange(40), torch.arange(40) % 10]
    assert torch.allclose(r(x), want, atol=1e-6)
    assert torch.allclose(r.fn_with_prompts(x, y), torch.log_softmax(clf(x), 1)[torch.arange(40), y], atol=1e-6)
    assert float(r.fn_with_prompts(x, y).mean()) > -0.5  # the true labels are well aligned
    assert float(r.fn_with_prompts(x, (y + 5) % 10).mean()) < -3.0  # wrong ones are not
    s = make_digit_reward({"name": "sum", "weights": {"alignment": 1.0, "ink": 2.0}}, clf)
    assert torch.allclose(s(x), r(x) + 2 * make_digit_reward("ink")(x), atol=1e-6)


def test_prompts_reach_the_model_and_the_reward_in_the_same_order(flow, clf):
    """The offline batch is scored per chunk of 1000 by the core; the reward's positional prompts must
    match the flow's cond_sampler, so re-scoring with explicit prompts gives the same values."""
    r = make_digit_reward("alignment", clf)
    x, v, ok, _ = offline_batch(flow, r, 2000, steps=10, sampler="sde", seed=3, cond_sampler=flow.cond_sampler)
    c = prompt_schedule(2000)
    assert torch.allclose(v.float(), r.fn_with_prompts(x, c), atol=1e-5)
    assert torch.allclose(r(x), r.fn_with_prompts(x, c), atol=1e-5)  # the whole concatenation lines up too
    assert classifier_accuracy(clf, x, c) > 0.9


@pytest.mark.parametrize("prompts, ok", [([3], True), ([1, 7], True), ([0, 2, 4, 6, 8], True),
                                         ([1, 2, 3], False), ([1, 1], False), ([10], False)])
def test_prompt_lists_are_checked(prompts, ok):
    if ok:
        assert check_prompts(prompts) == tuple(prompts)
    else:
        with pytest.raises(ValueError, match="prompts"):
            check_prompts(prompts)


def test_subset_of_prompts_generates_only_those(clf):
    f = tfftmol.load_pretrained("digits-flow", prompts=[3, 8])
    x, c = sample_digits(f, 200, steps=20, seed=2)
    assert set(c.tolist()) == {3, 8}
    assert set(clf(x).argmax(1).tolist()) <= {3, 8, 5, 9}  # nearly all 3s and 8s
    assert classifier_accuracy(clf, x, c) > 0.9


def test_one_adjoint_matching_step_changes_the_copy_only(flow, clf):
    r = make_digit_reward("alignment", clf)
    am = AdjointMatching(flow, r, IdentityTransform(), 10.0,
                         AMConfig(steps=1, batch_size=20, time_steps=10, loss_time_steps=3), cond_sampler=flow.cond_sampler)
    before = [p.detach().clone() for p in am.params]
    base_before = [p.detach().clone() for p in flow.parameters()]
    st = am.step()
    assert torch.isfinite(torch.tensor(st.loss)) and st.loss > 0
    assert any(not torch.equal(a, p) for a, p in zip(before, am.params))
    assert all(torch.equal(a, p) for a, p in zip(base_before, flow.parameters()))


# -- TFFT -----------------------------------------------------------------------------------------
@pytest.mark.slow  # 16 s: a short fine-tune
def test_short_left_cvar_run_raises_pooled_left_cvar_of_alignment(flow, clf):
    """60 Adjoint Matching steps of TFFT-left (beta=0.1) on alignment: the pooled left-CVaR_0.1 over
    1000 fresh images (same noise) rises (measured: -0.49 -> -0.18)."""
    r = make_digit_reward("alignment", clf)
    cfg = TFFTConfig(method="tfft", tail="left", beta=0.1, alpha=0.1, offline_samples=2000, offline_steps=20,
                     offline_sampler="sde", bootstrap=0, refine_samples=1000,
                     am=AMConfig(steps=60, batch_size=50, time_steps=20, loss_time_steps=6, lr=3e-4, ema=0.9))
    res = run_tfft(flow, r, cfg, progress=False, cond_sampler=flow.cond_sampler, log=lambda s: None)
    assert res.threshold.tail == "left" and res.threshold.active_fraction > 0.02
    x0, c0 = sample_digits(flow, 1000, steps=20, seed=5)
    x1, c1 = sample_digits(res.model.eval(), 1000, steps=20, seed=5)
    pre = cvar(r.fn_with_prompts(x0, c0), 0.1, "left")
    post = cvar(r.fn_with_prompts(x1, c1), 0.1, "left")
    assert post > pre + 0.1 * abs(pre), (pre, post)


# -- config, CLI and report ---------------------------------------------------------------------------
def _tiny_config(tmp_path, **extra):
    data = yaml.safe_load((ROOT / "configs" / "digits_left.yaml").read_text())
    data.update(name="tiny", eval_samples=200, eval_steps=10, kl_samples=20, grid_per_prompt=3, **extra)
    data["tfft"].update(offline_samples=1000, offline_steps=10, bootstrap=0, refine_samples=500)
    data["tfft"]["am"].update(steps=3, batch_size=20, time_steps=10, loss_time_steps=3)
    p = tmp_path / "digits_tiny.yaml"
    p.write_text(yaml.safe_dump(data))
    return p


@pytest.mark.parametrize("name", ["digits_left.yaml", "digits_ink_right.yaml"])
def test_shipped_image_configs_validate(name):
    path = ROOT / "configs" / name
    assert is_digits_config(path)
    cfg = load_config(path)
    assert cfg.task == "digits" and cfg.options.model == "digits-flow" and cfg.options.prompts == list(range(10))


def test_molecular_configs_are_not_image_configs():
    assert not is_digits_config(ROOT / "configs" / "qed_right.yaml")
    assert not is_digits_config({"model": "qm9-graph"})


@pytest.mark.parametrize("patch, field", [({"prompts": [1, 2, 3]}, "prompts"), ({"reward": {"name": "qed"}}, "reward"),
                                          ({"eval_samples": 205}, "samples"), ({"bogus": 1}, "bogus")])
def test_bad_image_config_names_the_field(patch, field):
    with pytest.raises(ConfigError, match=field):
        load_config({"model": "digits-flow", **patch})


@pytest.mark.slow  # 19 s: a fine-tune through the CLI
def test_finetune_cli_runs_an_image_config_and_writes_the_report(tmp_path, capsys):
    from tfftmol.cli import main

    cfg = _tiny_config(tmp_path)
    rc = main(["finetune", "--config", str(cfg), "--out", str(tmp_path / "runs"), "--quiet"])
    assert rc == 0
    out = capsys.readouterr().out
    assert "tfft" in out and "pretrained" in out
    d = tmp_path / "runs" / "tiny"
    for f in ("report.md", "metrics.csv", "per_prompt.csv", "history.csv", "config.yaml", "model.safetensors"):
        assert (d / f).is_file(), f
    for f in ("grid_before.png", "grid_after.png", "tail_grid.png", "reward_hist.png", "training.png"):
        assert (d / f).stat().st_size > 5000, f
    m = pd.read_csv(d / "metrics.csv")
    assert list(m.method) == ["pretrained", "tfft"]  # one label vocabulary for every task
    assert {"reward_cvar_left_0.1", "reward_cvar_right_0.9", "worst_prompt_align_mean", "diversity"} <= set(m.columns)
    pp = pd.read_csv(d / "per_prompt.csv")
    assert len(pp) == 20 and sorted(set(pp.prompt)) == list(range(10))
    assert (pp.n == 20).all()  # 200 images, 10 prompts round-robin
    report = (d / "report.md").read_text()
    assert "grid_before.png" in report and "Per prompt" in report and "Stage 1" in report


@pytest.mark.slow  # 18 s: a fine-tune through the Python API
def test_python_finetune_dispatches_image_configs(tmp_path):
    res = tfftmol.finetune(_tiny_config(tmp_path, out_dir=str(tmp_path / "r")), progress=False, log=lambda s: None)
    assert res.metrics.shape[0] == 2 and res.eta is not None
    assert json.loads(json.dumps(res.timings))["total"] > 0


# -- benchmark --------------------------------------------------------------------------------------
@pytest.mark.slow  # 25 s: benchmarks/images.py --quick
def test_images_benchmark_quick(tmp_path):
    mod = load_benchmark("images")
    table = mod.main(["--quick", "--quiet", "--out", str(tmp_path)])
    assert list(table.method) == ["pretrained", "expected", "tfft-right", "tfft-left"]
    t = pd.read_csv(tmp_path / "images.csv")
    for col in ("mean", "cvar_left_0.1", "cvar_right_0.9", "worst_prompt_mean", "diversity", "wall_s"):
        assert col in t.columns and t[col].notna().all(), col
    assert (t["cvar_left_0.1"] <= t["mean"] + 1e-9).all() and (t["mean"] <= t["cvar_right_0.9"] + 1e-9).all()
    assert (t.worst_prompt_mean <= t["mean"] + 1e-9).all()
    assert (tmp_path / "images.md").read_text().startswith("# Images")
    assert (tmp_path / "images.png").stat().st_size > 10000
    assert (tmp_path / "images_tail.png").stat().st_size > 10000


def test_offline_cache_key_follows_weights_guidance_and_prompts(flow):
    import copy

    from tfftmol.core.tfft import model_fingerprint

    k0 = model_fingerprint(flow)
    assert model_fingerprint(tfftmol.load_pretrained("digits-flow")) == k0
    assert model_fingerprint(tfftmol.load_pretrained("digits-flow", guidance=2.0)) != k0
    assert model_fingerprint(tfftmol.load_pretrained("digits-flow", prompts=[3, 8])) != k0
    tuned = copy.deepcopy(flow)
    with torch.no_grad():
        tuned.net[0].bias += 0.01
    assert model_fingerprint(tuned) != k0
