"""Loading the shipped 2D flows (trained by ``scripts/pretrain_toy2d.py``)."""
from __future__ import annotations

import json
from pathlib import Path

from ..core.checkpoint import load_tensors
from .gmm import GaussianMixtureFlow, circle_gmm
from .flows import MLPFlow

WEIGHTS = Path(__file__).resolve().parent / "weights"


def load_toy2d(name: str, device: str = "cpu") -> MLPFlow:
    """Load ``toy2d-<dataset>``: an :class:`MLPFlow` from safetensors plus its JSON card."""
    card = json.loads((WEIGHTS / f"{name}.card.json").read_text())
    model = MLPFlow(**card["hparams"])
    model.load_state_dict(load_tensors(WEIGHTS / f"{name}.safetensors"))
    return model.to(device).eval()


def load_gmm_exact(device: str = "cpu", means=None, stds=None, weights=None, dtype=None,
                   **kwargs) -> GaussianMixtureFlow:
    """An exact Gaussian-mixture flow (closed-form velocity; the 2D ground truth).

    Without arguments: the shipped 6-component circle mixture.  With ``means`` ``(K, d)`` and
    ``stds`` ``(K,)`` (and optional ``weights`` ``(K,)``, normalised): your own isotropic mixture,
    i.e. :class:`tfftmol.toy2d.GaussianMixtureFlow`.  ``dtype`` (default float32) e.g. ``torch.float64``.
    """
    import torch

    if kwargs:
        raise TypeError(f"load_pretrained('gmm-exact') got unexpected argument(s) {sorted(kwargs)}; it accepts "
                        "means=(K, d), stds=(K,), weights=(K,) (optional), dtype and device: e.g. "
                        "load_pretrained('gmm-exact', means=[[0, 0], [3, 0]], stds=[0.5, 0.5]); "
                        "or build tfftmol.toy2d.GaussianMixtureFlow / circle_gmm / random_gmm directly")
    dtype = torch.float32 if dtype is None else dtype
    if means is None and stds is None and weights is None:
        return circle_gmm(dtype=dtype).to(device)
    if means is None or stds is None:
        raise TypeError("load_pretrained('gmm-exact', ...) needs both means=(K, d) and stds=(K,) for your own "
                        "mixture (weights are optional)")
    m = torch.as_tensor(means, dtype=torch.float64)
    s = torch.as_tensor(stds, dtype=torch.float64)
    if m.dim() != 2 or s.reshape(-1).shape != (m.shape[0],) or not bool((s > 0).all()):
        raise ValueError(f"gmm-exact: means must be (K, d) and stds (K,) positive; got means of shape "
                         f"{tuple(m.shape)} and stds of shape {tuple(s.shape)}")
    if weights is not None:
        w = torch.as_tensor(weights, dtype=torch.float64)
        if w.shape != (m.shape[0],) or not bool((w > 0).all()):
            raise ValueError(f"gmm-exact: weights must be (K,) = ({m.shape[0]},) positive; got {weights!r}")
    return GaussianMixtureFlow(m, s.reshape(-1), weights, dtype=dtype).to(device)
