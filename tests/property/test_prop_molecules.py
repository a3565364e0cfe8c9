"""SMILES strings, decoded states and reward outputs under random input: a classified result, never an exception.

* any string -> :func:`tfftmol.chem.mol.check` gives a reason of the one vocabulary, a valid verdict has a
  canonical SMILES that is a fixed point;
* any state tensor (NaN, inf, huge, any batch size) -> the QM9 graph decoder gives one classified result per row;
* any reward function output (NaN, inf, exceptions, ``SystemExit``, non-numbers) -> finite values, invalid
  samples carrying the penalty and a ``reward_*`` reason, counts that add up;
* any mix of reasons in a batch -> :meth:`MolecularReward.account` stops exactly when the reward's own
  failures exceed the limit, and counts every sample.
"""
from __future__ import annotations

import math
import types

import numpy as np
import pytest
import torch
from hypothesis import strategies as st

from helpers.prop import cases
from tfftmol.chem import graph
from tfftmol.chem.mol import OK, REASONS, check
from tfftmol.chem.rewards import build_reward
from tfftmol.chem.rewards.result import RewardResult
from tfftmol.core.reward import RewardFailureError

SMILES_ALPHABET = list("CNOFSPclonsBrI()[]=#-+@/\\.%0123456789*:Hh ") + ["Cl", "Br", "[nH]", "c1ccccc1", "C1CC1"]
smiles = st.one_of(st.lists(st.sampled_from(SMILES_ALPHABET), max_size=14).map("".join), st.text(max_size=10))


def check_smiles_classified(s):
    c = check(s)
    assert c.reason in REASONS
    if c.valid:
        assert c.mol is not None and c.smiles and check(c.smiles).smiles == c.smiles
    else:
        assert c.mol is None and c.smiles is None


test_any_string_is_classified, test_any_string_is_classified_many = cases(check_smiles_classified, 2000, smiles)

special = st.sampled_from([float("nan"), float("inf"), -float("inf"), 1e38, -1e38, 0.0, 1.0, -1.0, 1e-45])
states = st.tuples(st.integers(1, 3), st.lists(st.one_of(special, st.floats(-3, 3, width=32)), min_size=1,
                                               max_size=40), st.integers(0, 2**31 - 1))


def check_decode_classified(args):
    b, pattern, seed = args
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(b, graph.STATE_DIM, generator=g)
    idx = torch.randint(0, graph.STATE_DIM, (len(pattern),), generator=g)
    x[torch.arange(len(pattern)) % b, idx] = torch.tensor(pattern, dtype=torch.float32)
    out = graph.decode(x)
    assert len(out) == b
    for d in out:
        assert d.reason in graph.REASONS and (d.mol is not None) == (d.reason == OK)
        assert check(d).reason in REASONS                      # and the reward side classifies it the same way
        if d.reason == OK:
            assert check(d).valid


test_any_state_decodes_to_classified_molecules, test_any_state_decodes_to_classified_molecules_many = \
    cases(check_decode_classified, 1000, states)


class _Boom(Exception):
    pass


def _outputs(kind, value):
    """A user reward function whose output on molecule ``i`` is ``kind[i % len(kind)]``."""
    def fn(mol):
        k = kind[mol.GetNumAtoms() % len(kind)]
        if k == "raise":
            raise _Boom("user code failed")
        if k == "exit":
            raise SystemExit(mol)
        if k == "str":
            return "0.5x"
        if k == "none":
            return None
        if k == "list":
            return [1.0, 2.0]
        if k == "tensor":
            return torch.tensor([value, value])
        if k == "np":
            return np.float64(value)
        return value
    return fn


MOLS = ["C", "CC", "CCC", "CCCC", "CCCCC", "CCCCCC", "c1ccccc1", "CCO", "C1CC", "", "N#N", "[Na+].[Cl-]"]
kinds = st.lists(st.sampled_from(["value", "raise", "exit", "str", "none", "list", "tensor", "np"]), min_size=1,
                 max_size=4)
values = st.floats(allow_nan=True, allow_infinity=True)
batch = st.lists(st.sampled_from(MOLS), min_size=1, max_size=8)


def check_reward_outputs(kind, value, mols):
    r = build_reward({"name": "callable", "fn": "sys:exit", "range": [0, 1]})
    r.fn = _outputs(kind, value)
    r.clear_cache()
    res = r(mols)
    assert len(res.values) == len(res.valid) == len(res.reasons) == len(mols)
    assert np.all(np.isfinite(res.values))                         # never a NaN or inf in the values
    assert sum(res.counts.values()) == len(mols)
    for v, ok, why, raw in zip(res.values, res.valid, res.reasons, res.raw):
        assert why in REASONS and ok == (why == OK)
        if ok:
            assert v == raw and math.isfinite(v)
        else:
            assert v == r.penalty and math.isnan(raw)
    for reason, msg in res.messages.items():
        assert reason in ("reward_error", "reward_nan") and msg


test_any_reward_output_is_a_value_or_a_counted_failure, test_any_reward_output_is_a_value_or_a_counted_failure_many \
    = cases(check_reward_outputs, 1200, kinds, values, batch)


_ONE: list = []


def _molecular(frac):
    """One MolecularReward, its counters reset for each example (constructing one per example is the slow part)."""
    from tfftmol.chem.task import MolecularReward

    if not _ONE:
        _ONE.append(MolecularReward(build_reward({"name": "qed"}), decode=lambda x: [], surrogate=None))
    r = _ONE[0]
    logs: list[str] = []
    r.log, r.max_failure_fraction = logs.append, float(frac)
    r.failures, r.n_scored, r.failure_messages, r.min_valid, r._penalty_warned = {}, 0, {}, None, False
    return r, logs


reasons_st = st.lists(st.sampled_from(list(REASONS)), min_size=1, max_size=50)
fractions = st.one_of(st.sampled_from([0.0, 0.2, 0.5, 1.0]), st.floats(0, 1))


def check_failure_accounting(reasons, frac, penalty, raw_lo):
    n = len(reasons)
    valid = np.array([r == OK for r in reasons])
    raw = np.where(valid, raw_lo + np.arange(n), np.nan)
    res = RewardResult(np.where(valid, raw, penalty), valid, raw, list(reasons),
                       {k: reasons.count(k) for k in REASONS}, {"reward_error": "E: x\nTraceback ..."}, penalty)
    r, logs = _molecular(frac)
    bad = reasons.count("reward_error") + reasons.count("reward_nan")
    try:
        r.account(res)
    except RewardFailureError as e:
        assert bad / n > frac and f"> max_reward_failure_fraction={frac:g}" in str(e)
    else:
        assert bad / n <= frac
    assert r.n_scored == n and sum(r.failures.values()) == n - int(valid.sum())
    warned = any("penalty" in s and "warning" in s for s in logs)
    assert warned == (bool(valid.any()) and penalty >= float(np.nanmin(raw)))


test_reward_failures_stop_exactly_beyond_the_limit, test_reward_failures_stop_exactly_beyond_the_limit_many = \
    cases(check_failure_accounting, 1500, reasons_st, fractions, st.floats(-10, 10), st.floats(-10, 10))


def _bad_length_reward(k_values, k_valid):
    from tfftmol.core.reward import RewardBatch

    class R:
        name = "wrong-length"

        def evaluate(self, x):
            return RewardBatch(torch.zeros(k_values(x.shape[0])), torch.ones(k_valid(x.shape[0]), dtype=torch.bool))

        def value_and_grad(self, x):  # pragma: no cover - not reached
            raise AssertionError

    return R()


def check_wrong_lengths(n, dv, dk):
    from tfftmol.core.offline import offline_batch
    from tfftmol.toy2d.gmm import circle_gmm

    reward = _bad_length_reward(lambda m: max(m + dv, 0), lambda m: max(m + dk, 0))
    try:
        x, v, ok, cached = offline_batch(circle_gmm(), reward, n, steps=2, sampler="ode", batch_size=3)
    except ValueError as e:
        assert "wrong-length" in str(e) and (dv or dk)
        return
    except RuntimeError as e:  # torch.cat of mismatched pieces
        pytest.fail(f"wrong lengths crashed with {e}")
    assert dv == 0 and dk == 0 and v.shape == (n,) and ok.shape == (n,)


test_a_reward_of_wrong_length_is_a_clear_error, test_a_reward_of_wrong_length_is_a_clear_error_many = \
    cases(check_wrong_lengths, 400, st.integers(2, 7), st.sampled_from([0, 0, -1, 1, -5]),
          st.sampled_from([0, 0, -1, 2]))
