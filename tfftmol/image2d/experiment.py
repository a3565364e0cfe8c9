"""Moved to :mod:`tfftmol.toy2d.experiment`; this name is kept for one release."""
import importlib as _importlib

_MODULE = _importlib.import_module("tfftmol.toy2d.experiment")


def __getattr__(name):
    return getattr(_MODULE, name)
