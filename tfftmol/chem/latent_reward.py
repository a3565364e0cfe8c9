"""A differentiable reward surrogate on a latent state, and its warm start from encoded ZINC250k.

On a latent flow (``zinc-selfies``: the state is the normalised SELFIES-VAE
latent, docs/design.md §8) the decoded molecule is a function of the final latent,
``r(x) = r_RDKit(decode(x))``, and Adjoint Matching is exact once the terminal
gradient ``grad_x r`` exists.  RDKit rewards have none, so a small MLP ``s(x)``
on the latent stands in for it, exactly as the graph GNN
(:class:`~tfftmol.chem.surrogate.Surrogate`) does on the QM9 graph state:
:class:`LatentSurrogate` is a ``Surrogate`` with an MLP in place of the GNN and
the same API (``fit``, ``refit``, ``grad``, ``predict``, ``penalty``,
``state_dict``/``load_state_dict``), so
:class:`~tfftmol.chem.task.MolecularReward` uses it unchanged (values, validity
and the tail indicator stay the true reward; refits on-policy every
``refit_every`` steps).

**Warm start.**  Before the first fit on the offline batch (a few thousand
samples of the pre-trained flow) the surrogate can be given ``n`` molecules of
the ZINC250k *training* split, encoded with the model's own VAE encoder (the
posterior mean, normalised like the flow's state) and labelled with the run's
true reward (:func:`warm_start_data`).  Labels are by default the reward of the
molecule the latent *decodes to* (``labels="decoded"``): that is the function
``r(x)`` the fine-tune optimises; ``labels="data"`` scores the encoded molecule
itself (differs wherever the autoencoder does not reconstruct).  Every (re)fit
then trains on the warm-start pairs plus the on-policy samples; the held-out
report is computed on the on-policy samples only.  The pairs are cached under
``<cache_dir>/latent_warm/`` keyed by the model's weight fingerprint, the
reward's config, ``n``, the label mode and the subset seed.

Example:
    >>> sur = LatentSurrogate(dim=64, seed=0)                         # doctest: +SKIP
    >>> sur.set_warm_start(*warm_start_data(model, reward, 30000, "runs/cache"))  # doctest: +SKIP
    >>> report = sur.fit(x, values, valid, epochs=30)                 # doctest: +SKIP
    >>> values, grad_x = sur.grad(x_new)                               # (B,), (B, 64)  # doctest: +SKIP
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
from torch import nn

from tfftmol.core.checkpoint import atomic_write_bytes

from .surrogate import Surrogate, SurrogateReport

__all__ = ["LatentNet", "LatentSurrogate", "warm_start_data", "WARM_LABELS", "is_latent_model", "decoder_smoothness"]

WARM_LABELS = ("decoded", "data")


def is_latent_model(model: Any) -> bool:
    """Whether a molecular flow's state is a continuous latent (it has ``encode_selfies`` and a flat state)."""
    return hasattr(model, "encode_selfies") and len(tuple(getattr(model, "state_shape", ()))) == 1


class LatentNet(nn.Module):
    """MLP ``(B, dim) -> (B, 2)``: column 0 the standardised reward of a valid molecule, column 1 the
    validity logit (the two heads of the :class:`~tfftmol.chem.surrogate.Surrogate` hurdle model).

    ``layers`` hidden layers of width ``hidden`` with SiLU (smooth, so ``grad_x`` is too).
    """

    def __init__(self, dim: int, hidden: int = 256, layers: int = 3):
        super().__init__()
        if dim < 1 or hidden < 1 or layers < 1:
            raise ValueError(f"latent surrogate: dim={dim}, hidden={hidden}, layers={layers} must all be >= 1")
        mods: list[nn.Module] = [nn.Linear(dim, hidden), nn.SiLU()]
        for _ in range(layers - 1):
            mods += [nn.Linear(hidden, hidden), nn.SiLU()]
        mods.append(nn.Linear(hidden, 2))
        self.body = nn.Sequential(*mods)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x)


class LatentSurrogate(Surrogate):
    """:class:`~tfftmol.chem.surrogate.Surrogate` on a flat latent state ``(B, dim)`` with an MLP network.

    Same API and semantics (hurdle model with invalid samples, replay buffer,
    tail-precision reports, tensors-only state dict); adds :meth:`set_warm_start`.

    Args:
        dim: latent dimension.
        hidden, layers: :class:`LatentNet` sizes.
        lr, batch_size, weight_decay, augment, replay_size, seed, device: as for ``Surrogate``
            (``augment``: std of Gaussian input noise at every pass, smoothing ``s`` around the data).
    """

    def __init__(self, dim: int, hidden: int = 256, layers: int = 3, lr: float = 1e-3, batch_size: int = 256,
                 weight_decay: float = 1e-4, augment: float = 0.0, replay_size: int = 20_000, seed: int = 0,
                 device: str | torch.device = "cpu"):
        self.dim = int(dim)
        self.config = dict(dim=self.dim, hidden=int(hidden), layers=int(layers))
        self.lr, self.batch_size, self.weight_decay = float(lr), int(batch_size), float(weight_decay)
        self.augment = float(augment)
        self.replay_size, self.seed, self.device = int(replay_size), int(seed), torch.device(device)
        torch.manual_seed(self.seed)
        self.net = LatentNet(**self.config).to(self.device)
        self.y_mean, self.y_std = 0.0, 1.0
        self.penalty: Optional[float] = None
        self.fitted = False
        self._buffer = None
        self._rng = np.random.default_rng(self.seed)
        self.history: list[SurrogateReport] = []
        self._warm: Optional[tuple[torch.Tensor, torch.Tensor, torch.Tensor]] = None

    # -- data ---------------------------------------------------------------------
    def _as_xyv(self, x: Any, y: Any, valid: Any):
        """Tensors ``x (B, dim)``, ``y (B,)``, ``valid (B,)`` and the penalty of the invalid samples (or ``None``)."""
        if hasattr(y, "values") and hasattr(y, "valid") and not isinstance(y, np.ndarray):  # a RewardResult
            valid = y.valid if valid is None else valid
            y = y.values
        x = torch.as_tensor(x, dtype=torch.float32).detach().to("cpu")
        y = torch.as_tensor(np.asarray(y, dtype=np.float64), dtype=torch.float32).reshape(-1)
        if x.dim() != 2 or x.shape[1] != self.dim:
            raise ValueError(f"latent surrogate: x must have shape (B, {self.dim}), got {tuple(x.shape)}")
        if x.shape[0] != y.shape[0]:
            raise ValueError(f"latent surrogate: x has {x.shape[0]} rows but y has {y.shape[0]}")
        if not torch.isfinite(y).all():
            raise ValueError("latent surrogate: targets must be finite (give invalid molecules their penalty)")
        if not torch.isfinite(x).all():
            raise ValueError("latent surrogate: states must be finite")
        if x.shape[0] < 2:
            raise ValueError(f"latent surrogate: need at least 2 samples, got {x.shape[0]}")
        if valid is None:
            v = torch.ones(x.shape[0], dtype=torch.bool)
        else:
            v = torch.as_tensor(np.asarray(valid, dtype=bool)).reshape(-1)
            if v.shape[0] != x.shape[0]:
                raise ValueError(f"latent surrogate: valid has {v.shape[0]} entries but x has {x.shape[0]} rows")
        penalty = None
        if (~v).any():
            pen = y[~v]
            if float(pen.max() - pen.min()) > 1e-6 * max(1.0, float(pen.abs().max())):
                raise ValueError("latent surrogate: invalid samples must all carry the same penalty, got "
                                 f"values in [{float(pen.min())}, {float(pen.max())}]")
            penalty = float(pen[0])
        return x, y, v, penalty

    def set_warm_start(self, x: Any, y: Any, valid: Any = None) -> None:
        """Pairs ``(x (N, dim), y (N,)[, valid (N,)])`` added to the training part of every :meth:`fit`
        (and to the replay buffer); ``None`` clears them."""
        if x is None:
            self._warm = None
            return
        x, y, v, _ = self._as_xyv(x, y, valid)
        self._warm = (x, y, v)

    @property
    def warm_size(self) -> int:
        return 0 if self._warm is None else int(self._warm[0].shape[0])

    # -- training -------------------------------------------------------------------
    def fit(self, x: Any, y: Any, valid: Any = None, epochs: int = 30, valid_fraction: float = 0.2,
            seed: Optional[int] = None, patience: Optional[int] = None, progress: bool = False) -> SurrogateReport:
        """Fit from scratch on the warm-start pairs plus the training part of ``(x, y)``.

        Same contract as :meth:`Surrogate.fit`; the held-out part (``valid_fraction``) is drawn
        from ``(x, y)`` only, so the report measures the surrogate on the samples given here
        (e.g. the pre-trained flow's offline batch), not on the warm-start data.
        """
        t0 = time.perf_counter()
        if seed is not None:
            self.seed = int(seed)
        self._rng = np.random.default_rng(self.seed)
        torch.manual_seed(self.seed)
        self.net = LatentNet(**self.config).to(self.device)
        x, y, v, penalty = self._as_xyv(x, y, valid)
        tr, va = self._split(x.shape[0], valid_fraction)
        xt, yt, vt = x[tr], y[tr], v[tr]
        if self._warm is not None:
            wx, wy, wv = self._warm
            xt, yt, vt = torch.cat([wx, xt]), torch.cat([wy, yt]), torch.cat([wv, vt])
            if (~wv).any():
                wpen = float(wy[~wv][0])
                if penalty is not None and abs(wpen - penalty) > 1e-6 * max(1.0, abs(penalty)):
                    raise ValueError(f"latent surrogate: warm-start penalty {wpen} differs from the samples' {penalty}")
                penalty = wpen
        self.penalty = penalty
        y_ok = yt[vt]
        if y_ok.numel() == 0:
            raise ValueError("latent surrogate: no valid sample in the training part")
        self.y_mean = float(y_ok.mean())
        self.y_std = float(y_ok.std()) if y_ok.numel() > 1 and float(y_ok.std()) > 0 else 1.0
        self._buffer = None
        self._add_to_buffer(xt, yt, vt)
        ran = self._train(xt, yt, vt, x[va], y[va], v[va], epochs, self.lr, patience, progress)
        self.fitted = True
        report = self._evaluate(x[va], y[va], v[va], valid is not None or self.hurdle, xt.shape[0], ran,
                                time.perf_counter() - t0)
        self.history.append(report)
        return report


# -- warm start from the encoded training split ------------------------------------------------
def _warm_key(model: Any, reward: Any, n: int, labels: str, seed: int) -> str:
    from tfftmol.core.offline import model_fingerprint

    payload = json.dumps([model_fingerprint(model), reward.to_config(), int(n), labels, int(seed), "zinc250k-train"],
                         sort_keys=True, default=str)
    return hashlib.sha1(payload.encode()).hexdigest()[:20]


def warm_start_data(model: Any, reward: Any, n: int, cache_dir: str | Path | None = None, labels: str = "decoded",
                    seed: int = 0, batch_size: int = 1000, n_jobs: int = 1,
                    log: Callable[[str], None] = print) -> tuple[torch.Tensor, np.ndarray, np.ndarray]:
    """``n`` molecules of the ZINC250k training split as (latent, true reward, validity) pairs.

    Args:
        model: a latent molecular flow with ``encode_selfies(list) -> (N, dim)`` (normalised posterior
            means) and ``decode(x)`` (e.g. :class:`~tfftmol.chem.selfies.ZincSelfiesFlow`).
        reward: the run's true reward (``tfftmol.chem.rewards.Reward``).
        n: molecules (a seeded uniform subset of the training split; at most its size).
        cache_dir: the pairs are cached in ``<cache_dir>/latent_warm/<key>.npz`` (``None``: no cache).
        labels: ``"decoded"`` (reward of ``decode(x)``: the function the fine-tune sees) or
            ``"data"`` (reward of the encoded molecule itself).
        seed: seed of the subset (not the run's seed, so runs of any seed share the cache).

    Returns:
        ``x`` float32 ``(n, dim)``, ``values`` float64 ``(n,)`` (penalty where invalid), ``valid`` bool ``(n,)``.

    Raises:
        ValueError: ``n < 1`` or an unknown ``labels``.
    """
    from .selfies import load_zinc250k

    if labels not in WARM_LABELS:
        raise ValueError(f"labels={labels!r} must be one of {WARM_LABELS}")
    if int(n) < 1:
        raise ValueError(f"n={n} must be >= 1")
    df = load_zinc250k("train")
    n = min(int(n), len(df))
    path = None
    if cache_dir is not None:
        path = Path(cache_dir) / "latent_warm" / f"{_warm_key(model, reward, n, labels, seed)}.npz"
        if path.is_file():
            with np.load(path, allow_pickle=False) as z:
                x, v, ok = z["x"], z["values"], z["valid"]
            if x.shape[0] == n:
                log(f"latent surrogate warm start: {n} encoded ZINC250k training molecules (cached, {path.name})")
                return torch.from_numpy(x.astype(np.float32)), v.astype(np.float64), ok.astype(bool)
    t0 = time.perf_counter()
    idx = np.sort(np.random.default_rng(seed).choice(len(df), n, replace=False))
    sub = df.iloc[idx]
    xs = []
    was = getattr(model, "training", None)
    if isinstance(model, nn.Module):
        model.eval()
    try:
        sel = sub["selfies"].tolist()
        for i in range(0, n, batch_size):
            xs.append(model.encode_selfies(sel[i:i + batch_size]).detach().cpu().float())
    finally:
        if isinstance(model, nn.Module) and was is not None:
            model.train(was)
    x = torch.cat(xs)
    if labels == "decoded":
        items: list = []
        for i in range(0, n, batch_size):
            items += model.decode(x[i:i + batch_size])
    else:
        items = sub["smiles"].tolist()
    res = reward(items, n_jobs=n_jobs)
    values = np.asarray(res.values, dtype=np.float64)
    valid = np.asarray(res.valid, dtype=bool)
    if path is not None:
        buf = io.BytesIO()
        np.savez(buf, x=x.numpy(), values=values, valid=valid)
        atomic_write_bytes(path, buf.getvalue())
    ok = valid.mean() if n else math.nan
    log(f"latent surrogate warm start: {n} encoded ZINC250k training molecules, labels '{labels}', "
        f"valid {ok:.1%}, mean reward {values[valid].mean() if valid.any() else math.nan:.4g} "
        f"({time.perf_counter() - t0:.1f} s)")
    return x, values, valid


# -- how smooth the reward of a decoded latent is -------------------------------------------------
def decoder_smoothness(model: Any, x: Any, reward: Any = None, scales: tuple[float, ...] = (0.01, 0.05, 0.1, 0.3),
                       seed: int = 0):
    """How far a latent can move before its decoded molecule (and reward) changes.

    For each ``scale``, every row of ``x`` is moved by ``scale * N(0, I)`` (in the model's
    normalised latent, the flow's state) and decoded again.  ``same`` is the fraction of rows
    whose canonical SMILES is unchanged; ``reward_corr`` the Pearson correlation of the reward
    before and after (``None`` reward: not computed).  A fine-tune can only move latent mass
    smoothly, so the tilt of ``r(decode(x))`` it can represent is the part of ``r`` that survives
    such moves: where ``same`` drops to near 0 within the scale of the tilt, the decoded reward is
    a near-random function of the latent (greedy autoregressive decoding flips at near-ties of
    its token probabilities) and no smooth control, with or without a surrogate, can select it.

    Args:
        model: anything with ``decode(x) -> list`` of results with a ``smiles`` attribute (``None``
            where invalid), e.g. :class:`~tfftmol.chem.selfies.ZincSelfiesFlow`.
        x: latents ``(N, dim)``, e.g. model samples (what a fine-tune sees) or encoded molecules.
        reward: a ``tfftmol.chem.rewards.Reward`` (called on the decoded SMILES) or ``None``.
        scales: noise standard deviations, each > 0.
        seed: seed of the noise.

    Returns:
        a ``pandas.DataFrame`` with columns ``scale, same, reward_corr, n``.

    Raises:
        ValueError: an empty ``x``, a non-2D ``x`` or a scale that is not > 0.
    """
    import pandas as pd

    x = torch.as_tensor(x, dtype=torch.float32).detach().cpu()
    if x.dim() != 2 or x.shape[0] < 2:
        raise ValueError(f"x must have shape (N >= 2, dim), got {tuple(x.shape)}")
    bad = [s for s in scales if not (float(s) > 0 and math.isfinite(float(s)))]
    if bad:
        raise ValueError(f"scales must all be finite and > 0, got {bad}")
    gen = torch.Generator().manual_seed(int(seed))
    base = model.decode(x)
    base_smiles = [getattr(d, "smiles", None) for d in base]
    r0 = None if reward is None else np.asarray(reward(base_smiles).values, dtype=np.float64)
    rows = []
    for s in scales:
        smiles = [getattr(d, "smiles", None) for d in model.decode(x + float(s) * torch.randn(x.shape, generator=gen))]
        same = float(np.mean([a is not None and a == b for a, b in zip(base_smiles, smiles)]))
        corr = math.nan
        if r0 is not None:
            r1 = np.asarray(reward(smiles).values, dtype=np.float64)
            if r0.std() > 0 and r1.std() > 0:
                corr = float(np.corrcoef(r0, r1)[0, 1])
        rows.append({"scale": float(s), "same": same, "reward_corr": corr, "n": int(x.shape[0])})
    return pd.DataFrame(rows)
