"""One config dialect for every run: :class:`RunConfig` with a task kind.

A run config is a nested dataclass, validated once, loadable from YAML::

    task: molecule            # molecule | digits | toy2d (tfftmol.pipeline.registry)
    name: qed_right           # the report goes to <out_dir>/<name>/
    seed: 0                   # the one seed of the run (see below)
    device: cpu
    out_dir: runs
    eval: {samples: 1000, steps: 30, sampler: sde, kl_samples: 500}
    tfft: {method: tfft, tail: right, beta: 0.9, alpha: 1.0, am: {steps: 800}}
    options: {model: qm9-graph, reward: {name: qed}}   # the task's own options

Earlier releases wrote a flat config per domain (``eval_samples``, ``model``,
``reward``, ... at the top level); :func:`load_run_config` reads those too, so
every YAML in ``configs/`` keeps working.

**Seeds.**  ``seed``, ``tfft.seed`` and ``tfft.am.seed`` must agree.  A seed
given at one level only is used for all three; two given seeds that differ are a
:class:`ConfigError` naming both fields (never a silent overwrite).
"""
from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Optional

from ..core.config import ConfigError, check_choice, check_int, config_search_dirs, from_dict, read_mapping, to_dict
from ..core.settings import TFFTConfig

__all__ = ["EvalConfig", "RunConfig", "load_run_config", "NAME_PATTERN", "check_run_name"]

NAME_PATTERN = r"[A-Za-z0-9_][A-Za-z0-9_.\-]*"
EVAL_SAMPLERS = ("sde", "ode", "heun")


def check_run_name(name: Any) -> str:
    """A run name is one path component: letters, digits, ``_ . -``, not starting with ``.`` or ``-``.

    Raises:
        ConfigError: for anything else (``..``, ``.``, ``a/b``, ``""``, ``-x``), naming the value.
    """
    if not (isinstance(name, str) and re.fullmatch(NAME_PATTERN, name) and len(name) <= 128):
        raise ConfigError(f"name={name!r} must be 1-128 characters of letters, digits, '_', '.', '-', "
                          "starting with a letter, digit or '_' (it names one directory inside out_dir)")
    return name


def _check_device(device: Any) -> None:
    """``device`` must name a torch device that this machine has (checked at load time, before compute)."""
    import torch

    if not isinstance(device, str):
        raise ConfigError(f"device={device!r} must be a string such as 'cpu' or 'cuda'")
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError, ValueError) as e:
        raise ConfigError(f"device={device!r} is not a torch device: {e}") from None
    if dev.type == "cuda":
        n = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if n == 0:
            raise ConfigError(f"device={device!r}: this machine has no CUDA device (torch.cuda.is_available() is "
                              "False); use device: cpu")
        if dev.index is not None and dev.index >= n:
            raise ConfigError(f"device={device!r}: this machine has {n} CUDA device(s) (cuda:0..cuda:{n - 1})")
    elif dev.type == "mps" and not (getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()):
        raise ConfigError(f"device={device!r}: MPS is not available on this machine; use device: cpu")
    elif dev.type not in ("cpu", "cuda", "mps"):
        raise ConfigError(f"device={device!r}: only cpu, cuda[:N] and mps are supported")


@dataclass
class EvalConfig:
    """Evaluation after fine-tuning: fresh samples of both models from the same noise.

    Attributes:
        samples: samples drawn from each of the pre-trained and fine-tuned models (>= 2).
        steps: integration steps of the evaluation sampler.
        sampler: ``"sde"`` (the memoryless SDE: the process the fine-tuner trains on and
            the KL estimate refers to), ``"ode"`` (Euler) or ``"heun"``.
        kl_samples: trajectories for the control-cost estimate of KL(p_ft || p_pre) (0 = skip).
        batch_size: samples per sampling batch.
        seed: seed of the evaluation noise (``None``: the run's seed + 1).
        kl_seed: seed of the KL trajectories (``None``: the run's seed + 2).
    """

    samples: int = 1000
    steps: int = 30
    sampler: str = "sde"
    kl_samples: int = 500
    batch_size: int = 500
    seed: Optional[int] = None
    kl_seed: Optional[int] = None

    def __post_init__(self):
        check_int(self, "samples", low=2)
        check_int(self, "steps", low=2)
        check_int(self, "kl_samples", low=0)
        check_int(self, "batch_size")
        check_choice(self, "sampler", EVAL_SAMPLERS)
        for k in ("seed", "kl_seed"):
            if getattr(self, k) is not None:
                check_int(self, k, low=0)


@dataclass
class RunConfig:
    """One fine-tuning run of any task kind (the one config dialect).

    Attributes:
        task: the task kind (``tfftmol.pipeline.registry.task_kinds()``).
        name: run name; the report goes to ``<out_dir>/<name>/`` (one path component).
        seed: the run's seed (offline batch, fine-tune, evaluation).
        device: torch device (``"cpu"``, ``"cuda"``, ``"cuda:1"``).
        out_dir: parent directory of the report.
        cache_dir: where offline batches are cached (``""`` = ``<out_dir>/cache``).
        checkpoint_every: stage-2 steps between checkpoints.
        threads: ``torch.set_num_threads`` for the run (0 = leave unchanged).
        degenerate_tail: what a tail that stage 1 finds saturated does (nothing to gain: the
            targeted tail is already tied at the largest reward; :func:`tfftmol.core.tail_degeneracy`):
            ``"stop"`` (default) ends the run before stage 2 with a message naming the tail;
            ``"train"`` trains anyway.
        eval: :class:`EvalConfig`.
        tfft: :class:`~tfftmol.core.settings.TFFTConfig`.
        options: the task's own options, validated by the task's options dataclass.
    """

    task: str = "molecule"
    name: str = "run"
    seed: int = 0
    device: str = "cpu"
    out_dir: str = "runs"
    cache_dir: str = ""
    checkpoint_every: int = 50
    threads: int = 0
    degenerate_tail: str = "stop"
    eval: EvalConfig = field(default_factory=EvalConfig)
    tfft: TFFTConfig = field(default_factory=TFFTConfig)
    options: Any = field(default_factory=dict)

    def __post_init__(self):
        from .registry import get_task, task_kinds

        if self.task not in task_kinds():
            raise ConfigError(f"task={self.task!r} must be one of {task_kinds()}")
        check_run_name(self.name)
        check_int(self, "seed", low=0)
        check_int(self, "checkpoint_every")
        check_int(self, "threads", low=0)
        check_choice(self, "degenerate_tail", ("stop", "train"))
        if not isinstance(self.out_dir, (str, Path)) or not str(self.out_dir):
            raise ConfigError(f"out_dir={self.out_dir!r} must be a non-empty path")
        self.out_dir = str(self.out_dir)
        self.cache_dir = str(self.cache_dir)
        if isinstance(self.eval, Mapping):
            self.eval = from_dict(EvalConfig, self.eval, "eval")
        if isinstance(self.tfft, Mapping):
            self.tfft = from_dict(TFFTConfig, self.tfft, "tfft")
        for key, cls in (("eval", EvalConfig), ("tfft", TFFTConfig)):
            if not isinstance(getattr(self, key), cls):
                raise ConfigError(f"{key}={getattr(self, key)!r} must be a mapping of {key} settings "
                                  f"(leave it out for the defaults)")
        _check_device(self.device)
        # seeds: a nested seed left at its default follows the run's seed; two set seeds must agree
        for where, obj in (("tfft.seed", self.tfft), ("tfft.am.seed", self.tfft.am)):
            if obj.seed not in (0, self.seed):
                if self.seed == 0:
                    self.seed = obj.seed
                else:
                    raise ConfigError(f"seed={self.seed} and {where}={obj.seed} differ; give one seed "
                                      f"(the top-level 'seed' sets all of them)")
        for where, obj in (("tfft.seed", self.tfft), ("tfft.am.seed", self.tfft.am)):
            if obj.seed not in (0, self.seed):
                raise ConfigError(f"seed={self.seed} and {where}={obj.seed} differ; give one seed")
            obj.seed = self.seed
        task = get_task(self.task)
        opts_cls = task.options_class
        if not isinstance(self.options, opts_cls):
            if not isinstance(self.options, Mapping):
                raise ConfigError(f"options={self.options!r} must be a mapping of {self.task} options")
            self.options = from_dict(opts_cls, dict(self.options), "options")
        task.check(self)

    @property
    def out_path(self) -> Path:
        return Path(self.out_dir)

    @property
    def run_dir(self) -> Path:
        """``<out_dir>/<name>``: always a direct child of ``out_dir`` (the name is one path component)."""
        return Path(self.out_dir) / self.name

    @property
    def offline_cache_dir(self) -> Path:
        return Path(self.cache_dir) if self.cache_dir else Path(self.out_dir) / "cache"

    def to_dict(self) -> dict:
        return to_dict(self)


# -- legacy flat configs ----------------------------------------------------------------
_COMMON = ("name", "seed", "device", "out_dir", "cache_dir", "checkpoint_every", "threads", "degenerate_tail", "tfft")
_EVAL = {"eval_samples": "samples", "eval_steps": "steps", "eval_sampler": "sampler", "kl_samples": "kl_samples"}


def _infer_kind(data: Mapping[str, Any]) -> str:
    from .registry import infer_task_kind

    return infer_task_kind(data)


def _from_flat(data: Mapping[str, Any], kind: Optional[str] = None) -> dict:
    """A flat (earlier-release) config mapping -> the nested RunConfig mapping.

    ``kind``: the task kind (inferred from the mapping when not given).  Also turns a flat patch,
    such as a budget of a few flat keys, into the nested form to merge into a nested config.
    """
    kind = kind or _infer_kind(data)
    out: dict = {"task": kind, "options": {}}
    ev: dict = {}
    for k, v in data.items():
        if k in _COMMON:
            out[k] = v
        elif k in _EVAL:
            ev[_EVAL[k]] = v
        else:
            out["options"][k] = v
    if ev:
        out["eval"] = ev
    return out


nest_flat = _from_flat  # public name: a flat patch (e.g. a benchmark budget) in the nested form


def load_run_config(source: Any, **overrides: Any) -> RunConfig:
    """Build and validate a :class:`RunConfig` before any compute.

    Args:
        source: a :class:`RunConfig`, a mapping (nested, or the flat form of earlier
            releases) or a path to a YAML file of either form.
        overrides: top-level fields to replace (e.g. ``out_dir="runs"``, ``name="x"``).

    Raises:
        ConfigError: an unknown key, a value out of range, conflicting seeds, a bad
            name; the message names the field and the accepted values.
    """
    data = read_mapping(source, RunConfig)
    try:  # plain data only (Paths and dataclasses flattened)
        data = json.loads(json.dumps(data, default=_plain, allow_nan=True))
    except (TypeError, ValueError) as e:
        raise ConfigError(f"config: {e}") from None
    if "task" not in data and "options" not in data:
        data = _from_flat(data)
    for k, v in overrides.items():
        if v is None:
            continue
        if k in RunConfig.__dataclass_fields__:
            data[k] = v
        else:
            if not isinstance(data.get("options", {}), dict):
                raise ConfigError(f"options={data['options']!r} must be a mapping of task options")
            data.setdefault("options", {})[k] = v
    # a callable reward (fn: module:function) is looked up in the config's own directory, never the cwd
    dirs = [Path(source).resolve().parent] if isinstance(source, (str, Path)) else []
    with config_search_dirs(*dirs):
        cfg = from_dict(RunConfig, data)
    if dirs or isinstance(source, RunConfig):  # where the task rebuilds the reward at run time
        object.__setattr__(cfg, "source_dirs", tuple(str(d) for d in dirs) or getattr(source, "source_dirs", ()))
    return cfg


def _plain(o):
    if isinstance(o, Path):
        return str(o)
    if hasattr(o, "__dataclass_fields__"):
        return to_dict(o)
    raise TypeError(f"{type(o).__name__} {o!r} is not plain config data (numbers, strings, lists, mappings)")
