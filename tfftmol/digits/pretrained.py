"""Loading the shipped digit models (trained by ``scripts/pretrain_digits.py``): ``digits-flow`` and ``digits-classifier``.

Weights are safetensors (no pickled code) beside a JSON model card; nothing is downloaded.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Optional, Sequence

from ..core.checkpoint import load_tensors
from .models import DigitClassifier, DigitFlow

__all__ = ["WEIGHTS", "load_digits_flow", "load_digits_classifier"]

WEIGHTS = Path(__file__).resolve().parent / "weights"


def _card(name: str) -> dict:
    path = WEIGHTS / f"{name}.card.json"
    if not path.is_file():
        raise FileNotFoundError(f"{path.name} is missing; build it with `python scripts/pretrain_digits.py`")
    return json.loads(path.read_text())


def load_digits_flow(device: str = "cpu", guidance: Optional[float] = None,
                     prompts: Sequence[int] = tuple(range(10))) -> DigitFlow:
    """The class-conditional digit flow (frozen, eval mode).

    Args:
        guidance: classifier-free guidance weight; default: the card's ``default_guidance``.
        prompts: the round-robin prompt list used when no ``cond`` is passed.
    """
    card = _card("digits-flow")
    w = card.get("default_guidance", 1.0) if guidance is None else guidance
    model = DigitFlow(**card["hparams"], guidance=w, prompts=prompts)
    model.load_state_dict(load_tensors(WEIGHTS / "digits-flow.safetensors"))
    for p in model.parameters():
        p.requires_grad_(False)
    return model.to(device).eval()


def load_digits_classifier(device: str = "cpu") -> DigitClassifier:
    """The CNN digit classifier (frozen, eval mode); its card states the held-out test accuracy."""
    card = _card("digits-classifier")
    model = DigitClassifier(**card["hparams"])
    model.load_state_dict(load_tensors(WEIGHTS / "digits-classifier.safetensors"))
    model.cache_key = f"digits-classifier:{card.get('sha1', '')}"
    for p in model.parameters():
        p.requires_grad_(False)
    return model.to(device).eval()
