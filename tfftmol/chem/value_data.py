"""Warm-start data of the values-only stage 2 on the QM9 graph flow: noised, labelled training molecules.

The values-only stage 2 (:mod:`tfftmol.core.value`, docs/design.md §6) learns a value model
``V_phi(x_t, t)`` of the reward-to-go.  Under the pre-trained process
``X_t | X_1 ~ t X_1 + (1 - t) X_0`` with ``X_0`` the flow's Gaussian prior, so noised copies of the
flow's *training data* are samples of ``(X_t, r(X_1))`` under (approximately) the base process:
a noise-conditional reward model can learn from tens of thousands of labelled molecules before
the fine-tune starts, instead of from the few thousand noised samples of the offline batch.

:func:`labelled_qm9_states` encodes a seeded subset of the QM9 training split to the flow's
189-dim one-hot state ``x_1`` (:func:`tfftmol.chem.graph.encode`, the codec the flow was
pre-trained on) and labels each state with the true reward of its *decoded* molecule (the
function the fine-tune sees), cached on disk under the reward's identity.
:class:`QM9ValuePairs` is the reward hook ``value_pairs(n, generator)`` of
:class:`~tfftmol.chem.task.MolecularReward`: it labels lazily (only a run that takes the
values-only path pays for it) and returns ``(x_t, t, r(x_1))`` with ``t`` on the fine-tuner's grid.

**Measured** (QED, 20,000 labelled molecules, 39 s once; held-out: 1,500 molecules of the QM9
*valid* split, scaffold-disjoint, noised at ``t``): the flat-MLP value model warm-started on these
pairs ranks the reward at ``t = 0.9 / 0.7 / 0.5`` with Spearman

* ``kind="distribution"`` (hidden 256, 1,000 warm-start steps, 29 s): 0.66 / 0.60 / 0.33, top-10%
  precision 0.57 / 0.51 / 0.26 (the GNN surrogate fitted on the offline batch: 0.44 and 0.35 at ``t = 1``);
* ``kind="scalar"`` on the hinge target ``lam g(r)`` (90% zeros): 0.33 / 0.33 / 0.21 (hidden 256, 1,000
  steps), 0.24 / 0.21 / 0.16 (the default hidden 64, 300 steps).

On ``configs/qed_right.yaml`` at the ``tfftmol demo-mol`` budget (seed 0; pre-trained right-CVaR_0.9
0.5788, stage 1 predicts 0.6325 at KL 0.22) the right tail still did not move: 0.5785 at KL 0.063
(scalar, defaults), 0.5804 at KL 0.062 (scalar, hidden 256, 1,000 steps), 0.5782 at KL 0.072
(distribution, hidden 256, 1,000 steps, before the cost-scale fix of ``ValueTrainer.fit_pairs``:
on-policy value losses up to 418), 0.5791 at KL 0.137 (the same after the fix: value loss ~4, no guard).
The warm start is not what fails: after the 150 on-policy refreshes (32 trajectories each, Adam 3e-3)
the value models no longer rank held-out molecules (Spearman at ``t = 0.9``: scalar 0.33 -> 0.16;
distribution 0.66 -> -0.27, after the fix -0.23), so the control follows a forgotten reward model.
"""
from __future__ import annotations

import hashlib
import io
import json
import math
import time
from pathlib import Path
from typing import Any, Callable, Optional

import numpy as np
import torch

__all__ = ["qm9_train_subset", "labelled_qm9_states", "NoisedValuePairs", "QM9ValuePairs", "LatentValuePairs",
           "DEFAULT_VALUE_MOLECULES"]

#: QM9 training molecules labelled for the value model's warm start (``options.value_molecules: null``)
DEFAULT_VALUE_MOLECULES = 20000
_FORMAT = "qm9-train-graph-v1"  # bump when the codec or the subset rule changes (invalidates caches)


def qm9_train_subset(n: int, seed: int = 0) -> list[str]:
    """SMILES of ``n`` molecules of the QM9 training split: a seeded uniform subset (sorted by index).

    ``seed`` is the subset's seed, not the run's: runs of any seed share one labelled cache.
    """
    from .data import load_qm9

    smiles = load_qm9("train")["smiles"].tolist()
    n = min(int(n), len(smiles))
    idx = np.sort(np.random.default_rng(seed).choice(len(smiles), n, replace=False))
    return [smiles[i] for i in idx]


def _cache_path(cache_dir: Optional[str | Path], reward_key: str, n: int, seed: int) -> Optional[Path]:
    if cache_dir is None:
        return None
    key = hashlib.sha1(json.dumps([_FORMAT, str(reward_key), int(n), int(seed)]).encode()).hexdigest()[:20]
    return Path(cache_dir) / "value_warm" / f"qm9-{key}.npz"


def labelled_qm9_states(reward: Any, n: int, cache_dir: Optional[str | Path] = None, reward_key: str = "",
                        seed: int = 0, n_jobs: int = 1, batch_size: int = 2000,
                        log: Callable[[str], None] = print) -> tuple[torch.Tensor, np.ndarray, np.ndarray]:
    """``n`` QM9 training molecules as graph states with their true rewards.

    Args:
        reward: the run's true reward (``tfftmol.chem.rewards.Reward``: ``reward(items, n_jobs)``).
        n: molecules (at most the training split's size).
        cache_dir: cached in ``<cache_dir>/value_warm/qm9-<key>.npz`` (``None``: no cache); the key holds
            ``reward_key`` (the reward's identity, e.g. ``MolecularReward.cache_key``), ``n`` and ``seed``.
        seed: seed of the subset.

    Returns:
        ``x1`` float32 ``(n, 189)`` (entries ±1), ``values`` float64 ``(n,)`` (the reward of the decoded
        state; penalty where invalid), ``valid`` bool ``(n,)``.
    """
    from .graph import N_EDGES, N_MAX, classes_to_state, decode_classes, encode_classes

    if int(n) < 1:
        raise ValueError(f"n={n} must be >= 1")
    path = _cache_path(cache_dir, reward_key, n, seed)
    if path is not None and path.is_file():
        try:
            with np.load(path, allow_pickle=False) as z:
                nodes, edges, values, valid = z["nodes"], z["edges"], z["values"], z["valid"]
            if nodes.shape[0] == values.shape[0] == valid.shape[0] and nodes.shape[1:] == (N_MAX,) \
                    and edges.shape[1:] == (N_EDGES,) and np.isfinite(values).all():
                log(f"value warm start: {len(values)} labelled QM9 training molecules (cached, {path.name})")
                return (classes_to_state(torch.from_numpy(nodes.astype(np.int64)),
                                         torch.from_numpy(edges.astype(np.int64))),
                        values.astype(np.float64), valid.astype(bool))
        except Exception as e:  # noqa: BLE001  (a damaged cache is recomputed)
            log(f"value warm start: cache {path.name} unreadable ({type(e).__name__}: {e}); relabelling")
    t0 = time.perf_counter()
    smiles = qm9_train_subset(n, seed)
    nodes, edges = encode_classes(smiles)
    values, valid = [], []
    for i in range(0, len(smiles), batch_size):
        dec = decode_classes(nodes[i:i + batch_size], edges[i:i + batch_size])
        res = reward(dec, n_jobs=n_jobs)
        values.append(np.asarray(res.values, dtype=np.float64))
        valid.append(np.asarray(res.valid, dtype=bool))
    values, valid = np.concatenate(values), np.concatenate(valid)
    if not np.isfinite(values).all():
        raise ValueError("value warm start: the reward gave a non-finite value on a QM9 training molecule")
    if path is not None:
        from tfftmol.core.checkpoint import atomic_write_bytes

        buf = io.BytesIO()
        np.savez(buf, nodes=nodes.numpy().astype(np.int8), edges=edges.numpy().astype(np.int8), values=values,
                 valid=valid)
        try:
            atomic_write_bytes(path, buf.getvalue())
        except OSError as e:
            log(f"value warm start: could not write the cache {path} ({e}); continuing without it")
    mean = values[valid].mean() if valid.any() else math.nan
    log(f"value warm start: {len(values)} QM9 training molecules labelled, valid {valid.mean():.1%}, "
        f"mean reward {mean:.4g} ({time.perf_counter() - t0:.1f} s)")
    return classes_to_state(nodes, edges), values, valid


class NoisedValuePairs:
    """The reward hook ``value_pairs(n, generator) -> (x_t, t, r(x_1))`` on noised labelled states.

    ``x_t = t x_1 + (1 - t) x_0`` with ``x_0`` drawn from the flow's prior (``prior(n, generator)``)
    and ``t = k / time_steps`` for ``k`` uniform in ``1 .. time_steps - 1`` (the grid on which the
    fine-tuner evaluates the value model): under the pre-trained process these are exact draws of
    ``(X_t, r(X_1))`` when ``x_1`` is a sample of it (docs/design.md §6, warm start).  The ``n``
    pairs cycle through the labelled states in a random order (each ``ceil(n / m)`` times at most),
    so every label is used.  ``data()`` gives the clean states ``x_1`` ``(m, ...)`` and their rewards
    ``(m,)`` (float64); it is called once, at the first draw.
    """

    def __init__(self, data: Callable[[], tuple[torch.Tensor, torch.Tensor]], time_steps: int,
                 prior: Callable[..., torch.Tensor]):
        if int(time_steps) < 2:
            raise ValueError(f"time_steps={time_steps} must be >= 2")
        self._load, self.time_steps, self.prior = data, int(time_steps), prior
        self._data: Optional[tuple[torch.Tensor, torch.Tensor]] = None

    def data(self) -> tuple[torch.Tensor, torch.Tensor]:
        """The labelled clean states ``x_1`` and their rewards (float64), loaded on first use."""
        if self._data is None:
            x1, r = self._load()
            self._data = (torch.as_tensor(x1), torch.as_tensor(np.asarray(r, dtype=np.float64)))
        return self._data

    def __call__(self, n: int, generator: Optional[torch.Generator] = None):
        x1, r = self.data()
        m = x1.shape[0]
        reps = max(1, math.ceil(int(n) / m))
        idx = torch.cat([torch.randperm(m, generator=generator) for _ in range(reps)])[:int(n)]
        x1, r = x1[idx], r[idx]
        k = torch.randint(1, self.time_steps, (x1.shape[0],), generator=generator)
        t = k.to(torch.float32) / self.time_steps
        x0 = self.prior(x1.shape[0], generator).to(device=x1.device, dtype=x1.dtype)
        tt = t.reshape((-1,) + (1,) * (x1.dim() - 1)).to(x1.dtype)
        return tt * x1 + (1 - tt) * x0, t, r


class QM9ValuePairs(NoisedValuePairs):
    """``value_pairs`` on noised QM9 training molecules (:class:`NoisedValuePairs`), labelled with the
    true reward at the first draw and cached (:func:`labelled_qm9_states`).

    Args:
        reward: the true reward; reward_key: its identity (the cache key).
        molecules: labelled training molecules.
        time_steps: the fine-tuner's grid ``N``.
        prior: ``fn(n, generator) -> (n, 189)`` draws of the flow's prior (``base.sample_prior``).
    """

    def __init__(self, reward: Any, molecules: int, time_steps: int, prior: Callable[..., torch.Tensor],
                 cache_dir: Optional[str | Path] = None, reward_key: str = "", n_jobs: int = 1, seed: int = 0,
                 log: Callable[[str], None] = print):
        if int(molecules) < 1 or int(time_steps) < 2:
            raise ValueError(f"molecules={molecules} must be >= 1 and time_steps={time_steps} >= 2")
        self.reward, self.molecules = reward, int(molecules)
        self.cache_dir, self.reward_key = cache_dir, reward_key
        self.n_jobs, self.seed, self.log = int(n_jobs), int(seed), log
        super().__init__(self._label, time_steps, prior)

    def _label(self) -> tuple[torch.Tensor, torch.Tensor]:
        x1, values, _ = labelled_qm9_states(self.reward, self.molecules, self.cache_dir, self.reward_key,
                                            self.seed, self.n_jobs, log=self.log)
        return x1, torch.from_numpy(values)


class LatentValuePairs(NoisedValuePairs):
    """``value_pairs`` for a latent molecular flow: noised encoded ZINC250k training molecules.

    The clean states are the latents of :func:`~tfftmol.chem.latent_reward.warm_start_data` (the
    model's own encoder, normalised like its state) with its labels (by default the reward of the
    molecule each latent *decodes to*, the function the fine-tune sees), shared with the surrogate's
    warm start through the same cache.
    """

    def __init__(self, model: Any, reward: Any, molecules: int, time_steps: int,
                 prior: Callable[..., torch.Tensor], cache_dir: Optional[str | Path] = None,
                 labels: str = "decoded", n_jobs: int = 1, log: Callable[[str], None] = print):
        if int(molecules) < 1:
            raise ValueError(f"molecules={molecules} must be >= 1")
        self.model, self.reward, self.molecules = model, reward, int(molecules)
        self.cache_dir, self.labels, self.n_jobs, self.log = cache_dir, labels, int(n_jobs), log
        super().__init__(self._label, time_steps, prior)

    def _label(self) -> tuple[torch.Tensor, torch.Tensor]:
        from .latent_reward import warm_start_data

        x, values, _ = warm_start_data(self.model, self.reward, self.molecules, self.cache_dir, labels=self.labels,
                                       n_jobs=self.n_jobs, log=self.log)
        return x.float(), torch.from_numpy(values)
