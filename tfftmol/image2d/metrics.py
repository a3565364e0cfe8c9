"""Moved to :mod:`tfftmol.toy2d.metrics`; this name is kept for one release."""
import importlib as _importlib

_MODULE = _importlib.import_module("tfftmol.toy2d.metrics")


def __getattr__(name):
    return getattr(_MODULE, name)
