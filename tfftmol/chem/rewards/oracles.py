"""Structure oracles and user functions: Tanimoto similarity, a SMARTS match, a wrapped ``fn(mol)``.

>>> round(float(SimilarityReward("CCO")(["OCC"]).values[0]), 3)
1.0
"""
from __future__ import annotations

import hashlib
import importlib
import importlib.machinery
import importlib.util
import inspect
import math
import os
import sys
from pathlib import Path
from typing import Any, Callable, Optional, Sequence

from rdkit import Chem, DataStructs, rdBase
from rdkit.Chem import rdFingerprintGenerator

from tfftmol.chem.mol import to_mol
from tfftmol.core.config import SEARCH_DIRS as _SEARCH_DIRS
from tfftmol.core.config import config_search_dirs as callable_search_dirs

from .base import Reward

__all__ = ["SimilarityReward", "SubstructureReward", "CallableReward", "callable_search_dirs", "source_sha256"]


class SimilarityReward(Reward):
    """Tanimoto similarity in [0, 1] to ``target`` on Morgan fingerprints (radius 2, 2048 bits)."""

    name = "similarity"
    nominal_range = (0.0, 1.0)

    def __init__(self, target: str, radius: int = 2, n_bits: int = 2048, **kw):
        super().__init__(**kw)
        mol = to_mol(target)
        if mol is None:
            raise ValueError(f"similarity: target {target!r} is not a valid SMILES")
        if int(radius) < 0 or int(n_bits) < 1:
            raise ValueError(f"similarity: need radius >= 0 and n_bits >= 1, got radius={radius}, n_bits={n_bits}")
        self.target, self.radius, self.n_bits = str(target), int(radius), int(n_bits)
        self._gen = None
        self._target_fp = None

    def _fp(self, mol):
        if self._gen is None:
            self._gen = rdFingerprintGenerator.GetMorganGenerator(radius=self.radius, fpSize=self.n_bits)
            self._target_fp = self._gen.GetFingerprint(to_mol(self.target))
        return self._gen.GetFingerprint(mol)

    def _score(self, mol):
        fp = self._fp(mol)
        return DataStructs.TanimotoSimilarity(fp, self._target_fp)

    def params(self):
        return {"target": self.target, "radius": self.radius, "n_bits": self.n_bits}

    def __getstate__(self):
        state = super().__getstate__()
        state["_gen"] = state["_target_fp"] = None  # rebuilt lazily in the worker
        return state


class SubstructureReward(Reward):
    """``match_value`` if the molecule matches ``smarts``, else ``nomatch_value``.

    A penalty filter is ``match_value=-1, nomatch_value=0``; a reward for a wanted
    group is ``match_value=1, nomatch_value=0`` (the default).
    """

    name = "substructure"

    def __init__(self, smarts: str, match_value: float = 1.0, nomatch_value: float = 0.0, **kw):
        super().__init__(**kw)
        with rdBase.BlockLogs():
            patt = Chem.MolFromSmarts(str(smarts))
        if patt is None:
            raise ValueError(f"substructure: {smarts!r} is not a valid SMARTS")
        self.smarts, self.match_value, self.nomatch_value = str(smarts), float(match_value), float(nomatch_value)
        self._patt = None

    def base_range(self):
        return (min(self.match_value, self.nomatch_value), max(self.match_value, self.nomatch_value))

    def _score(self, mol):
        if self._patt is None:
            self._patt = Chem.MolFromSmarts(self.smarts)
        return self.match_value if mol.HasSubstructMatch(self._patt) else self.nomatch_value

    def params(self):
        return {"smarts": self.smarts, "match_value": self.match_value, "nomatch_value": self.nomatch_value}

    def __getstate__(self):
        state = super().__getstate__()
        state["_patt"] = None
        return state


class CallableReward(Reward):
    """Wrap a user's ``fn(mol) -> float`` as a reward.

    **A config with a callable runs that code**: building the reward imports the
    module (its top-level code runs), scoring calls the function.  The module is
    looked up only where the config says (see :func:`_import_path`): an explicit
    file ``"path/to/file.py:function"`` (relative to the config's directory), a
    module in the config's own directory, or an installed/already-importable module
    on ``sys.path`` *without* the current working directory, so a ``.py`` file
    planted in the directory a command is started from is never imported.
    The SHA-256 of the module's source is part of the reward's identity
    (:meth:`sources`), so editing the function invalidates cached offline batches.

    Args:
        fn: a callable, or an import path ``"package.module:function"`` or
            ``"file.py:function"`` (the only forms that survive :meth:`to_config`).
        range: nominal ``(lo, hi)`` of ``fn`` on real molecules; the default
            penalty is derived from it.  Give ``range`` or ``penalty``.
        label: a name for reports (defaults to the function's name).
    """

    name = "callable"

    def __init__(self, fn: Callable[[Chem.Mol], float] | str, range: Optional[Sequence[float]] = None,
                 label: Optional[str] = None, **kw):
        super().__init__(**kw)
        if isinstance(fn, str):
            self.path: Optional[str] = fn
            fn, self.source_sha256 = _import_path(fn)
        else:
            self.path = None
            self.source_sha256 = source_sha256(fn)
        if not callable(fn):
            raise ValueError(f"callable reward: {fn!r} is not callable")
        if range is None and self._penalty is None:
            raise ValueError("callable reward: give range=(lo, hi) or penalty= so invalid molecules get a "
                             "penalty below the reward's values")
        if range is not None:
            lo, hi = map(float, range)
            if not (math.isfinite(lo) and math.isfinite(hi) and lo <= hi):
                raise ValueError(f"callable reward: range must be finite with lo <= hi, got {range}")
            self._range: Optional[tuple[float, float]] = (lo, hi)
        else:
            self._range = None
        self.fn = fn
        self.label = label or (self.path.split(":")[-1] if self.path else getattr(fn, "__name__", "callable"))

    def base_range(self):
        if self._range is not None:
            return self._range
        return (self._penalty + 1.0, self._penalty + 1.0)  # only used when penalty is explicit

    def _score(self, mol):
        return self.fn(mol)

    def sources(self) -> dict[str, str]:
        return {self.path or self.label: self.source_sha256}

    def params(self):
        if self.path is None:
            raise ValueError(f"callable reward {self.label!r} wraps a Python object; only an import path "
                             "'package.module:function' can be written to a config")
        out: dict[str, Any] = {"fn": self.path}
        if self._range is not None:
            out["range"] = list(self._range)
        if self.label != self.path.split(":")[-1]:
            out["label"] = self.label
        return out


def source_sha256(obj: Any) -> str:
    """SHA-256 of the source file of the module defining ``obj`` (or of ``obj``'s own source; ``"unavailable"``)."""
    mod = obj if inspect.ismodule(obj) else sys.modules.get(getattr(obj, "__module__", None) or "")
    for target in (mod, obj):
        try:
            f = inspect.getsourcefile(target) if target is not None else None
        except TypeError:
            f = None
        if f and os.path.isfile(f):
            with open(f, "rb") as fh:
                return hashlib.sha256(fh.read()).hexdigest()
    try:
        return hashlib.sha256(inspect.getsource(obj).encode()).hexdigest()
    except (OSError, TypeError):
        return "unavailable"


def _cwd_entries() -> set[str]:
    cwd = os.path.realpath(os.getcwd())
    return {p for p in sys.path if p in ("", ".") or os.path.realpath(p or ".") == cwd}


def _find_module(mod: str):
    """Import ``mod`` (dotted) from the config's directories, then from ``sys.path`` without the working directory."""
    if mod in sys.modules:  # already imported by this process (reloaded if we imported it and it was edited)
        m = sys.modules[mod]
        if _LOADED.get(mod) not in (None, source_sha256(m)):
            m = importlib.reload(m)
            _LOADED[mod] = source_sha256(m)
        return m
    top = mod.split(".")[0]
    dirs = list(_SEARCH_DIRS.get())
    spec = importlib.machinery.PathFinder.find_spec(top, dirs) if dirs else None
    if spec is None:
        drop = _cwd_entries()
        cwd = os.path.realpath(os.getcwd())
        safe = [p for p in sys.path if p not in drop]
        for finder in sys.meta_path:  # what import would do, with sys.path less the working directory
            if not hasattr(finder, "find_spec"):
                continue
            try:
                spec = finder.find_spec(top, safe) if finder is importlib.machinery.PathFinder \
                    else finder.find_spec(top, None)
            except (ImportError, ValueError, TypeError):
                spec = None
            if spec is not None:
                break
        origin = getattr(spec, "origin", None)
        if spec is not None and origin and os.path.realpath(os.path.dirname(origin)) == cwd \
                and cwd not in dirs:
            spec = None  # found by another finder in the working directory: refused
        if spec is None:
            raise ImportError(f"no module named {top!r} in the config's directory {dirs or '(none)'} or on sys.path "
                              "(the current working directory is not searched; name a file 'path/to/file.py:fn' "
                              "or install the module)")
    saved = list(sys.path)
    try:
        sys.path[:] = [*dirs, *(p for p in saved if p not in _cwd_entries())]
        m = importlib.import_module(mod)
    finally:
        sys.path[:] = saved
    _LOADED[mod] = source_sha256(m)
    return m


#: Modules imported for callable rewards -> SHA-256 of the source they were imported from.
_LOADED: dict[str, str] = {}


def _import_file(file: str):
    p = Path(file).expanduser()
    if not p.is_absolute():
        dirs = _SEARCH_DIRS.get()
        p = Path(dirs[0]) / p if dirs else p
    p = p.resolve()
    if not p.is_file():
        raise ImportError(f"file {str(p)!r} does not exist")
    name = "tfftmol_user_" + hashlib.sha1(str(p).encode()).hexdigest()[:12]
    with open(p, "rb") as fh:
        sha = hashlib.sha256(fh.read()).hexdigest()
    if name in sys.modules and _LOADED.get(name) == sha:  # the same file, unchanged: not run again
        return sys.modules[name]
    spec = importlib.util.spec_from_file_location(name, p)
    if spec is None or spec.loader is None:
        raise ImportError(f"cannot load {str(p)!r} as a Python module")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    try:
        spec.loader.exec_module(module)
    except BaseException:
        sys.modules.pop(name, None)
        raise
    _LOADED[name] = sha
    return module


def _import_path(path: str) -> tuple[Callable, str]:
    """``"package.module:attr"`` or ``"path/to/file.py:attr"`` -> (the object, SHA-256 of its module's source)."""
    mod, sep, attr = path.rpartition(":") if isinstance(path, str) else ("", "", "")
    if not sep or not mod or not attr:
        raise ValueError(f"callable reward: import path must look like 'package.module:function' or "
                         f"'file.py:function', got {path!r}")
    try:
        if mod.endswith(".py") or "/" in mod or os.sep in mod:
            module = _import_file(mod)
        else:
            module = _find_module(mod)
        obj: Any = module
        for part in attr.split("."):
            obj = getattr(obj, part)
    except (ImportError, AttributeError) as e:
        raise ValueError(f"callable reward: cannot import {path!r}: {e}") from e
    except Exception as e:  # noqa: BLE001 - the module's own top-level code failed
        raise ValueError(f"callable reward: importing {path!r} raised {type(e).__name__}: {e}") from e
    return obj, source_sha256(module)
