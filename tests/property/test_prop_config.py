"""Configs under random fields, types and values: a valid RunConfig or a ConfigError, never another exception."""
from __future__ import annotations

import json
import math
from pathlib import Path

from hypothesis import strategies as st

from helpers.prop import cases, scratch_dir
from tfftmol.core.config import ConfigError, to_dict
from tfftmol.pipeline import RunConfig, load_run_config

BASE = {
    "task": "toy2d", "name": "p", "seed": 1, "out_dir": "runs",
    "eval": {"samples": 50, "steps": 5},
    "tfft": {"alpha": 1.0, "offline_samples": 100, "offline_steps": 5, "bootstrap": 0,
             "am": {"steps": 4, "batch_size": 8, "time_steps": 6}},
    "options": {"model": "gmm-exact", "reward": {"name": "linear", "w": [1.0, 0.0]}},
}

# the fields of every section, so random patches hit real keys most of the time
TOP = ["task", "name", "seed", "device", "out_dir", "cache_dir", "checkpoint_every", "threads", "eval", "tfft",
       "options"]
EVAL = ["samples", "steps", "sampler", "kl_samples", "batch_size", "seed", "kl_seed"]
TFFT = ["method", "tail", "beta", "alpha", "offline_samples", "offline_steps", "offline_sampler", "bootstrap",
        "smoothing", "continuation", "min_active_fraction", "continuation_start_active", "adaptive_active",
        "continuation_stages", "final_stage_fraction", "refine_threshold", "refine_samples", "track_threshold",
        "track_gain", "track_hold", "guard_band_low", "guard_band_high", "guard_kl_factor", "seed", "am"]
AM = ["steps", "batch_size", "time_steps", "loss_time_steps", "lr", "lr_final_fraction", "warmup_steps",
      "grad_clip", "adjoint_clip", "ema", "correction", "terminal_time", "hidden", "layers", "seed", "log_every",
      "stage2", "value"]
OPTIONS = ["model", "reward", "gmm", "grid", "n_components"]

scalars = st.one_of(
    st.none(), st.booleans(),
    st.integers(-10**12, 10**12), st.sampled_from([0, 1, -1, 2, -5, -3, 10**30]),
    st.floats(allow_nan=True, allow_infinity=True), st.sampled_from([0.0, 0.5, 1.0, -0.0, 1e-300, 1e308]),
    st.text(max_size=6), st.sampled_from(["3e-4", "1e-2", "0.5", "nan", "inf", "-inf", "cuda", "cpu", "..",
                                           "right", "left", "sde", "tfft", "expected", "toy2d", "molecule",
                                           "gmm-exact", "qm9-graph", "a/b", "", " ", "1_000", "0x10", "١"]),
)
values = st.one_of(scalars, st.lists(scalars, max_size=2),
                   st.dictionaries(st.sampled_from(["name", "w", "x", "steps"]), scalars, max_size=2))


def _section(keys):
    return st.dictionaries(st.one_of(st.sampled_from(keys), st.text(alphabet="abcx_.", max_size=5)), values,
                           max_size=2)


patches = st.fixed_dictionaries({}, optional={
    "top": _section(TOP), "eval": _section(EVAL), "tfft": _section(TFFT), "am": _section(AM),
    "options": _section(OPTIONS)})


def _apply(p: dict) -> dict:
    d = json.loads(json.dumps(BASE))
    for k, v in p.get("top", {}).items():
        d[k] = v
    for sec in ("eval", "tfft", "options"):
        if sec in p and isinstance(d.get(sec), dict):
            d[sec].update(p[sec])
    if "am" in p and isinstance(d.get("tfft"), dict) and isinstance(d["tfft"].get("am"), dict):
        d["tfft"]["am"].update(p["am"])
    return d


def _valid(cfg: RunConfig) -> None:
    """What a config that loads must satisfy: finite numbers, the name one path component, and a round trip."""
    assert isinstance(cfg, RunConfig)
    assert cfg.run_dir.parent == Path(cfg.out_dir) and "/" not in cfg.name and cfg.name not in (".", "..")
    t = cfg.tfft
    for v in (t.alpha, t.beta, t.am.lr, t.smoothing):
        assert isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)
    assert 0 < t.beta < 1 and t.alpha > 0 and t.am.lr > 0
    for v in (cfg.seed, t.bootstrap, t.offline_steps, t.am.log_every, cfg.eval.samples):
        assert isinstance(v, int) and not isinstance(v, bool)
    assert cfg.seed >= 0 and t.bootstrap >= 0 and t.offline_steps >= 2 and t.am.log_every >= 1
    again = load_run_config(to_dict(cfg))                      # a loaded config reloads to itself
    assert to_dict(again) == to_dict(cfg)


def check_random_config(p):
    try:
        cfg = load_run_config(_apply(p))
    except ConfigError:
        return
    _valid(cfg)


test_a_random_config_loads_or_is_a_config_error, test_a_random_config_loads_or_is_a_config_error_many = \
    cases(check_random_config, 1200, patches)


yaml_text = st.one_of(
    st.text(max_size=80),
    st.lists(st.sampled_from(["task: toy2d", "name: p", "seed: -5", "seed: 3", "tfft:", "  alpha: 3e-4",
                              "  beta: 0.9", "  am:", "    lr: 3e-4", "    log_every: 0", "  bootstrap: -3",
                              "options:", "  model: gmm-exact", "  reward: {name: linear, w: [1, 0]}", "- x",
                              "[", "]", "{", "}", ":", "  - 1", "\t", "'", '"', "&a x", "*a", "!!python/object:os.system",
                              "? x", "device: cuda", "eval: {samples: 1}", "%YAML 1.1", "---", "...", "# c",
                              "seed: 2020-01-01", "name: ..", "offline_steps: 0"]), max_size=8).map("\n".join),
    st.binary(max_size=40).map(lambda b: b.decode("latin-1")),
)


_DIR = Path(scratch_dir("tfftmol-prop-yaml-"))


def check_random_yaml(text):
    if True:
        p = _DIR / "c.yaml"
        p.write_bytes(text.encode("utf-8", "surrogatepass") if "\ud800" not in text else b"\xed\xa0\x80")
        try:
            cfg = load_run_config(p)
        except ConfigError as e:
            assert str(e)                                      # a message, never empty
            return
        _valid(cfg)


test_a_random_yaml_file_loads_or_is_a_config_error, test_a_random_yaml_file_loads_or_is_a_config_error_many = \
    cases(check_random_yaml, 700, yaml_text)


def test_a_section_set_to_null_is_a_config_error_naming_it():
    # found by the fuzz above: ``eval: null`` in a YAML file used to fail later with an AttributeError
    import pytest

    for sec in ("eval", "tfft"):
        d = json.loads(json.dumps(BASE))
        d[sec] = None
        with pytest.raises(ConfigError, match=f"{sec}=None must be a mapping"):
            load_run_config(d)
    d = json.loads(json.dumps(BASE))
    d["options"] = None
    with pytest.raises(ConfigError, match="options=None"):
        load_run_config(d)
