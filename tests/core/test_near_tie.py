"""Stage 1's near-tie (docs/design.md §2.9) is settled by drawing more offline samples, in ``run_tfft``.

The exact family's case 11 (a random 2D mixture, linear reward, left-CVaR_0.1 at alpha 1) has two
local maxima of ``G``: the population optimum at ``eta* = 0.178`` and a rival at ``-0.82`` whose
objective trails it by less than the sampling error of 10,000 samples.  With the offline batch's
seed 1, the argmax on 10,000 samples is the rival; doubling the batch twice settles it on the
population's basin.
"""
from __future__ import annotations

import warnings

import numpy as np
import pytest

from tfftmol.core.settings import AMConfig, TFFTConfig
from tfftmol.core.threshold import TfftWarning
from tfftmol.core.tfft import run_tfft
from tfftmol.toy2d.flows import linear_reward
from tfftmol.toy2d.gmm import population_threshold, random_gmm


def _case11():
    g = random_gmm(11)
    u = np.random.default_rng(1011).normal(size=2)
    w = 0.25 * u / np.linalg.norm(u)
    eta_pop, _ = population_threshold(g, w, 1.0, 0.1, "left")
    return g, linear_reward([float(v) for v in w]), float(eta_pop)


def _stage1(near_tie_samples: int):
    g, reward, eta_pop = _case11()
    cfg = TFFTConfig(tail="left", beta=0.1, alpha=1.0, offline_samples=10000, offline_steps=50, seed=1,
                     bootstrap=0, near_tie_samples=near_tie_samples,
                     am=AMConfig(steps=1, batch_size=8, time_steps=10, loss_time_steps=2, seed=1))
    lines: list[str] = []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", TfftWarning)
        res = run_tfft(g, reward, cfg, progress=False, log=lines.append)
    return res, eta_pop, lines


def test_a_near_tie_is_settled_by_more_offline_samples():
    res, eta_pop, lines = _stage1(4)
    assert abs(eta_pop - 0.178) < 0.01
    assert res.stage1.n == 40000 and res.offline_rewards.size == 40000     # the batch stage 2 and its guards see
    assert abs(res.stage1.eta - eta_pop) < 0.02
    assert any("near-tie on 10000 samples" in s for s in lines)


def test_without_more_samples_the_rival_is_picked():
    res, eta_pop, lines = _stage1(1)
    assert res.stage1.n == 10000
    assert res.stage1.near_tie is not None
    assert res.stage1.eta < -0.7 and abs(res.stage1.near_tie - eta_pop) < 0.02
    assert not any("near-tie on" in s for s in lines)


def test_near_tie_samples_is_checked():
    from tfftmol.core.config import ConfigError

    with pytest.raises(ConfigError, match=r"near_tie_samples=0 must be an integer >= 1"):
        TFFTConfig(tail="left", beta=0.1, near_tie_samples=0)
