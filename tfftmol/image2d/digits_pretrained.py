"""Moved to :mod:`tfftmol.digits.pretrained`; this name is kept for one release."""
import importlib as _importlib

_MODULE = _importlib.import_module("tfftmol.digits.pretrained")


def __getattr__(name):
    return getattr(_MODULE, name)
