"""Warm-start pairs of the values-only stage 2 on the QM9 graph flow (tfftmol/chem/value_data.py)."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from tfftmol.chem.graph import STATE_DIM, decode
from tfftmol.chem.rewards import build_reward
from tfftmol.chem.value_data import QM9ValuePairs, labelled_qm9_states, qm9_train_subset
from tfftmol.core.config import ConfigError
from tfftmol.core.reward import reward_hook
from tfftmol.pipeline.config import load_run_config

M = 48  # labelled molecules: QED ~2 ms each


class Counting:
    """A reward that counts the molecules it scores (to see the cache at work)."""

    def __init__(self, reward):
        self.reward, self.scored = reward, 0

    def __call__(self, items, n_jobs=1):
        self.scored += len(items)
        return self.reward(items, n_jobs=n_jobs)


def test_labels_are_the_reward_of_the_decoded_training_molecule_and_the_cache_returns_them(tmp_path):
    qed = Counting(build_reward({"name": "qed"}))
    x1, v, ok = labelled_qm9_states(qed, M, tmp_path, reward_key="mol:qed", log=lambda s: None)
    assert x1.shape == (M, STATE_DIM) and x1.dtype == torch.float32 and set(x1.unique().tolist()) == {-1.0, 1.0}
    assert v.shape == ok.shape == (M,) and v.dtype == np.float64 and ok.all() and qed.scored == M
    smiles = qm9_train_subset(M)
    dec = decode(x1)
    assert [d.smiles for d in dec] == smiles  # the codec round-trips the training molecules
    ref = build_reward({"name": "qed"})(smiles)
    np.testing.assert_array_equal(v, np.asarray(ref.values, dtype=np.float64))
    assert list((tmp_path / "value_warm").glob("qm9-*.npz"))
    x1c, vc, okc = labelled_qm9_states(qed, M, tmp_path, reward_key="mol:qed", log=lambda s: None)
    assert qed.scored == M  # served from the cache: nothing scored again
    assert torch.equal(x1c, x1) and np.array_equal(vc, v) and np.array_equal(okc, ok)
    # another reward identity is another cache entry
    labelled_qm9_states(qed, M, tmp_path, reward_key="mol:other", log=lambda s: None)
    assert qed.scored == 2 * M


def test_value_pairs_noise_the_labelled_states_on_the_grid(tmp_path):
    qed = build_reward({"name": "qed"})
    zero_prior = lambda n, g: torch.zeros(n, STATE_DIM)  # noqa: E731  x_t = t x_1: x_1 is recoverable
    pairs = QM9ValuePairs(qed, M, time_steps=30, prior=zero_prior, cache_dir=tmp_path, reward_key="mol:qed",
                          log=lambda s: None)
    x_t, t, r = pairs(3 * M + 5, torch.Generator().manual_seed(0))
    assert x_t.shape == (3 * M + 5, STATE_DIM) and t.shape == r.shape == (3 * M + 5,)
    k = t * 30
    assert torch.allclose(k, k.round(), atol=1e-4) and int(k.round().min()) >= 1 and int(k.round().max()) <= 29
    x1 = x_t / t[:, None]
    assert torch.allclose(x1.abs(), torch.ones_like(x1), atol=1e-4)
    np.testing.assert_allclose(r.numpy(), np.asarray(qed(decode(x1)).values), atol=0)
    # every labelled molecule is used (the pairs cycle through them)
    x1_all, _ = pairs.data()
    assert len({tuple(row.sign().tolist()) for row in x1}) == len({tuple(row.tolist()) for row in x1_all})
    # with the Gaussian prior: x_t = t x_1 + (1 - t) x_0 has the right spread
    gauss = QM9ValuePairs(qed, M, 30, lambda n, g: torch.randn(n, STATE_DIM, generator=g), tmp_path, "mol:qed",
                          log=lambda s: None)
    x_t, t, _ = gauss(2000, torch.Generator().manual_seed(1))
    assert torch.isfinite(x_t).all()
    lo = t < 0.2
    assert abs(float(x_t[lo].std()) - 1.0) < 0.25  # near t = 0 the state is mostly prior noise
    # same generator seed, same pairs
    a = gauss(100, torch.Generator().manual_seed(3))
    b = gauss(100, torch.Generator().manual_seed(3))
    assert all(torch.equal(u, w) for u, w in zip(a, b))


def test_the_graph_task_declares_value_pairs(tmp_path):
    from tfftmol.chem.task import MoleculeTask, load_base

    cfg = load_run_config({"task": "molecule", "out_dir": str(tmp_path), "options": {"model": "qm9-graph",
                                                                                   "value_molecules": M}})
    assert cfg.options.value_molecules_size == M
    base = load_base("qm9-graph")
    reward = MoleculeTask().build_reward(cfg, base, "cpu", lambda s: None)
    fn = reward_hook(reward, "value_pairs")
    assert callable(fn)
    x_t, t, r = fn(10, torch.Generator().manual_seed(0))
    assert x_t.shape == (10, STATE_DIM) and torch.isfinite(x_t).all() and (r > 0).all()
    assert list((cfg.offline_cache_dir / "value_warm").glob("qm9-*.npz"))
    off = load_run_config({"task": "molecule", "out_dir": str(tmp_path), "options": {"model": "qm9-graph",
                                                                                   "value_molecules": 0}})
    assert reward_hook(MoleculeTask().build_reward(off, base, "cpu", lambda s: None), "value_pairs") is None
    assert load_run_config({"task": "molecule", "options": {"model": "qm9-graph"}}).options.value_molecules_size \
        == 20000
    assert load_run_config({"task": "molecule", "options": {"model": "zinc-selfies"}}).options \
        .value_molecules_size == 0
    with pytest.raises(ConfigError, match="value_molecules"):
        load_run_config({"task": "molecule", "options": {"model": "qm9-graph", "value_molecules": -1}})


def test_a_latent_model_supplies_noised_encoded_training_molecules_as_value_pairs(tmp_path):
    """zinc-selfies with value_molecules: the pairs are t x_1 + (1 - t) x_0 of encoded ZINC250k training latents,
    labelled with the reward of the molecule each latent decodes to (the surrogate's warm-start data and cache)."""
    from tfftmol.chem.latent_reward import warm_start_data
    from tfftmol.chem.task import MoleculeTask, load_base

    n = 40
    cfg = load_run_config({"task": "molecule", "out_dir": str(tmp_path),
                           "options": {"model": "zinc-selfies", "reward": {"name": "qed"}, "value_molecules": n,
                                       "warm_start": 0}})  # no surrogate warm start: only the value pairs
    base = load_base("zinc-selfies")
    reward = MoleculeTask().build_reward(cfg, base, "cpu", lambda s: None)
    fn = reward_hook(reward, "value_pairs")
    assert callable(fn)
    x_t, t, r = fn(3 * n, torch.Generator().manual_seed(0))
    assert x_t.shape == (3 * n, 64) and t.shape == (3 * n,) and r.shape == (3 * n,)
    assert torch.isfinite(x_t).all() and ((t > 0) & (t < 1)).all()
    x1, values, _ = warm_start_data(base, build_reward({"name": "qed"}), n, cfg.offline_cache_dir, log=lambda s: None)
    assert sorted(r.tolist()) == pytest.approx(sorted(np.tile(values, 3).tolist()))  # every label, each 3 times
    N = cfg.tfft.am.time_steps
    assert torch.allclose(t * N, (t * N).round(), atol=1e-4)  # on the fine-tuner's grid k / N, 0 < k < N
    # x_t = t x_1 + (1 - t) x_0: near t = 0 the pairs are prior draws, and their spread grows back toward the
    # latents' own as t -> 1 (the latents are normalised, so both are about 1 per coordinate)
    assert float(x1.std()) == pytest.approx(1.0, abs=0.35)


def test_distribution_warm_start_on_qm9_pairs_leaves_the_control_cost_scale_alone(tmp_path):
    """The warm start runs under the base process (no control cost): the reward's spread (QED: ~0.08) must
    not become the scale of the control-cost head (old code: scale 0.078, on-policy value losses up to ~400)."""
    from tfftmol.core.value import ValueConfig, ValueTrainer

    qed = build_reward({"name": "qed"})
    pairs = QM9ValuePairs(qed, M, 30, lambda n, g: torch.randn(n, STATE_DIM, generator=g), tmp_path, "mol:qed",
                          log=lambda s: None)
    x_t, t, r = pairs(256, torch.Generator().manual_seed(0))
    tr = ValueTrainer((STATE_DIM,), ValueConfig(kind="distribution", hidden=16, warm_start_steps=3))
    tr.fit_pairs(x_t, t, r, batch_size=64)
    assert float(tr.model.scale) == 1.0 and bool(tr.model.ready)
    # the scalar kind still scales V by its warm-start target's spread
    sc = ValueTrainer((STATE_DIM,), ValueConfig(kind="scalar", hidden=16, warm_start_steps=3))
    y = 100 * (r - 0.5).clamp_min(0).float()
    sc.fit_pairs(x_t, t, r, target=y, batch_size=64)
    assert abs(float(sc.model.scale) - float(y.double().std())) < 1e-4
