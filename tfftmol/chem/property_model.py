"""QM9 property predictor: HOMO-LUMO gap (eV) and dipole moment (Debye).

A deepchem ``MultitaskRegressor`` (a multilayer perceptron, 2048-512-256-2)
on ECFP4 count fingerprints (deepchem ``CircularFingerprint``, radius 2, 2048
hashed counts), trained
by ``scripts/train_property_model.py`` on the QM9 DFT labels with a scaffold
split.  The package ships

- ``weights/qm9-property.safetensors``: the state dict of the deepchem
  model's torch module (tensors only: loading executes no pickled code);
- ``weights/qm9-property.card.json``: featuriser, architecture, tasks and
  units, target standardisation, split, training budget and test MAE.

Loading rebuilds the deepchem model from the card and fills in the weights;
predictions are de-standardised, ``y = mean + std * f(fp)``, so they come out
in the card's units (gap in eV, mu in Debye).

Example:
    >>> model = load_property_model()                       # doctest: +SKIP
    >>> model.predict(["CCO", "c1ccoc1"])["gap"]           # eV, shape (2,)  # doctest: +SKIP
"""
from __future__ import annotations

import contextlib
import io
import json
import logging
import os
import warnings
from pathlib import Path
from typing import Any, Optional, Sequence

import numpy as np
import torch
from rdkit import rdBase

from tfftmol.chem.mol import to_mol

__all__ = ["PropertyModel", "load_property_model", "import_deepchem", "WEIGHTS_DIR", "MODEL_NAMES",
           "build_regressor"]

WEIGHTS_DIR = Path(__file__).resolve().parent / "weights"
MODEL_NAMES = ("qm9-property",)
_LOADED: dict[str, "PropertyModel"] = {}


def import_deepchem():
    """Import deepchem with its optional-backend messages silenced."""
    prev = logging.root.manager.disable
    logging.disable(logging.WARNING)
    try:
        with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()), \
                contextlib.redirect_stderr(io.StringIO()):
            warnings.simplefilter("ignore")
            import deepchem as dc
    finally:
        logging.disable(prev)
    for name in ("deepchem", "deepchem.models", "deepchem.feat"):
        logging.getLogger(name).setLevel(logging.ERROR)
    return dc


def build_regressor(card: dict) -> Any:
    """A fresh deepchem ``MultitaskRegressor`` with the architecture described in ``card``."""
    dc = import_deepchem()
    arch = card["architecture"]
    return dc.models.MultitaskRegressor(
        n_tasks=len(card["tasks"]), n_features=int(card["featurizer"]["size"]),
        layer_sizes=list(arch["layer_sizes"]), dropouts=arch.get("dropouts", 0.0),
        activation_fns=arch.get("activation", "relu"), residual=bool(arch.get("residual", False)),
        batch_size=int(arch.get("batch_size", 128)), learning_rate=float(arch.get("learning_rate", 1e-3)),
        weight_decay_penalty=float(arch.get("weight_decay", 0.0)), device=torch.device("cpu"))


class PropertyModel:
    """A loaded property predictor.

    Attributes:
        card: the model card (dict).
        tasks: task names, e.g. ``["gap", "mu"]``.
        units: task -> units (``"eV"``, ``"Debye"``).
        regressor: the deepchem model; ``regressor.model`` is the torch module.
    """

    def __init__(self, regressor: Any, card: dict):
        self.regressor = regressor
        self.card = card
        self.tasks = [t["name"] for t in card["tasks"]]
        self.units = {t["name"]: t["units"] for t in card["tasks"]}
        self._mean = np.array([t["mean"] for t in card["tasks"]], dtype=np.float64)
        self._std = np.array([t["std"] for t in card["tasks"]], dtype=np.float64)
        fz = card["featurizer"]
        dc = import_deepchem()
        self._featurizer = dc.feat.CircularFingerprint(size=int(fz["size"]), radius=int(fz["radius"]),
                                                       chiral=bool(fz.get("chiral", False)),
                                                       bonds=bool(fz.get("bonds", True)),
                                                       features=bool(fz.get("features", False)),
                                                       is_counts_based=bool(fz.get("is_counts_based", False)))
        self.module = regressor.model
        self.module.eval()

    def featurize(self, mols: Sequence[Any]) -> np.ndarray:
        """ECFP features (bits or counts, as in the card), shape ``(n, size)`` float32.  Items are RDKit ``Mol`` or SMILES; all must be valid."""
        parsed = [to_mol(m) for m in mols]
        bad = [i for i, m in enumerate(parsed) if m is None]
        if bad:
            raise ValueError(f"property model: items {bad[:10]} are not valid molecules")
        if not parsed:
            return np.zeros((0, int(self.card["featurizer"]["size"])), dtype=np.float32)
        with contextlib.redirect_stdout(io.StringIO()), rdBase.BlockLogs():  # RDKit deprecation chatter
            feats = np.stack([np.asarray(self._featurizer._featurize(m), dtype=np.float32) for m in parsed])
        return feats

    @torch.no_grad()
    def predict_features(self, feats: np.ndarray, batch_size: int = 4096) -> np.ndarray:
        """Predictions ``(n, n_tasks)`` in task units from fingerprints ``(n, size)``."""
        outs = []
        for i in range(0, len(feats), batch_size):
            xb = torch.as_tensor(feats[i:i + batch_size], dtype=torch.float32)
            out = self.module([xb, False])
            out = out[0] if isinstance(out, (tuple, list)) else out
            outs.append(out.reshape(len(xb), -1).double().numpy())
        z = np.concatenate(outs) if outs else np.zeros((0, len(self.tasks)))
        return self._mean + self._std * z

    def predict(self, mols: Sequence[Any]) -> dict[str, np.ndarray]:
        """Task -> predictions ``(n,)`` float64 in the task's units (gap: eV, mu: Debye)."""
        y = self.predict_features(self.featurize(mols))
        return {t: y[:, k] for k, t in enumerate(self.tasks)}


def load_property_model(name: str = "qm9-property", weights_dir: Optional[str | os.PathLike] = None,
                        cache: bool = True) -> PropertyModel:
    """Load a shipped property model by name (weights are safetensors, never pickle).

    Args:
        name: one of :data:`MODEL_NAMES`.
        weights_dir: folder holding ``<name>.safetensors`` and ``<name>.card.json``
            (default: the package's ``weights`` folder).
        cache: reuse an already loaded model in this process.

    Raises:
        ValueError: unknown name; FileNotFoundError: weights missing.
    """
    if name not in MODEL_NAMES and weights_dir is None:
        raise ValueError(f"unknown property model {name!r}; valid names: {list(MODEL_NAMES)}")
    folder = Path(weights_dir) if weights_dir is not None else WEIGHTS_DIR
    key = str(folder / name)
    if cache and key in _LOADED:
        return _LOADED[key]
    card_path, w_path = folder / f"{name}.card.json", folder / f"{name}.safetensors"
    for p in (card_path, w_path):
        if not p.is_file():
            raise FileNotFoundError(f"property model {name!r}: {p.name} not found in {folder}; "
                                    "train it with scripts/train_property_model.py")
    from safetensors.torch import load_file

    card = json.loads(card_path.read_text())
    reg = build_regressor(card)
    state = load_file(str(w_path))
    reg.model.load_state_dict(state)
    model = PropertyModel(reg, card)
    if cache:
        _LOADED[key] = model
    return model
