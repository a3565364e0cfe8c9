"""``tfftmol.core.mean_tilt``: the exact expected-reward optimum on samples at a given KL.

Known answer: for ``r = x``, ``x ~ N(0, 1)`` the tilt ``exp(x / tau)`` is ``N(1 / tau, 1)``, with KL
``1 / (2 tau^2)``; its right-CVaR_0.9 is ``1 / tau + phi(z_0.9) / 0.1`` and its left-CVaR_0.1 is
``1 / tau - phi(z_0.9) / 0.1``.  The batch is the 200,000 mid-quantiles of ``N(0, 1)``.
"""
import math

import numpy as np
import pytest
from scipy.stats import norm

from tfftmol.core.mean_tilt import mean_tilt, mean_tilt_at_kl
from tfftmol.core.threshold import solve_threshold

X = norm.ppf((np.arange(200_000) + 0.5) / 200_000)
TAIL = norm.pdf(norm.ppf(0.9)) / 0.1  # 1.7550


@pytest.mark.parametrize("kl", [0.02, 0.5, 1.0])  # shifts 0.1-1.4: the batch resolves the shifted tails
def test_gaussian_tilt_at_a_kl_is_the_shifted_gaussian(kl):
    tau = 1 / math.sqrt(2 * kl)
    right = mean_tilt_at_kl(X, kl, 0.9, "right")
    left = mean_tilt_at_kl(X, kl, 0.1, "left")
    assert right.tau == pytest.approx(tau, rel=5e-3) and left.tau == pytest.approx(tau, rel=5e-3)
    assert right.kl == pytest.approx(kl, rel=1e-5)
    assert right.mean == pytest.approx(1 / tau, abs=3e-3)
    assert right.cvar == pytest.approx(1 / tau + TAIL, abs=5e-3)
    assert left.cvar == pytest.approx(1 / tau - TAIL, abs=5e-3)
    direct = mean_tilt(X, right.tau, 0.9, "right")
    assert direct.kl == pytest.approx(kl, rel=1e-5) and direct.cvar == pytest.approx(right.cvar, abs=1e-9)


def test_importance_weights_enter_as_the_base_measure():
    """Batch drawn from N(0.5, 1), weighted back to N(0, 1) (log v = -x^2/2 + (x-0.5)^2/2): same answer as N(0, 1)."""
    y = X + 0.5
    lv = -0.5 * y ** 2 + 0.5 * (y - 0.5) ** 2
    t = mean_tilt_at_kl(y, 0.5, 0.9, "right", log_weights=lv)
    assert t.tau == pytest.approx(1.0, rel=5e-3) and t.cvar == pytest.approx(1 + TAIL, abs=1e-2)


@pytest.mark.parametrize("tail,beta", [("right", 0.9), ("left", 0.1), ("right", 0.5)])
def test_tfft_optimum_holds_at_least_the_mean_tilts_tail_at_its_own_kl(tail, beta):
    """Stage 1's tilt maximises CVaR - alpha KL over reweightings, so at its KL no tilt has a larger CVaR."""
    rng = np.random.default_rng(0)
    for r in (rng.lognormal(size=3000), rng.integers(0, 5, size=3000).astype(float), rng.normal(size=500)):
        for alpha in (0.03, 0.3, 3.0):
            s1 = solve_threshold(r, beta, alpha, tail, min_active_fraction=0.0, min_ess_fraction=0.0)
            m = mean_tilt_at_kl(r, s1.predicted_kl, beta, tail)
            assert m.kl == pytest.approx(s1.predicted_kl, rel=1e-4, abs=1e-9)
            assert s1.predicted_cvar >= m.cvar - 1e-9, (alpha, s1.predicted_cvar, m.cvar)


def test_limits_and_bad_values():
    r = np.array([0.0, 1.0, 1.0, 3.0])
    top = mean_tilt_at_kl(r, 10.0, 0.5, "left")  # beyond the limit: all mass on the largest reward
    assert top.tau == 0.0 and top.kl == pytest.approx(math.log(4)) and top.cvar == 3.0
    none = mean_tilt_at_kl(r, 0.0, 0.5, "left")
    assert none.tau == math.inf and none.kl == 0.0 and none.cvar == pytest.approx(0.5)
    with pytest.raises(ValueError, match="kl=-1"):
        mean_tilt_at_kl(r, -1, 0.5)
    with pytest.raises(ValueError, match="tau=0"):
        mean_tilt(r, 0, 0.5)
    with pytest.raises(ValueError, match="log_weights"):
        mean_tilt_at_kl(r, 0.1, 0.5, log_weights=np.zeros(3))


def test_a_left_threshold_at_the_top_reward_is_the_mean_tilt_itself():
    """Left tail with ``eta*`` at the largest reward (30% of the batch sits there): the pseudo-reward is
    ``(r - eta*) / beta``, so stage 1's tilt is the expected-reward tilt with ``tau = alpha beta``, and the
    margin is 0 at a KL well below the all-on-the-top limit."""
    r = np.r_[np.ones(600), np.random.default_rng(0).uniform(0, 1, 1400)]
    s1 = solve_threshold(r, 0.1, 0.3, "left", min_active_fraction=0.0, min_ess_fraction=0.0)
    assert s1.eta == 1.0 and s1.predicted_kl < math.log(2000 / 600) - 0.1
    m = mean_tilt_at_kl(r, s1.predicted_kl, 0.1, "left")
    assert m.tau == pytest.approx(0.3 * 0.1, rel=1e-5)
    assert m.cvar == pytest.approx(s1.predicted_cvar, abs=1e-6) and s1.predicted_cvar - s1.pre_cvar > 0.5
