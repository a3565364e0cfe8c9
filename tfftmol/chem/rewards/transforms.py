"""Monotone transforms of a reward value, and the table that names them in configs.

A transform maps one reward value to another and is monotone, so a nominal
range ``[lo, hi]`` maps by its ends (:meth:`Transform.map_interval`); the
default validity penalty is derived from the transformed range.
Configs write a transform as a one-key mapping, e.g. ``{affine: {scale: -1}}``.

>>> build_transform({"affine": {"scale": -1}})(2.0)
-2.0
"""
from __future__ import annotations

import math
from typing import Any, ClassVar, Mapping, Optional

__all__ = ["Transform", "Affine", "Clip", "Sigmoid", "Step", "TRANSFORMS", "build_transform"]


class Transform:
    """A monotone map applied to a reward value (so intervals map by their ends)."""

    name: ClassVar[str] = ""

    def __call__(self, v: float) -> float:  # pragma: no cover - abstract
        raise NotImplementedError

    def params(self) -> dict:  # pragma: no cover - abstract
        raise NotImplementedError

    def map_interval(self, lo: float, hi: float) -> tuple[float, float]:
        a, b = self(lo), self(hi)
        return (min(a, b), max(a, b))

    def to_config(self) -> dict:
        return {self.name: self.params()}

    def __repr__(self) -> str:
        return f"{type(self).__name__}({', '.join(f'{k}={v!r}' for k, v in self.params().items())})"

    def __eq__(self, other: object) -> bool:
        return type(self) is type(other) and self.params() == other.params()  # type: ignore[union-attr]


class Affine(Transform):
    """``v -> scale * v + shift`` (``scale=-1`` turns a cost such as SA into a reward)."""

    name = "affine"

    def __init__(self, scale: float = 1.0, shift: float = 0.0):
        self.scale, self.shift = float(scale), float(shift)
        if not (math.isfinite(self.scale) and math.isfinite(self.shift)):
            raise ValueError(f"affine: scale and shift must be finite, got scale={scale}, shift={shift}")

    def __call__(self, v: float) -> float:
        return self.scale * v + self.shift

    def params(self) -> dict:
        return {"scale": self.scale, "shift": self.shift}


class Clip(Transform):
    """``v -> min(max(v, low), high)``; either bound may be ``None``."""

    name = "clip"

    def __init__(self, low: Optional[float] = None, high: Optional[float] = None):
        self.low = None if low is None else float(low)
        self.high = None if high is None else float(high)
        if self.low is not None and self.high is not None and self.low > self.high:
            raise ValueError(f"clip: low={low} must be <= high={high}")

    def __call__(self, v: float) -> float:
        if math.isnan(v):
            return v
        if self.low is not None:
            v = max(v, self.low)
        if self.high is not None:
            v = min(v, self.high)
        return v

    def params(self) -> dict:
        return {"low": self.low, "high": self.high}


class Sigmoid(Transform):
    """Sigmoid desirability ``v -> 1 / (1 + exp(-(v - center) / width))``, in (0, 1).

    ``width > 0`` rewards values above ``center``; ``width < 0`` rewards values below.
    """

    name = "sigmoid"

    def __init__(self, center: float = 0.0, width: float = 1.0):
        self.center, self.width = float(center), float(width)
        if self.width == 0 or not math.isfinite(self.width):
            raise ValueError(f"sigmoid: width must be finite and non-zero, got {width}")

    def __call__(self, v: float) -> float:
        z = -(v - self.center) / self.width
        if z > 700:  # exp overflow
            return 0.0
        return 1.0 / (1.0 + math.exp(z))

    def params(self) -> dict:
        return {"center": self.center, "width": self.width}


class Step(Transform):
    """Step desirability ``v -> high if v >= threshold else low``.

    To reward values *below* a threshold use ``low=1, high=0``.
    """

    name = "step"

    def __init__(self, threshold: float = 0.0, low: float = 0.0, high: float = 1.0):
        self.threshold, self.low, self.high = float(threshold), float(low), float(high)

    def __call__(self, v: float) -> float:
        if math.isnan(v):
            return v
        return self.high if v >= self.threshold else self.low

    def params(self) -> dict:
        return {"threshold": self.threshold, "low": self.low, "high": self.high}


TRANSFORMS: dict[str, type[Transform]] = {t.name: t for t in (Affine, Clip, Sigmoid, Step)}


def build_transform(spec: Any) -> Transform:
    """A transform from a one-key mapping such as ``{affine: {scale: -1}}`` (a :class:`Transform` is returned as is)."""
    if isinstance(spec, Transform):
        return spec
    if not isinstance(spec, Mapping) or len(spec) != 1:
        raise ValueError(f"a transform is a one-key mapping such as {{affine: {{scale: -1}}}}, got {spec!r}; "
                         f"valid transforms: {sorted(TRANSFORMS)}")
    (kind, params), = spec.items()
    if kind not in TRANSFORMS:
        raise ValueError(f"unknown transform {kind!r}; valid transforms: {sorted(TRANSFORMS)}")
    cls = TRANSFORMS[kind]
    params = dict(params or {})
    valid = list(cls.__init__.__code__.co_varnames[1:cls.__init__.__code__.co_argcount])
    bad = sorted(set(params) - set(valid))
    if bad:
        raise ValueError(f"unknown keys {bad} for transform {kind!r}; valid keys: {valid}")
    return cls(**params)
