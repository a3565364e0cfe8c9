"""Task kind -> :class:`~tfftmol.pipeline.task.Task`: the CLI, the Python API and tuning all dispatch here.

Tasks are registered by import path, so importing the registry does not import
RDKit or the digit models; a task module is imported the first time its kind is used.
"""
from __future__ import annotations

import importlib
from typing import Any, Mapping

from ..core.config import ConfigError

__all__ = ["register_task", "get_task", "task_kinds", "infer_task_kind"]

_TASKS: dict[str, str] = {
    "molecule": "tfftmol.chem.task:MoleculeTask",
    "digits": "tfftmol.digits.task:DigitsTask",
    "toy2d": "tfftmol.toy2d.task:Toy2DTask",
}
_LOADED: dict[str, Any] = {}


def register_task(kind: str, target: str | Any) -> None:
    """Register a task kind: ``"module:Class"`` or a task object (a user's own domain)."""
    if not isinstance(kind, str) or not kind:
        raise ValueError(f"kind={kind!r} must be a non-empty string")
    if isinstance(target, str):
        _TASKS[kind] = target
        _LOADED.pop(kind, None)
    else:
        _TASKS[kind] = f"<object {type(target).__name__}>"
        _LOADED[kind] = target


def task_kinds() -> list[str]:
    """The registered task kinds."""
    return sorted(_TASKS)


def get_task(kind: str):
    """The task object of ``kind``.

    Raises:
        ConfigError: an unknown kind, listing the registered ones.
    """
    if kind not in _TASKS:
        raise ConfigError(f"task={kind!r} must be one of {task_kinds()}")
    if kind not in _LOADED:
        mod, cls = _TASKS[kind].split(":")
        _LOADED[kind] = getattr(importlib.import_module(mod), cls)()
    return _LOADED[kind]


def infer_task_kind(data: Mapping[str, Any]) -> str:
    """The task kind of a flat (earlier-release) config: by its ``model`` field."""
    model = str(data.get("model", "qm9-graph"))
    if model.startswith("digits"):
        return "digits"
    if model.startswith("toy2d") or model == "gmm-exact" or "gmm" in data:
        return "toy2d"
    return "molecule"
