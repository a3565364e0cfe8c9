"""Configuration as plain dataclasses, loadable from YAML, with unknown keys rejected.

One config runs the same from the CLI, a notebook, a benchmark and an Optuna
trial.  ``from_dict`` validates once: an unknown key raises a ``ValueError``
that names the key, its path and the accepted keys.
"""
from __future__ import annotations

import contextlib
import contextvars
import dataclasses
import functools
import types
import typing
from pathlib import Path
from typing import Any, Iterator, Mapping, Type, TypeVar

import yaml

__all__ = ["config_search_dirs", "SEARCH_DIRS", "from_dict", "to_dict", "load_yaml", "dump_yaml", "merge", "ConfigError", "read_mapping", "check_int",
           "check_number", "check_choice"]

T = TypeVar("T")


class ConfigError(ValueError):
    """A configuration value or key is invalid; the message names the field."""


#: Directories where code a config names (a callable reward's ``fn: module:function``) is looked up first:
#: the directory of the YAML file being loaded.  The working directory is never searched implicitly.
SEARCH_DIRS: contextvars.ContextVar[tuple[str, ...]] = contextvars.ContextVar("tfftmol_config_dirs", default=())


@contextlib.contextmanager
def config_search_dirs(*dirs: str | Path) -> Iterator[None]:
    """While active, code named by a config is looked up in ``dirs`` first (see :data:`SEARCH_DIRS`)."""
    token = SEARCH_DIRS.set(tuple(str(Path(d).resolve()) for d in dirs) + SEARCH_DIRS.get())
    try:
        yield
    finally:
        SEARCH_DIRS.reset(token)


def _is_dataclass_type(tp) -> bool:
    return isinstance(tp, type) and dataclasses.is_dataclass(tp)


def _resolve_optional(tp):
    """``Optional[X]`` / ``X | None`` -> ``X``; anything else unchanged."""
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        if len(args) == 1:
            return args[0]
    return tp


@functools.lru_cache(maxsize=None)
def _type_hints(cls: type) -> dict:
    """``typing.get_type_hints`` of a dataclass, once per class (it compiles every string annotation)."""
    return typing.get_type_hints(cls)


def from_dict(cls: Type[T], data: Mapping[str, Any] | None, path: str = "") -> T:
    """Build dataclass ``cls`` from a mapping, recursing into nested dataclasses.

    Raises:
        ConfigError: on an unknown key (naming it and listing the accepted keys)
            or a non-mapping where a section is expected.
    """
    if data is None:
        data = {}
    if isinstance(data, cls):
        return data
    if not isinstance(data, Mapping):
        raise ConfigError(f"{path or cls.__name__}: expected a mapping, got {type(data).__name__} {data!r}")
    hints = _type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init}
    unknown = sorted((k for k in data if not isinstance(k, str) or k not in fields), key=str)
    if unknown:
        where = f" in '{path}'" if path else ""
        raise ConfigError(f"unknown config key(s) {unknown}{where}; accepted keys: {sorted(fields)}")
    kwargs = {}
    for name, value in data.items():
        tp = _resolve_optional(hints.get(name, Any))
        sub = f"{path}.{name}" if path else name
        if _is_dataclass_type(tp) and value is not None:
            kwargs[name] = from_dict(tp, value, sub)
        elif tp is float and isinstance(value, str):
            kwargs[name] = _float_string(value, sub)
        else:
            kwargs[name] = value
    try:
        return cls(**kwargs)
    except ConfigError:
        raise
    except (TypeError, ValueError, ArithmeticError, AttributeError, KeyError, IndexError) as e:
        # __post_init__ validation, or a value of the wrong type that a check tripped over
        raise ConfigError(f"{path or cls.__name__}: {type(e).__name__}: {e}") from e


def _float_string(value: str, where: str) -> float:
    """A float field given as a string: YAML 1.1 reads ``3e-4`` (no dot) as a string, so numbers are accepted."""
    try:
        return float(value.strip())
    except ValueError:
        raise ConfigError(f"{where}={value!r} must be a number (e.g. 3e-4 or 0.0003)") from None


def to_dict(obj) -> dict:
    """Dataclass -> plain nested dict (YAML-safe scalars, lists and dicts)."""
    def conv(v):
        if dataclasses.is_dataclass(v):
            return {f.name: conv(getattr(v, f.name)) for f in dataclasses.fields(v)}
        if isinstance(v, (list, tuple)):
            return [conv(x) for x in v]
        if isinstance(v, dict):
            return {k: conv(x) for k, x in v.items()}
        if isinstance(v, Path):
            return str(v)
        return v
    return conv(obj)


def load_yaml(path: str | Path, allow_empty: bool = True) -> Any:
    """Parse a YAML file safely (an empty file gives ``{}`` unless ``allow_empty=False``).

    Raises:
        ConfigError: the file does not parse (naming the file, line and column), is not
            UTF-8 text, or is empty when ``allow_empty`` is false.
    """
    try:
        with open(path, encoding="utf-8") as f:
            data = yaml.safe_load(f)
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None) or getattr(e, "context_mark", None)
        where = f", line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
        what = getattr(e, "problem", None) or str(e).splitlines()[0]
        raise ConfigError(f"{path}{where}: not valid YAML ({what})") from None
    except UnicodeDecodeError as e:
        raise ConfigError(f"{path}: not UTF-8 text ({e.reason} at byte {e.start})") from None
    if data is None:
        if not allow_empty:
            raise ConfigError(f"{path}: config is empty (give at least the task and its options; "
                              "an empty file would run every default)")
        return {}
    return data


def dump_yaml(obj, path: str | Path | None = None) -> str:
    text = yaml.safe_dump(to_dict(obj) if dataclasses.is_dataclass(obj) else obj, sort_keys=False)
    if path is not None:
        Path(path).write_text(text)
    return text


def merge(base: Mapping[str, Any], patch: Mapping[str, Any], opaque: tuple[str, ...] = ()) -> dict:
    """Deep-merge ``patch`` into a copy of ``base`` (nested mappings merge; keys in ``opaque`` are replaced whole)."""
    out = dict(base)
    for k, v in patch.items():
        out[k] = merge(out.get(k) or {}, v, opaque) if isinstance(v, Mapping) and k not in opaque else v
    return out


# -- the one set of field checks used by every config's __post_init__ ---------------------------

def check_int(obj, *names: str, low: int = 1, allow_zero: bool = False, note: str = "") -> None:
    """Each named field of ``obj`` must be an integer ``>= low`` (or exactly 0 if ``allow_zero``).

    Raises:
        ConfigError: naming the field, its value and the accepted range.
    """
    for name in names:
        v = getattr(obj, name)
        ok = isinstance(v, int) and not isinstance(v, bool) and (v >= low or (allow_zero and v == 0))
        if not ok:
            extra = " or 0" if allow_zero and low > 0 else ""
            raise ConfigError(f"{name}={v!r} must be an integer >= {low}{extra}{note}")


def check_number(obj, name: str, low: float | None = None, high: float | None = None,
                 low_open: bool = False, high_open: bool = False) -> None:
    """Field ``name`` must be a finite real number in the stated interval.

    Raises:
        ConfigError: naming the field, its value and the interval, e.g. ``beta=1.5 must be in (0, 1)``.
    """
    import math as _math
    v = getattr(obj, name)
    ok = isinstance(v, (int, float)) and not isinstance(v, bool) and _math.isfinite(v)
    if ok and low is not None:
        ok = v > low if low_open else v >= low
    if ok and high is not None:
        ok = v < high if high_open else v <= high
    if not ok:
        lo = "(" if low_open else "["
        hi = ")" if high_open or high is None else "]"
        lo_s = "-inf" if low is None else f"{low:g}"
        hi_s = "inf" if high is None else f"{high:g}"
        raise ConfigError(f"{name}={v!r} must be a finite number in {lo}{lo_s}, {hi_s}{hi}")


def check_choice(obj, name: str, choices) -> None:
    """Field ``name`` must be one of ``choices``."""
    v = getattr(obj, name)
    if v not in choices:
        raise ConfigError(f"{name}={v!r} must be one of {list(choices)}")


def read_mapping(source: Any, cls: type, what: str = "config") -> dict:
    """A config source as a fresh plain mapping: a ``cls`` instance, a YAML path or a mapping.

    Raises:
        ConfigError: a missing file, a file that does not hold a mapping, or another type.
    """
    import copy

    if isinstance(source, cls):
        return to_dict(source)
    if isinstance(source, (str, Path)):
        path = Path(source)
        if not path.is_file():
            raise ConfigError(f"{what} file {str(path)!r} does not exist")
        data = load_yaml(path, allow_empty=False)
        if not isinstance(data, Mapping):
            raise ConfigError(f"{what} file {str(path)!r} must hold a mapping (key: value lines), "
                              f"not a {type(data).__name__}")
        if not data:
            raise ConfigError(f"{what} file {str(path)!r}: config is empty")
        return dict(data)
    if isinstance(source, Mapping):
        return copy.deepcopy(dict(source))
    if dataclasses.is_dataclass(source) and not isinstance(source, type):
        return to_dict(source)
    raise ConfigError(f"a {what} is a {cls.__name__}, a mapping or a YAML path, got {type(source).__name__}")
