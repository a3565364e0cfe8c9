"""TFFT on the drug-like latent flow: the latent surrogate, its ZINC250k warm start, and latent runs
through the one pipeline.

The fast tests use a tiny randomly initialised ``ZincSelfiesFlow`` (real SELFIES vocabulary, real
RDKit rewards); the slow test uses the shipped ``zinc-selfies`` weights and is skipped without them.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from tfftmol.chem.latent_reward import LatentSurrogate, warm_start_data
from tfftmol.chem.rewards import build_reward
from tfftmol.chem.rewards.guacamol import FEXOFENADINE, OSIMERTINIB
from tfftmol.chem.selfies import SelfiesVocab, ZincSelfiesFlow, load_zinc_selfies, save_zinc_selfies
from tfftmol.chem.selfies.autoencoder import SelfiesVAE, VAEConfig
from tfftmol.chem.selfies.latent_flow import FlowConfig, LatentVelocityMLP
from tfftmol.chem.selfies.loader import WEIGHTS_PATH
from tfftmol.chem.task import MolecularReward, is_latent, load_base
from tfftmol.core.config import ConfigError
from tfftmol.pipeline import run
from tfftmol.pipeline.config import load_run_config

ROOT = Path(__file__).resolve().parents[2]
DIM = 8
ZINC_CONFIGS = {"zinc_qed_right": ("right", 0.9), "zinc_mpo_right": ("right", 0.9),
                "zinc_sa_left": ("left", 0.1), "zinc_logp_window_left": ("left", 0.1),
                "zinc_osimertinib_mpo_right": ("right", 0.9), "zinc_fexofenadine_mpo_right": ("right", 0.9)}
# the GuacaMol/PMO objectives of the drug-like configs, and the drug each one is built around
GUACAMOL_CONFIGS = {"zinc_osimertinib_mpo_right": ("osimertinib_mpo", OSIMERTINIB),
                    "zinc_fexofenadine_mpo_right": ("fexofenadine_mpo", FEXOFENADINE)}


def tiny_flow(seed: int = 0) -> ZincSelfiesFlow:
    torch.manual_seed(seed)
    voc = SelfiesVocab.load()
    vae = SelfiesVAE(VAEConfig(vocab_size=len(voc), max_len=voc.max_len, emb_dim=8, enc_hidden=16, dec_hidden=16,
                               latent_dim=DIM))
    net = LatentVelocityMLP(FlowConfig(dim=DIM, width=16, depth=1, t_dim=8))
    return ZincSelfiesFlow(vae, net, voc, torch.zeros(DIM), torch.ones(DIM)).eval()


@pytest.fixture(scope="module")
def tiny_path(tmp_path_factory) -> str:
    path = tmp_path_factory.mktemp("zinc_model") / "tiny-zinc.safetensors"
    save_zinc_selfies(tiny_flow(), path)
    return str(path)


def tiny_config(model: str, out: Path, name: str = "tiny_zinc", **over) -> dict:
    cfg = {
        "task": "molecule", "name": name, "seed": 0, "out_dir": str(out), "threads": 1, "checkpoint_every": 50,
        "eval": {"samples": 200, "steps": 10, "kl_samples": 16},
        "tfft": {"method": "tfft", "tail": "right", "beta": 0.9, "alpha": 0.5, "offline_samples": 500,
                 "offline_steps": 10, "offline_sampler": "sde", "bootstrap": 0, "refine_samples": 200,
                 "am": {"steps": 20, "batch_size": 32, "time_steps": 10, "loss_time_steps": 5, "lr": 3e-3,
                        "terminal_time": 1.0}},
        "options": {"model": model, "reward": {"name": "mw"}, "warm_start": 500,
                    "surrogate": {"hidden": 64, "layers": 2, "epochs": 20, "refit_epochs": 2, "batch_size": 64},
                    "refit_every": 10},
    }
    for k, v in over.items():
        if isinstance(v, dict) and isinstance(cfg.get(k), dict):
            cfg[k] = {**cfg[k], **v}
        else:
            cfg[k] = v
    return cfg


# -- the latent surrogate -------------------------------------------------------------------------
def _known(x: torch.Tensor) -> np.ndarray:
    return (x[:, 0] - 0.5 * x[:, 1] ** 2 + 0.3 * x[:, 2] * x[:, 3]).numpy().astype(np.float64)


def test_latent_surrogate_fit_reduces_error_and_gradient_points_uphill():
    torch.set_num_threads(1)
    g = torch.Generator().manual_seed(0)
    x = torch.randn(3000, DIM, generator=g)
    y = _known(x)
    x_test = torch.randn(500, DIM, generator=g)
    y_test = _known(x_test)
    base_mae = float(np.mean(np.abs(y_test - y[:2000].mean())))  # predicting the mean
    sur = LatentSurrogate(DIM, hidden=64, layers=2, lr=3e-3, batch_size=128, seed=0)
    rep = sur.fit(x[:2000], y[:2000], epochs=40, valid_fraction=0.2, patience=5)
    mae = float(np.mean(np.abs(sur.predict(x_test).numpy() - y_test)))
    assert mae < 0.35 * base_mae, (mae, base_mae)
    assert rep.r2 > 0.8 and rep.spearman > 0.9, rep
    # gradient of the known function: (1, -x1, 0.3 x3, 0.3 x2, 0, ...)
    vals, grad = sur.grad(x_test)
    assert grad.shape == x_test.shape and vals.shape == (500,)
    true_g = torch.zeros_like(x_test)
    true_g[:, 0] = 1.0
    true_g[:, 1] = -x_test[:, 1]
    true_g[:, 2], true_g[:, 3] = 0.3 * x_test[:, 3], 0.3 * x_test[:, 2]
    cos = torch.nn.functional.cosine_similarity(grad, true_g, dim=1)
    assert float(cos.median()) > 0.8, float(cos.median())
    # a refit on fresh samples (with replay) keeps it accurate
    rep2 = sur.refit(x[2000:], y[2000:], epochs=3)
    assert rep2.r2 > 0.7, rep2


def test_latent_surrogate_hurdle_state_round_trip_and_bad_input():
    g = torch.Generator().manual_seed(1)
    x = torch.randn(400, DIM, generator=g)
    y = _known(x)
    valid = x[:, 4].numpy() > -1.0  # ~84% valid
    y[~valid] = -5.0
    sur = LatentSurrogate(DIM, hidden=32, layers=2, seed=3)
    sur.fit(x, y, valid, epochs=5)
    assert sur.hurdle and sur.penalty == -5.0
    other = LatentSurrogate(DIM, hidden=32, layers=2, seed=99)
    other.load_state_dict(sur.state_dict())
    assert torch.allclose(other.predict(x), sur.predict(x))
    assert other.penalty == sur.penalty and other._buffer[0].shape == sur._buffer[0].shape
    with pytest.raises(ValueError, match=r"shape \(B, 8\)"):
        sur.fit(torch.randn(10, DIM + 1), np.zeros(10))
    with pytest.raises(ValueError, match="finite"):
        sur.fit(x[:10], np.full(10, np.nan))


def test_warm_start_pairs_enter_training_not_the_held_out_report():
    g = torch.Generator().manual_seed(2)
    xw, x = torch.randn(1000, DIM, generator=g), torch.randn(200, DIM, generator=g)
    sur = LatentSurrogate(DIM, hidden=32, layers=2, seed=0)
    sur.set_warm_start(xw, _known(xw))
    rep = sur.fit(x, _known(x), epochs=3, valid_fraction=0.25)
    assert sur.warm_size == 1000
    assert rep.n_train == 1000 + 150 and rep.n_valid == 50
    cold = LatentSurrogate(DIM, hidden=32, layers=2, seed=0)
    rep_cold = cold.fit(x, _known(x), epochs=3, valid_fraction=0.25)
    assert rep.r2 > rep_cold.r2  # the warm start helps a short fit on few samples


def test_warm_start_data_encodes_labels_and_caches(tmp_path):
    model = tiny_flow()
    reward = build_reward({"name": "qed"})
    lines: list[str] = []
    x, v, ok = warm_start_data(model, reward, 64, tmp_path, log=lines.append)
    assert x.shape == (64, DIM) and x.dtype == torch.float32 and v.shape == (64,) and ok.dtype == bool
    dec = model.decode(x)  # labels are the reward of the decoded latents
    res = reward(dec)
    np.testing.assert_allclose(v, res.values)
    np.testing.assert_array_equal(ok, res.valid)
    files = list((tmp_path / "latent_warm").glob("*.npz"))
    assert len(files) == 1
    x2, v2, ok2 = warm_start_data(model, reward, 64, tmp_path, log=lines.append)
    assert "cached" in lines[-1]
    assert torch.equal(x, x2) and np.array_equal(v, v2) and np.array_equal(ok, ok2)
    # another reward, n or label mode is another cache entry; data labels score the ZINC molecules (all valid)
    _, vd, okd = warm_start_data(model, reward, 64, tmp_path, labels="data", log=lines.append)
    assert okd.all() and len(list((tmp_path / "latent_warm").glob("*.npz"))) == 2
    with pytest.raises(ValueError, match="labels"):
        warm_start_data(model, reward, 8, None, labels="smiles")


def test_molecular_reward_on_latents_true_values_surrogate_gradient():
    model = tiny_flow()
    reward = build_reward({"name": "mw"})
    sur = LatentSurrogate(DIM, hidden=32, layers=2, seed=0)
    mr = MolecularReward(reward, model.decode, sur, refit_every=0, log=lambda s: None)
    x = model.sample_latents(128, steps=5, seed=0)
    rb = mr.evaluate(x)
    mr.fit_offline(x, rb.values, rb.valid)
    out = mr.value_and_grad(x[:16])
    assert torch.equal(out.values, rb.values[:16])  # values are the true ones
    assert out.grad.shape == (16, DIM) and torch.isfinite(out.grad).all()


# -- configs and the task ---------------------------------------------------------------------------
@pytest.mark.parametrize("name", sorted(ZINC_CONFIGS))
def test_zinc_configs_validate(name):
    cfg = load_run_config(ROOT / "configs" / f"{name}.yaml")
    tail, beta = ZINC_CONFIGS[name]
    assert cfg.task == "molecule" and cfg.name == name and cfg.options.model == "zinc-selfies"
    assert (cfg.tfft.tail, cfg.tfft.beta) == (tail, beta)
    assert cfg.tfft.am.terminal_time == 1.0  # exact Adjoint Matching in latent space
    assert cfg.options.warm_start_size > 0
    r = build_reward(dict(cfg.options.reward))
    vals = r(["CC(=O)Nc1ccc(O)cc1", "CCCCCCCCCCCCCCCCCCCC"]).values  # paracetamol, eicosane
    if name == "zinc_logp_window_left":
        assert vals[0] == 0.0 and vals[1] < -3.5  # logP 1.35 inside [1, 4]; 8.05 is 4.05 outside
    if name == "zinc_sa_left":
        assert np.all(vals < 0)
    if name in GUACAMOL_CONFIGS:
        objective, drug = GUACAMOL_CONFIGS[name]
        assert dict(cfg.options.reward) == {"name": objective}
        assert np.all((vals >= 0) & (vals <= 1))
        assert r([drug]).values[0] > vals[0]  # the drug's neighbourhood scores above paracetamol
        assert 0.1 <= cfg.tfft.alpha <= 0.3  # the header's stage-1 prediction is at this alpha (KL ~0.2)


def test_warm_start_option_defaults_and_errors(tiny_path, tmp_path):
    assert load_run_config(tiny_config(tiny_path, tmp_path, options={"warm_start": None})).options.warm_start_size \
        == 30000
    assert is_latent(tiny_path) and is_latent("zinc-selfies") and not is_latent("qm9-graph")
    qm9 = load_run_config({"task": "molecule", "options": {"model": "qm9-graph"}})
    assert qm9.options.warm_start_size == 0
    with pytest.raises(ConfigError, match="warm_start"):
        load_run_config({"task": "molecule", "options": {"model": "qm9-graph", "warm_start": 100}})
    with pytest.raises(ConfigError, match="warm_labels"):
        load_run_config(tiny_config(tiny_path, tmp_path, options={"warm_labels": "smiles"}))


def test_decode_beam_option_reaches_the_model_the_report_and_the_saved_weights(tiny_path, tmp_path):
    with pytest.raises(ConfigError, match="decode_beam"):
        load_run_config({"task": "molecule", "options": {"model": "qm9-graph", "decode_beam": 4}})
    with pytest.raises(ConfigError, match="decode_beam"):
        load_run_config(tiny_config(tiny_path, tmp_path, options={"decode_beam": 0}))
    torch.set_num_threads(1)
    cfg = tiny_config(tiny_path, tmp_path, name="tiny_beam", options={"decode_beam": 2, "warm_start": 0},
                      tfft={"am": {"steps": 2}}, eval={"samples": 50, "kl_samples": 8})
    res = run(cfg, progress=False, log=lambda s: None)
    assert res.model.decode_beam == 2
    assert "decoder: beam search, 2 beams" in (res.run_dir / "report.md").read_text()
    assert load_base(str(res.run_dir / "model.safetensors")).decode_beam == 2


# -- a latent TFFT run through the pipeline ----------------------------------------------------------
def test_latent_tfft_run_through_pipeline_moves_right_cvar(tiny_path, tmp_path):
    """Exact latent Adjoint Matching with the warm-started latent surrogate lifts the right tail of molecular
    weight on the tiny random flow (MW follows the decoded length, a smooth function of the latent)."""
    torch.set_num_threads(1)
    lines: list[str] = []
    res = run(tiny_config(tiny_path, tmp_path), progress=False, log=lines.append)
    m = pd.read_csv(res.run_dir / "metrics.csv")
    assert list(m["method"]) == ["pretrained", "tfft"]
    for col in ["validity", "uniqueness", "novelty", "reward_cvar_right_0.9", "kl", "cvar_predicted", "kl_predicted",
                "realisation"]:
        assert col in m.columns, col
    pre, post = m["reward_cvar_right_0.9"]
    assert post > 1.1 * pre, (pre, post)
    assert any("warm start: 500 encoded ZINC250k" in line for line in lines)
    assert any(line.startswith("surrogate refit") for line in lines)
    assert isinstance(res.tfft.trainer.reward.surrogate, LatentSurrogate)
    for f in ["report.md", "samples.csv", "surrogate.csv", "model.safetensors", "tails_top.png"]:
        assert (res.run_dir / f).is_file(), f
    # the labelled molecule grids of both tails are in the report, drawn from real molecules (not the
    # "no valid molecule" placeholder): 12 per grid by default, 6 per row of 220 px
    from PIL import Image
    report = (res.run_dir / "report.md").read_text()
    for f, alt in [("tails_top.png", "top tail"), ("tails_bottom.png", "bottom tail")]:
        assert f"![{alt}]({f})" in report, f
        with Image.open(res.run_dir / f) as img:
            assert img.size[0] >= 6 * 220 and img.size[1] >= 2 * 200, (f, img.size)
    top = pd.read_csv(res.run_dir / "top.csv")
    assert (top.loc[top["model"] == "tfft", "end"] == "top").sum() >= 12
    tuned = load_base(str(res.run_dir / "model.safetensors"))  # the fine-tuned model is a zinc-selfies model
    assert isinstance(tuned, ZincSelfiesFlow)
    x = torch.randn(4, DIM)
    t = torch.full((4,), 0.5)
    assert torch.allclose(tuned.velocity(x, t), res.model.velocity(x, t), atol=1e-6)


# -- the shipped model ------------------------------------------------------------------------------
@pytest.mark.slow
@pytest.mark.skipif(not WEIGHTS_PATH.exists(), reason="zinc-selfies weights not trained yet")
def test_short_right_cvar_run_on_zinc_selfies_moves_the_tail(tmp_path):
    """configs/zinc_osimertinib_mpo_right.yaml at a smaller budget (60 steps, about 50 s on one thread) raises
    the right-CVaR_0.9 of osimertinib MPO clearly (the tail frontier's demo budget: +0.13 on each of 3 seeds)
    and keeps validity and uniqueness.  At this budget seeds 0, 1, 2 gave +0.080, +0.123, +0.089; the test
    runs seed 0 (the config's).

    Not QED: on the shipped model QED's top 10% already averages about 0.915 of QED's maximum 0.948 and its
    latent surrogate knows little about that tail, so a short run moves it by less than the evaluation noise
    (seed 0 at this budget: -0.0005 at alpha 0.03; the tail frontier at alpha 0.1: -0.0025, +0.0067, +0.0040
    on seeds 0-2)."""
    torch.set_num_threads(1)
    cfg = load_run_config(ROOT / "configs" / "zinc_osimertinib_mpo_right.yaml", out_dir=str(tmp_path),
                          cache_dir=str(tmp_path / "cache"))
    d = cfg.to_dict()
    d["eval"].update(samples=600, kl_samples=200)
    d["tfft"].update(offline_samples=2000, refine_samples=1000, bootstrap=0)
    d["tfft"]["am"].update(steps=60)
    d["options"].update(warm_start=2000)
    res = run(d, progress=False, log=lambda s: None)
    m = res.metrics
    pre, post = m["reward_cvar_right_0.9"]
    assert post > pre + 0.03, (pre, post)
    assert m["validity"].iloc[1] >= 0.95 * m["validity"].iloc[0]
    assert m["uniqueness"].iloc[1] >= 0.95 * m["uniqueness"].iloc[0]
    assert isinstance(load_zinc_selfies(), ZincSelfiesFlow)


# -- decoder smoothness -------------------------------------------------------------------------
class _Decoded:
    def __init__(self, smiles):
        self.smiles = smiles


class _SignDecoder:
    """Decodes the sign of the first coordinate: one molecule on each side (a smooth decoder)."""

    def decode(self, x):
        return [_Decoded("CCO" if float(v) > 0 else "c1ccccc1") for v in x[:, 0]]


class _HashDecoder:
    """A different molecule for every latent at 1e-6 resolution (a chaotic decoder)."""

    def decode(self, x):
        return [_Decoded("C" * (1 + int(abs(float(v)) * 1e6) % 7)) for v in x[:, 0]]


def test_decoder_smoothness_of_a_smooth_and_a_chaotic_decoder():
    from tfftmol.chem.latent_reward import decoder_smoothness

    x = torch.cat([torch.full((50, 2), 3.0), torch.full((50, 2), -3.0)])  # 3 units from the boundary
    qed = build_reward({"name": "qed"})
    smooth = decoder_smoothness(_SignDecoder(), x, qed, scales=(0.01, 0.1), seed=0)
    assert list(smooth.columns) == ["scale", "same", "reward_corr", "n"]
    assert smooth["same"].tolist() == [1.0, 1.0] and np.allclose(smooth["reward_corr"], 1.0)
    chaotic = decoder_smoothness(_HashDecoder(), torch.randn(200, 2), None, scales=(0.01,), seed=0)
    assert chaotic["same"].iloc[0] < 0.3 and np.isnan(chaotic["reward_corr"].iloc[0])
    # at a scale of the boundary's distance, the sign decoder flips about P(|N(0, 3^2)| > 3) / 2 = 16% of rows
    far = decoder_smoothness(_SignDecoder(), x, None, scales=(3.0,), seed=0)
    assert 0.72 < far["same"].iloc[0] < 0.95
    with pytest.raises(ValueError, match="scales"):
        decoder_smoothness(_SignDecoder(), x, None, scales=(0.0,))
    with pytest.raises(ValueError, match="shape"):
        decoder_smoothness(_SignDecoder(), x[:1], None)


@pytest.mark.slow
@pytest.mark.skipif(not Path(WEIGHTS_PATH).is_file(), reason="shipped zinc-selfies weights absent")
def test_the_shipped_decoder_keeps_molecules_under_tiny_moves_and_loses_them_under_larger_ones():
    from tfftmol.chem.latent_reward import decoder_smoothness

    model = load_zinc_selfies()
    x = model.sample_latents(200, steps=10, sampler="sde", seed=0)
    df = decoder_smoothness(model, x, build_reward({"name": "qed"}), scales=(0.001, 0.05, 0.3), seed=0)
    same = df["same"].tolist()
    assert same[0] > 0.9 and same[0] > same[1] > same[2] and same[2] < 0.1
    assert df["reward_corr"].iloc[0] > 0.9
