"""Moved to :mod:`tfftmol.digits.models`; this name is kept for one release."""
import importlib as _importlib

_MODULE = _importlib.import_module("tfftmol.digits.models")


def __getattr__(name):
    return getattr(_MODULE, name)
