"""Saving and loading the shipped ``zinc-selfies`` model (safetensors; no pickled code is executed).

One file, ``tfftmol/chem/weights/zinc-selfies.safetensors``, holds the VAE
(``vae.*``), the latent velocity MLP (``net.*``) and the latent normalisation
(``z_mean``, ``z_std``); the metadata holds both configs and the SELFIES
vocabulary.  The measured figures are in ``zinc-selfies.card.json`` beside it.

>>> from tfftmol.chem.selfies import load_zinc_selfies
>>> model = load_zinc_selfies()
>>> model.sample(4, seed=0).x.shape[0]
4
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Optional, Union

import torch

from .autoencoder import SelfiesVAE, VAEConfig
from .codec import SelfiesVocab
from .latent_flow import FlowConfig, LatentVelocityMLP, ZincSelfiesFlow

__all__ = ["WEIGHTS_PATH", "CARD_PATH", "save_zinc_selfies", "load_zinc_selfies", "training_view",
           "card_beside"]

WEIGHTS_DIR = Path(__file__).resolve().parents[1] / "weights"
WEIGHTS_PATH = WEIGHTS_DIR / "zinc-selfies.safetensors"
CARD_PATH = WEIGHTS_DIR / "zinc-selfies.card.json"
FORMAT = "tfftmol.zinc-selfies"


def card_beside(weights: Optional[Union[str, Path]] = None) -> Path:
    """The model card beside a ``zinc-selfies`` weights file (``x.safetensors`` -> ``x.card.json``);
    the shipped card when ``weights`` is None."""
    return Path(weights).with_suffix(".card.json") if weights else CARD_PATH


def training_view(card_path: Union[str, Path] = CARD_PATH) -> str:
    """Which view of ZINC250k a ``zinc-selfies`` model was trained on, read from its model card.

    ``"moses"`` when the card's ``data.training_data`` names the MOSES view
    (:func:`tfftmol.chem.selfies.data.moses_view`), else ``"zinc250k"`` (also when there is no card):
    the data its samples are to be measured against.
    """
    card_path = Path(card_path)
    if not card_path.exists():
        return "zinc250k"
    data = json.loads(card_path.read_text()).get("data", {})
    return "moses" if "MOSES view" in data.get("training_data", "") else "zinc250k"


def save_zinc_selfies(model: ZincSelfiesFlow, path: Union[str, Path] = WEIGHTS_PATH,
                      extra_metadata: Optional[dict] = None) -> Path:
    """Write the weights as safetensors (atomically), with configs and vocabulary as JSON metadata."""
    from tfftmol.core.checkpoint import save_tensors

    path = Path(path)
    meta = {"format": FORMAT, "vae_config": json.dumps(model.vae.config.to_dict()),
            "flow_config": json.dumps(model.net.config.to_dict()), "vocab": json.dumps(model.vocab.to_dict()),
            "decode_beam": str(model.decode_beam)}
    meta.update({k: str(v) for k, v in (extra_metadata or {}).items()})
    save_tensors(path, {k: v.float() for k, v in model.state_dict().items()}, metadata=meta)
    return path


def load_zinc_selfies(device: Union[str, torch.device] = "cpu",
                      path: Union[str, Path, None] = None, decode_beam: Optional[int] = None) -> ZincSelfiesFlow:
    """Load the shipped drug-like latent flow (``load_pretrained("zinc-selfies")``).

    ``decode_beam``: beams of the decoder (1 = greedy); ``None`` = the file's own setting
    (a fine-tuned model's file records the beam it was trained with; the shipped file: greedy).

    Raises:
        FileNotFoundError: if the weights file does not exist.
        ValueError: if the file is not a zinc-selfies weights file, or ``decode_beam`` is not an integer >= 1.
    """
    from safetensors import safe_open
    from safetensors.torch import load_file
    path = Path(path) if path is not None else WEIGHTS_PATH
    if not path.exists():
        raise FileNotFoundError(f"weights {path} not found; train and export them with scripts/pretrain_zinc.py")
    with safe_open(str(path), framework="pt") as f:
        meta = f.metadata() or {}
    if meta.get("format") != FORMAT:
        raise ValueError(f"{path} is not a zinc-selfies weights file (format={meta.get('format')!r})")
    voc = json.loads(meta["vocab"])
    vocab = SelfiesVocab(voc["alphabet"], voc["max_len"])
    vae = SelfiesVAE(VAEConfig(**json.loads(meta["vae_config"])))
    net = LatentVelocityMLP(FlowConfig(**json.loads(meta["flow_config"])))
    d = net.config.dim
    beam = int(meta.get("decode_beam", 1)) if decode_beam is None else decode_beam
    model = ZincSelfiesFlow(vae, net, vocab, torch.zeros(d), torch.ones(d), decode_beam=beam)
    model.load_state_dict(load_file(str(path), device="cpu"))
    model.vae.requires_grad_(False)
    return model.to(device).eval()
