"""Loading the shipped 2D flows (trained by ``scripts/pretrain_toy2d.py``)."""
from __future__ import annotations

import json
from pathlib import Path

from ..core.checkpoint import load_tensors
from .gmm import GaussianMixtureFlow, circle_gmm
from .toy import MLPFlow

WEIGHTS = Path(__file__).resolve().parent / "weights"


def load_toy2d(name: str, device: str = "cpu") -> MLPFlow:
    """Load ``toy2d-<dataset>``: an :class:`MLPFlow` from safetensors plus its JSON card."""
    card = json.loads((WEIGHTS / f"{name}.card.json").read_text())
    model = MLPFlow(**card["hparams"])
    model.load_state_dict(load_tensors(WEIGHTS / f"{name}.safetensors"))
    return model.to(device).eval()


def load_gmm_exact(device: str = "cpu") -> GaussianMixtureFlow:
    """The exact 6-component circle GMM flow (closed-form velocity; the 2D ground truth)."""
    return circle_gmm().to(device)
