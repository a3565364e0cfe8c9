"""The QM9 velocity network, the shipped model, its loader and its benchmark."""
from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from tfftmol.chem import graph as g
from tfftmol.chem.data import load_qm9
from tfftmol.chem.model import GraphTransformerConfig, GraphTransformerFlow
from tfftmol.chem.qm9_model import (CARD_PATH, WEIGHTS_PATH, QM9GraphFlow, SampleResult, load_qm9_graph,
                                    sample_to_csv, save_qm9_graph)
from tfftmol.core.flow import VelocityModule

ROOT = Path(__file__).resolve().parents[2]
needs_weights = pytest.mark.skipif(not WEIGHTS_PATH.exists(),
                                   reason=f"shipped weights {WEIGHTS_PATH.name} not exported yet")
TINY = GraphTransformerConfig(d_node=16, d_edge=8, n_layers=2, n_heads=2)


@pytest.fixture(scope="module")
def tiny() -> QM9GraphFlow:
    torch.manual_seed(0)
    return QM9GraphFlow(TINY).eval()


def test_interface_and_shapes(tiny):
    assert isinstance(tiny, VelocityModule)
    assert tuple(tiny.state_shape) == (189,)
    x = torch.randn(5, 189)
    v = tiny.velocity(x, torch.rand(5))
    assert v.shape == (5, 189)
    ln, le = tiny.logits(x, torch.rand(5))
    assert ln.shape == (5, 9, 5) and le.shape == (5, 36, 4)
    assert tiny(x, torch.tensor(0.3)).shape == (5, 189)  # a scalar time broadcasts


@pytest.mark.parametrize("t", [0.0, 0.5, 1.0 - 1e-4, 1.0])
def test_velocity_finite_and_x1_form(tiny, t):
    x = torch.randn(4, 189)
    tt = torch.full((4,), t)
    v = tiny(x, tt)
    assert torch.isfinite(v).all()
    x1 = tiny.predict_x1(x, tt)
    assert torch.all(x1.abs() <= g.SCALE + 1e-6)
    torch.testing.assert_close(v, (x1 - x) / max(1.0 - t, TINY.t_eps))


def test_vjp_is_differentiable(tiny):
    x = torch.randn(6, 189, requires_grad=True)
    a = torch.randn(6, 189)
    v = tiny(x, torch.rand(6))
    (grad,) = torch.autograd.grad((v * a).sum(), x)
    assert grad.shape == (6, 189) and torch.isfinite(grad).all() and grad.abs().sum() > 0


def _permute_state(x: torch.Tensor, perm: torch.Tensor) -> torch.Tensor:
    """Relabel node slots: new slot a holds old slot perm[a]; pairs follow."""
    nodes, edges = g.split_state(x)
    ii, jj = g.triu_pairs()
    index = {(int(i), int(j)): k for k, (i, j) in enumerate(zip(ii, jj))}
    src = [index[tuple(sorted((int(perm[a]), int(perm[b]))))] for a, b in zip(ii, jj)]
    return g.join_state(nodes[:, perm], edges[:, src])


def test_permutation_equivariance(tiny):
    torch.manual_seed(1)
    x, t = torch.randn(3, 189), torch.rand(3)
    perm = torch.tensor([4, 2, 8, 0, 6, 1, 7, 3, 5])
    with torch.no_grad():
        torch.testing.assert_close(tiny(_permute_state(x, perm), t), _permute_state(tiny(x, t), perm),
                                   atol=1e-5, rtol=1e-4)


def test_config_validation():
    with pytest.raises(ValueError, match="n_heads"):
        GraphTransformerConfig(d_node=10, n_heads=3)
    with pytest.raises(ValueError, match="t_eps"):
        GraphTransformerConfig(t_eps=0.0)


@pytest.mark.slow  # 10 s
def test_short_training_lowers_loss():
    torch.manual_seed(0)
    model = GraphTransformerFlow(GraphTransformerConfig(d_node=32, d_edge=16, n_layers=2, n_heads=4))
    nodes, edges = g.encode_classes(load_qm9("train")["smiles"].iloc[:512].tolist())
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    gen = torch.Generator().manual_seed(0)
    t_eval = torch.rand(512, generator=torch.Generator().manual_seed(1))

    def eval_loss():
        with torch.no_grad():
            return float(model.loss(nodes, edges, t=t_eval, generator=torch.Generator().manual_seed(2))["loss"])

    before = eval_loss()
    p0 = [p.detach().clone() for p in model.parameters()]
    for _ in range(40):
        idx = torch.randint(0, 512, (128,), generator=gen)
        out = model.loss(nodes[idx], edges[idx], generator=gen)
        assert np.isfinite(out["loss"].item())
        opt.zero_grad()
        out["loss"].backward()
        opt.step()
    after = eval_loss()
    assert any(not torch.equal(a, b) for a, b in zip(p0, model.parameters()))
    assert after < 0.7 * before, (before, after)


def test_save_load_round_trip(tmp_path, tiny):
    path = save_qm9_graph(tiny, tmp_path / "m.safetensors")
    m2 = load_qm9_graph(path=path)
    x, t = torch.randn(3, 189), torch.rand(3)
    with torch.no_grad():
        torch.testing.assert_close(m2(x, t), tiny(x, t))
    assert m2.config == tiny.config


@pytest.mark.parametrize("sampler", ["ode", "heun", "sde"])
def test_tiny_sample_shapes_and_seed(tiny, sampler):
    r1 = tiny.sample(7, steps=4, sampler=sampler, seed=3, batch_size=4)
    r2 = tiny.sample(7, steps=4, sampler=sampler, seed=3, batch_size=4)
    assert isinstance(r1, SampleResult) and r1.x.shape == (7, 189)
    assert len(r1.mols) == len(r1.smiles) == len(r1.reasons) == 7 and r1.valid.shape == (7,)
    assert r1.valid.dtype == bool
    assert torch.equal(r1.x, r2.x)
    df = r1.to_frame()
    assert list(df.columns) == ["smiles", "valid", "reason", "raw"] and len(df) == 7
    with pytest.raises(ValueError, match="sampler"):
        tiny.sample(2, sampler="rk4")


def test_missing_weights_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="pretrain_qm9"):
        load_qm9_graph(path=tmp_path / "none.safetensors")


# ---------------------------------------------------------------- shipped model


@needs_weights
def test_shipped_weights_are_safetensors_without_pickle():
    raw = WEIGHTS_PATH.read_bytes()
    header_len = int.from_bytes(raw[:8], "little")
    header = json.loads(raw[8:8 + header_len])           # safetensors: 8-byte length + JSON header + raw tensors
    assert header["__metadata__"]["format"] == "tfftmol.qm9-graph"
    assert b"\x80\x04" not in raw[:2] and not raw.startswith(b"PK")  # not a pickle, not a torch zip
    assert WEIGHTS_PATH.stat().st_size < 20e6
    card = json.loads(CARD_PATH.read_text())
    assert card["name"] == "qm9-graph" and "training" in card


@needs_weights
def test_loaded_model_samples(tmp_path):
    import tfftmol
    model = tfftmol.load_pretrained("qm9-graph")
    assert isinstance(model, QM9GraphFlow) and tuple(model.state_shape) == (189,)
    res = model.sample(64, steps=20, seed=0)
    assert res.x.shape == (64, 189) and res.valid.shape == (64,)
    assert res.valid.mean() > 0.3                           # a trained model, not noise
    for s, v in zip(res.smiles, res.valid):
        assert (s is not None) == v
    sde = model.sample(16, steps=20, sampler="sde", seed=0)
    assert sde.x.shape == (16, 189) and np.isfinite(sde.x.numpy()).all()
    df = sample_to_csv(model, 10, tmp_path / "s.csv", steps=10, seed=0)
    assert (tmp_path / "s.csv").exists() and list(df.columns) == ["smiles", "valid", "reason", "raw"]


@pytest.mark.slow  # 28 s
@needs_weights
def test_benchmark_quick(tmp_path):
    sys.path.insert(0, str(ROOT / "benchmarks"))
    try:
        import qm9_model as bench
    finally:
        sys.path.pop(0)
    table = bench.main(["--quick", "--out-dir", str(tmp_path)])
    vals = dict(zip(table["metric"], table["value"]))
    assert vals["n"] == 200 and 0.0 <= vals["validity"] <= 1.0
    assert (tmp_path / "qm9_model.csv").exists() and (tmp_path / "qm9_model.md").exists()
    assert vals["mol_steps_per_s_forward"] > 0 and vals["mol_steps_per_s_vjp"] > 0
