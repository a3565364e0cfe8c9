"""``load_pretrained(name)``: the one entry point to the models that ship with tfftmol.

Weights are safetensors files inside the package, each with a model card
(JSON); nothing is downloaded.  ``available_models()`` lists the names.
"""
from __future__ import annotations

import importlib
import json
from pathlib import Path
from typing import Any

__all__ = ["load_pretrained", "available_models", "model_card"]

_PKG = Path(__file__).resolve().parent

# name -> (loader "module:function", card path relative to the package)
_REGISTRY: dict[str, tuple[str, str]] = {
    "qm9-graph": ("tfftmol.chem.qm9_model:load_qm9_graph", "chem/weights/qm9-graph.card.json"),
    "zinc-selfies": ("tfftmol.chem.selfies.loader:load_zinc_selfies", "chem/weights/zinc-selfies.card.json"),
    "toy2d-gmm": ("tfftmol.toy2d.pretrained:load_toy2d", "toy2d/weights/toy2d-gmm.card.json"),
    "toy2d-moons": ("tfftmol.toy2d.pretrained:load_toy2d", "toy2d/weights/toy2d-moons.card.json"),
    "toy2d-ring": ("tfftmol.toy2d.pretrained:load_toy2d", "toy2d/weights/toy2d-ring.card.json"),
    "gmm-exact": ("tfftmol.toy2d.pretrained:load_gmm_exact", ""),
    "digits-flow": ("tfftmol.digits.pretrained:load_digits_flow", "digits/weights/digits-flow.card.json"),
    "digits-classifier": ("tfftmol.digits.pretrained:load_digits_classifier",
                          "digits/weights/digits-classifier.card.json"),
}


def available_models() -> list[str]:
    """Names accepted by :func:`load_pretrained`."""
    return sorted(_REGISTRY)


def model_card(name: str) -> dict:
    """The model card (data, budget, measured metrics) of a shipped model."""
    _check(name)
    card = _REGISTRY[name][1]
    if not card:
        return {"name": name, "description": "closed-form model; no weights"}
    return json.loads((_PKG / card).read_text())


def _check(name: str) -> None:
    if name not in _REGISTRY:
        raise ValueError(f"unknown pre-trained model {name!r}; valid names: {available_models()}, a run directory "
                         "holding model.safetensors, or a .safetensors file")


def _load_path(path: Path, device: str, **kwargs: Any):
    """A fine-tuned (or exported) molecular flow from a run directory or a ``.safetensors`` file.

    ``kwargs``: loader options of a latent (SELFIES) flow (``decode_beam``); none for graph flows.
    """
    weights = path / "model.safetensors" if path.is_dir() else path
    if not weights.is_file():
        raise ValueError(f"model={str(path)!r}: a run directory must hold model.safetensors (a finished run); "
                         f"{weights} does not exist")
    from safetensors import safe_open

    try:
        with safe_open(str(weights), framework="pt") as f:
            meta = f.metadata() or {}
    except Exception as e:  # noqa: BLE001 - not a safetensors file
        raise ValueError(f"model={str(path)!r}: {weights} is not a safetensors file "
                         f"({type(e).__name__}: {e})") from None
    task = meta.get("task", "molecule")
    if task != "molecule":
        raise ValueError(f"model={str(path)!r}: weights of a {task!r} run; loading a run directory by path supports "
                         "molecular runs (task: molecule) only")
    from .chem.selfies.loader import FORMAT as LATENT_FORMAT

    name = "zinc-selfies" if meta.get("format") == LATENT_FORMAT else "qm9-graph"
    allowed = {"decode_beam"} if name == "zinc-selfies" else set()
    if set(kwargs) - allowed:
        raise ValueError(f"load_pretrained({str(path)!r}): options {sorted(set(kwargs) - allowed)} do not apply to "
                         f"a {name} weights file (it accepts {sorted(allowed) or 'none'})")
    mod, fn = _REGISTRY[name][0].split(":")
    model = getattr(importlib.import_module(mod), fn)(device=device, path=str(weights), **kwargs)
    for p in model.parameters():
        p.requires_grad_(False)
    return model.eval()


def load_pretrained(name: str, device: str = "cpu", **kwargs: Any):
    """Load a shipped pre-trained flow model by name, or a fine-tuned molecular flow by path.

    ``name`` is one of :func:`available_models`, a run directory written by
    ``tfftmol run`` (its ``model.safetensors``), or a ``.safetensors`` file of a
    molecular flow (shipped format or a run's export).

    >>> import tfftmol
    >>> model = tfftmol.load_pretrained("gmm-exact")
    >>> tuple(model.state_shape)
    (2,)

    Raises:
        ValueError: for an unknown name that is no run directory or weights file, listing the valid names.
    """
    if name not in _REGISTRY and isinstance(name, (str, Path)):
        p = Path(name)
        if p.is_dir() or str(name).endswith(".safetensors"):
            return _load_path(p, device, **kwargs)
    _check(name)
    target = _REGISTRY[name][0]
    mod, fn = target.split(":")
    loader = getattr(importlib.import_module(mod), fn)
    if fn == "load_toy2d":
        return loader(name, device=device, **kwargs)
    return loader(device=device, **kwargs)
