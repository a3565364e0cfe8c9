"""Rewards by name: the registry every config goes through, and :func:`build_reward`.

``build_reward(spec)`` takes a dict, a YAML string, a YAML file or a bare name::

    {name: qed}
    {name: sa, transform: [{affine: {scale: -1}}], penalty: -10}
    {name: sum, terms: [{weight: 1.0, reward: {name: qed}},
                        {weight: 0.1, reward: {name: sa, transform: [{affine: {scale: -1}}]}}]}

and ``reward.to_config()`` returns a dict that YAML round-trips to the same
reward.  Unknown names or keys raise ``ValueError`` listing the valid ones.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping

import yaml

from .base import Reward
from .combine import WeightedSum
from .descriptors import DESCRIPTOR_REWARDS
from .guacamol import GUACAMOL_REWARDS
from .oracles import CallableReward, SimilarityReward, SubstructureReward
from .property import QM9GapReward, QM9MuReward
from .xtb import XTB_REWARDS

__all__ = ["REWARDS", "build_reward"]

#: Config name -> reward class.
REWARDS: dict[str, type[Reward]] = {
    cls.name: cls
    for cls in (*DESCRIPTOR_REWARDS, SimilarityReward, SubstructureReward, QM9GapReward, QM9MuReward,
                CallableReward, WeightedSum, *GUACAMOL_REWARDS, *XTB_REWARDS)
}

_COMMON_KEYS = ("name", "transform", "penalty", "cache_size")


def _param_names(cls: type[Reward]) -> list[str]:
    code = cls.__init__.__code__
    names = list(code.co_varnames[1:code.co_argcount + code.co_kwonlyargcount])
    return [n for n in names if n not in _COMMON_KEYS and n != "kw"]


def build_reward(spec: Any) -> Reward:
    """Build a reward from a config.

    Args:
        spec: a :class:`Reward` (returned as is), a mapping such as
            ``{"name": "sa", "transform": [{"affine": {"scale": -1}}], "penalty": -10}``,
            a YAML string, a path to a YAML file, or a bare name such as ``"qed"``.

    Raises:
        ValueError: unknown reward name or key, bad parameter value; the
            message lists the valid names/keys.
    """
    if isinstance(spec, Reward):
        return spec
    if isinstance(spec, Path) or (isinstance(spec, str) and "\n" not in spec and spec.endswith((".yaml", ".yml"))):
        path = Path(spec)
        if not path.is_file():
            raise ValueError(f"reward config file {str(path)!r} does not exist")
        spec = yaml.safe_load(path.read_text())
    elif isinstance(spec, str):
        spec = yaml.safe_load(spec)
    if isinstance(spec, str):
        spec = {"name": spec}
    if not isinstance(spec, Mapping):
        raise ValueError(f"a reward config is a mapping with a 'name' key, got {spec!r}; "
                         f"valid names: {sorted(REWARDS)}")
    spec = dict(spec)
    name = spec.get("name")
    if name not in REWARDS:
        raise ValueError(f"unknown reward name {name!r}; valid names: {sorted(REWARDS)}")
    cls = REWARDS[name]
    valid_keys = list(_COMMON_KEYS) + _param_names(cls)
    bad = sorted(set(spec) - set(valid_keys))
    if bad:
        raise ValueError(f"unknown keys {bad} for reward {name!r}; valid keys: {valid_keys}")
    kwargs = {k: v for k, v in spec.items() if k != "name"}
    if cls is WeightedSum:
        terms = []
        for term in kwargs.pop("terms", None) or []:
            if not isinstance(term, Mapping) or set(term) - {"weight", "reward"} or "reward" not in term:
                raise ValueError(f"sum: each term is {{weight: w, reward: {{...}}}}, got {term!r}; "
                                 "valid keys: ['weight', 'reward']")
            terms.append((float(term.get("weight", 1.0)), build_reward(term["reward"])))
        kwargs["terms"] = terms
    try:
        return cls(**kwargs)
    except TypeError as e:
        raise ValueError(f"reward {name!r}: {e}; valid keys: {valid_keys}") from e
