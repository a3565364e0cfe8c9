"""Exact spectral and CVaR-constrained TFFT targets of a Gaussian mixture with a linear reward.

For ``r = w·x`` component ``k`` of :class:`~tfftmol.toy2d.gmm.GaussianMixtureFlow` has
``r ~ N(m_k, s_k^2)``, ``m_k = w·mu_k``, ``s_k = std_k |w|``.  The spectral pseudo-reward
``phi(r)`` (:mod:`tfftmol.core.spectral`) is piecewise linear, ``phi = a_j r + d_j`` on the segment
``j`` between consecutive thresholds, so ``p* ∝ p_1 exp(phi(r) / alpha)`` splits every component
into one truncated normal per segment, of mean ``m_k + a_j s_k^2 / alpha`` and log mass

    log pi_k + (a_j m_k + d_j) / alpha + a_j^2 s_k^2 / (2 alpha^2) + log P(segment j).

This gives the exact ``log Z``, mean, KL ``= E[phi] / alpha - log Z``, each level's CVaR (through its
VaR, a root of the mixture's tail mass) and the mass beyond each threshold (docs/design.md §10.4).
The part of ``x`` orthogonal to ``w`` is unchanged.  The population thresholds solve the same
max-min as the samples (:func:`population_spectral`), and :func:`population_constrained` the
constrained form.
"""
from __future__ import annotations

import math
from typing import Any, Sequence

import numpy as np
from scipy import optimize, special, stats

from ..core.spectral import Level, _as_levels, bracketed_root
from .gmm import GaussianMixtureFlow

__all__ = ["spectral_pieces", "spectral_target_stats", "population_spectral", "population_constrained",
           "sample_spectral_target"]


def _log_ndiff(u: np.ndarray, v: np.ndarray) -> np.ndarray:
    """``log(Phi(v) - Phi(u))`` elementwise for ``u <= v`` (``-inf`` where ``u >= v``), stable in both tails."""
    u, v = np.broadcast_arrays(np.asarray(u, float), np.asarray(v, float))
    out = np.full(u.shape, -np.inf)
    ok = v > u
    uu, vv = u[ok], v[ok]
    upper = uu > 0  # on the right half use survival functions: Phi(v) - Phi(u) = Q(u) - Q(v)
    l1 = np.where(upper, special.log_ndtr(-uu), special.log_ndtr(vv))
    l2 = np.where(upper, special.log_ndtr(-vv), special.log_ndtr(uu))
    with np.errstate(divide="ignore"):  # equal logs (a piece below float resolution): -inf, as it should
        out[ok] = l1 + np.log1p(-np.exp(np.minimum(l2 - l1, 0.0)))
    return out


_LOG_SQRT_2PI = 0.5 * math.log(2 * math.pi)


def _piece_beyond(q, mu, sd, lo, hi, right):
    """Per truncated-normal piece: conditional mass beyond ``q`` and conditional ``E[r 1(beyond q)]``.

    ``beyond`` is ``r > q`` (right) or ``r < q`` (left); both relative to the piece's own mass
    (the same quantity as :func:`tfftmol.toy2d.gmm._piece_beyond`, with scipy.special kernels).
    """
    a, b = (lo - mu) / sd, (hi - mu) / sd
    if right:
        a2, b2 = np.maximum(a, (q - mu) / sd), b
    else:
        a2, b2 = a, np.minimum(b, (q - mu) / sd)
    log_piece = _log_ndiff(a, b)
    fin = np.isfinite(log_piece)
    with np.errstate(invalid="ignore"):
        frac = np.where(fin & (b2 > a2), np.exp(_log_ndiff(a2, b2) - np.where(fin, log_piece, 0.0)), 0.0)

        def dens(z):  # phi(z) / P(piece), 0 at +-inf
            e = -0.5 * np.where(np.isfinite(z), z, 0.0) ** 2 - _LOG_SQRT_2PI - np.where(fin, log_piece, 0.0)
            return np.where(np.isfinite(z) & fin, np.exp(np.minimum(e, 700.0)), 0.0)
        part = np.where(b2 > a2, dens(a2) - dens(b2), 0.0)
    return frac, mu * frac + sd * part


def _segments(levels: Sequence[Level], etas: Sequence[float], mean_weight: float):
    """Breakpoints and per-segment slope ``a_j`` and intercept ``d_j`` of ``phi``."""
    bps = np.unique(np.asarray([e for lv, e in zip(levels, etas) if lv.weight > 0], float))
    edges = np.concatenate(([-np.inf], bps, [np.inf]))
    a = np.full(edges.size - 1, float(mean_weight))
    d = np.zeros(edges.size - 1)
    for lv, e in zip(levels, etas):
        if lv.weight == 0:
            continue
        s = lv.weight / lv.kappa
        if lv.tail == "right":      # + s (r - e) above e
            above = edges[:-1] >= e
            a[above] += s
            d[above] -= s * e
        else:                       # - s (e - r) below e
            below = edges[1:] <= e
            a[below] += s
            d[below] -= s * e
    return edges, a, d


def spectral_pieces(gmm: GaussianMixtureFlow, w, levels: Any, etas: Sequence[float], alpha: float,
                    mean_weight: float = 0.0):
    """``r`` under ``p* ∝ p_1 exp(phi(r) / alpha)`` as truncated normals, one per (segment, component).

    Returns a dict of arrays over pieces: ``logmass`` (normalised), ``mu``, ``sd`` (of the untruncated
    normal), ``lo``, ``hi`` (support in ``r``), ``a``, ``d`` (``phi = a r + d`` on the piece), and ``log_z``
    ``= log E_{p_1}[exp(phi / alpha)]``.
    """
    levels = _as_levels(levels)
    w = np.asarray(w, dtype=np.float64)
    m = gmm.means.double().numpy() @ w
    sd = gmm.stds.double().numpy() * np.linalg.norm(w)
    logpi = np.log(gmm.weights.double().numpy())
    edges, a, d = _segments(levels, etas, mean_weight)
    A, D = a[:, None], d[:, None]
    mu = m[None] + A * sd[None] ** 2 / alpha
    lo, hi = edges[:-1, None] + 0 * m[None], edges[1:, None] + 0 * m[None]
    logm = (logpi[None] + (A * m[None] + D) / alpha + 0.5 * (A * sd[None] / alpha) ** 2
            + _log_ndiff((lo - mu) / sd[None], (hi - mu) / sd[None]))
    log_z = float(special.logsumexp(logm))
    S = np.broadcast_to(sd[None], mu.shape)
    return {"logmass": (logm - log_z).ravel(), "mu": mu.ravel(), "sd": S.ravel().copy(), "lo": lo.ravel(),
            "hi": hi.ravel(), "a": np.broadcast_to(A, mu.shape).ravel().copy(),
            "d": np.broadcast_to(D, mu.shape).ravel().copy(), "log_z": log_z}


def _beyond(P, pm, q, right):
    f, part = _piece_beyond(q, P["mu"], P["sd"], P["lo"], P["hi"], right)
    return float(pm @ f), float(pm @ part)


def _cvar(P, pm, lv: Level) -> tuple[float, float]:
    """Exact ``(CVaR, VaR)`` of level ``lv`` under the pieces."""
    right = lv.tail == "right"

    def excess(q):
        return _beyond(P, pm, q, right)[0] - lv.kappa

    fin = np.isfinite(P["lo"]) | np.isfinite(P["hi"])
    lo = float(np.min(P["mu"] - 14 * P["sd"]))
    hi = float(np.max(P["mu"] + 14 * P["sd"]))
    if fin.any():
        e = np.concatenate([P["lo"][np.isfinite(P["lo"])], P["hi"][np.isfinite(P["hi"])]])
        lo, hi = min(lo, float(e.min()) - 1.0), max(hi, float(e.max()) + 1.0)
    var = optimize.brentq(excess, lo, hi, xtol=1e-13, rtol=4 * np.finfo(float).eps, maxiter=500)
    f, part = _beyond(P, pm, var, right)
    return part / f, float(var)


def spectral_target_stats(gmm: GaussianMixtureFlow, w, levels: Any, etas: Sequence[float], alpha: float,
                          mean_weight: float = 0.0, extra_levels: Any = ()) -> dict:
    """Exact statistics of ``p* ∝ p_1 exp(phi_eta(w·x) / alpha)``.

    Returns ``kl``, ``mean``, ``log_z``, ``risk`` (``w_0 mean + sum_k w_k CVaR_k``), ``cvars`` and ``vars``
    (per level), ``masses`` (tilted mass beyond each ``eta_k``: equal to ``kappa_k`` at the population
    optimum), ``value`` (the dual ``H(eta)``), and ``extra_cvars`` for ``extra_levels`` (any other
    levels to measure, e.g. the constraint of the constrained form).
    """
    levels = _as_levels(levels)
    P = spectral_pieces(gmm, w, levels, etas, alpha, mean_weight)
    pm = np.exp(P["logmass"])
    pm = pm / pm.sum()
    _, full = _piece_beyond(-np.inf, P["mu"], P["sd"], P["lo"], P["hi"], True)  # E[r 1(piece)] / mass
    mean = float(pm @ full)
    e_phi = float(pm @ (P["a"] * full + P["d"]))
    kl = max(e_phi / alpha - P["log_z"], 0.0)
    cv = [_cvar(P, pm, lv) for lv in levels]
    cvars = tuple(c for c, _ in cv)
    masses = tuple(_beyond(P, pm, e, lv.tail == "right")[0] for lv, e in zip(levels, etas))
    risk = mean_weight * mean + sum(lv.weight * c for lv, c in zip(levels, cvars))
    value = sum(lv.weight * e for lv, e in zip(levels, etas)) + alpha * P["log_z"]
    extra = tuple(_cvar(P, pm, lv)[0] for lv in _as_levels(extra_levels))
    return {"kl": kl, "mean": mean, "log_z": P["log_z"], "risk": risk, "cvars": cvars,
            "vars": tuple(v for _, v in cv), "masses": masses, "value": value, "extra_cvars": extra}


# ---------------------------------------------------------------------------
# population thresholds
# ---------------------------------------------------------------------------

def _H(gmm, w, levels, etas, alpha, mean_weight):
    return (sum(lv.weight * e for lv, e in zip(levels, etas))
            + alpha * spectral_pieces(gmm, w, levels, etas, alpha, mean_weight)["log_z"])


def _mass_beyond(gmm, w, levels, etas, alpha, mean_weight, k):
    P = spectral_pieces(gmm, w, levels, etas, alpha, mean_weight)
    pm = np.exp(P["logmass"])
    return _beyond(P, pm / pm.sum(), etas[k], levels[k].tail == "right")[0]


def population_spectral(gmm: GaussianMixtureFlow, w, levels: Any, alpha: float, mean_weight: float = 0.0,
                        grid: int = 81, tol: float = 1e-12, max_sweeps: int = 500) -> tuple[tuple, float]:
    """Exact population thresholds and value: ``max_{eta_L} min_{eta_R} H(eta)`` with the exact ``log Z``.

    Right thresholds: cyclic coordinate solves of ``P*(r > eta_k) = 1 - beta_k`` (the zero of the
    coordinate's derivative, monotone by convexity; Brent's method).  Left thresholds: the maximum
    of ``Phi(eta_L) = min_{eta_R} H`` along each left coordinate on a grid of ``grid`` points over
    ``m_k +- 9 s_k``, refined by Brent on ``dPhi/deta_k = 0``, i.e. ``P*(r < eta_k) = beta_k`` at the
    inner optimum, inside the best cell.  With one left level this is the global max-min (up to the
    grid resolving the maxima of ``Phi``); with several, the left coordinates are cycled to a fixed
    point.  Returns ``(etas, value)``.
    """
    levels = _as_levels(levels)
    w = np.asarray(w, dtype=np.float64)
    m = gmm.means.double().numpy() @ w
    sd = gmm.stds.double().numpy() * np.linalg.norm(w)
    lo_b, hi_b = float((m - 9 * sd).min()), float((m + 9 * sd).max())
    act = [k for k, lv in enumerate(levels) if lv.weight > 0]
    right = [k for k in act if levels[k].tail == "right"]
    left = [k for k in act if levels[k].tail == "left"]
    etas = [float(np.sum(gmm.weights.double().numpy() * m))] * len(levels)

    def mass(et, k):
        return _mass_beyond(gmm, w, levels, et, alpha, mean_weight, k) - levels[k].kappa

    def solve_right(et):
        et = list(et)
        for _ in range(max_sweeps):
            delta = 0.0
            for k in right:
                def f(e, k=k):
                    t = list(et)
                    t[k] = e
                    return mass(t, k)
                lo, hi = lo_b, hi_b
                # widen until the bracket holds: f decreasing from 1-kappa>0 ... to -kappa<0
                while f(lo) < 0:
                    lo -= (hi_b - lo_b)
                while f(hi) > 0:
                    hi += (hi_b - lo_b)
                new = optimize.brentq(f, lo, hi, xtol=tol, rtol=4 * np.finfo(float).eps, maxiter=500)
                delta = max(delta, abs(new - et[k]))
                et[k] = new
            if len(right) <= 1 or delta <= tol * 10:
                break
        return et

    def phi(et, k, e):
        """``Phi`` along left coordinate ``k``: ``min_{eta_R} H`` with ``eta_k = e`` -> (value, etas)."""
        t = list(et)
        t[k] = float(e)
        t = solve_right(t)
        return _H(gmm, w, levels, t, alpha, mean_weight), t

    def best_left(et, k):
        gr = np.linspace(lo_b, hi_b, grid)
        vals = [phi(et, k, e)[0] for e in gr]
        i = int(np.argmax(vals))
        a, b = gr[max(i - 1, 0)], gr[min(i + 1, grid - 1)]

        def g(e):   # dPhi/deta_k = w_k (1 - P*(r < eta_k) / beta_k) at eta_R*(eta_k) (Danskin): + then -
            return mass(phi(et, k, e)[1], k)
        try:
            e = optimize.brentq(g, a, b, xtol=tol, rtol=4 * np.finfo(float).eps, maxiter=500)
        except ValueError:  # no sign change in the cell: maximise Phi there directly
            e = optimize.minimize_scalar(lambda x: -phi(et, k, x)[0], bounds=(a, b), method="bounded",
                                         options={"xatol": tol}).x
        return phi(et, k, e)[1]

    etas = solve_right(etas)
    for _ in range(20):
        old = list(etas)
        for k in left:
            etas = best_left(etas, k)
        if len(left) <= 1 or max((abs(a - b) for a, b in zip(etas, old)), default=0.0) <= 1e-10:
            break
    return tuple(float(e) for e in etas), float(_H(gmm, w, levels, etas, alpha, mean_weight))


def population_constrained(gmm: GaussianMixtureFlow, w, tail: str, beta: float, c: float, alpha: float,
                           tol: float = 1e-10, max_multiplier: float = 1e4, grid: int = 401) -> dict:
    """Exact constrained optimum ``max E[r] - alpha KL`` s.t. ``CVaR^{tail}_beta >= c`` for the population.

    Bisection (with secant steps) on the multiplier ``lambda`` of the exact ``CVaR(p_lambda) = c``,
    ``p_lambda ∝ p_1 exp((r + lambda hinge_eta(r)) / alpha)`` at the population threshold of the
    spectral problem ``(w_0 = 1, one level of weight lambda)``.  Returns a dict with ``multiplier``,
    ``eta``, ``mean``, ``kl``, ``objective = mean - alpha kl``, ``constraint_value``, ``active``, ``gap``.

    When the left threshold of the Lagrangian's tilt jumps across ``c`` (a duality gap: no multiplier alone
    meets ``c``), the threshold is fixed instead: for each ``eta`` the problem with the linear constraint
    ``eta + E[h_eta] >= c`` is convex (bisection on its multiplier gives its optimum ``psi(eta)``), and
    ``psi`` is maximised over ``eta`` near the jump (grid, then bounded Brent); ``gap`` is then True.
    """
    def at(lam):
        lv = [Level(tail, beta, lam)]
        etas, value = population_spectral(gmm, w, lv, alpha, 1.0, grid=grid) if lam > 0 else ((0.0,), 0.0)
        st = spectral_target_stats(gmm, w, lv, etas, alpha, 1.0, extra_levels=[Level(tail, beta, 1.0)])
        return {"multiplier": lam, "eta": etas[0], "mean": st["mean"], "kl": st["kl"],
                "objective": st["mean"] - alpha * st["kl"], "constraint_value": st["extra_cvars"][0],
                "value": value}

    lo = at(0.0)
    if lo["constraint_value"] >= c:
        return {**lo, "active": False, "gap": False}
    hi_l, hi = 1.0, at(1.0)
    while hi["constraint_value"] < c:
        if hi_l >= max_multiplier:
            raise ValueError(f"CVaR_{tail}({beta}) >= {c} needs a multiplier above {max_multiplier}")
        hi_l *= 4.0
        hi = at(hi_l)
    lo_l = 0.0
    for it in range(200):
        mid = 0.5 * (lo_l + hi_l)
        f_lo, f_hi = lo["constraint_value"] - c, hi["constraint_value"] - c
        if it % 2 == 0 and f_hi > f_lo:
            sec = hi_l - f_hi * (hi_l - lo_l) / (f_hi - f_lo)
            if lo_l < sec < hi_l:
                mid = sec
        r = at(mid)
        if r["constraint_value"] >= c:
            hi_l, hi = mid, r
        else:
            lo_l, lo = mid, r
        if abs(hi["constraint_value"] - c) <= tol or hi_l - lo_l <= 1e-13 * hi_l:
            break
    if abs(hi["constraint_value"] - c) <= tol or tail != "left":
        return {**hi, "active": True, "gap": False}
    # a duality gap (the left threshold jumps at this multiplier): fix the threshold, solve the convex
    # problem in the multiplier for each (psi), and maximise psi over the threshold
    best = _left_gap_population(gmm, w, beta, c, alpha, lo["eta"], hi["eta"], tol, grid)
    return {**best, "active": True, "gap": True}


def _fixed_eta_population(gmm, w, eta, beta, c, alpha, tol):
    """``max E[r] - alpha KL`` s.t. ``eta + E[h_eta] >= c`` for the population (convex; bisection on lambda)."""
    lv = Level("left", beta, 1.0)

    def stats_at(lam):
        P = spectral_pieces(gmm, w, [Level("left", beta, lam)], [eta], alpha, 1.0)
        pm = np.exp(P["logmass"])
        pm = pm / pm.sum()
        f, part = _piece_beyond(eta, P["mu"], P["sd"], P["lo"], P["hi"], False)
        ru = eta - (eta * float(pm @ f) - float(pm @ part)) / beta   # eta + E[h_eta]
        return ru - c, P["log_z"]

    if not eta > c:
        return None
    lo, hi = 0.0, 1.0
    f_lo, _ = stats_at(lo)
    if f_lo >= 0:
        lam = 0.0
    else:
        f_hi, _ = stats_at(hi)
        while f_hi < 0:
            lo, f_lo, hi = hi, f_hi, hi * 4.0
            if hi > 1e8:
                return None
            f_hi, _ = stats_at(hi)
        _, lam, *_ = bracketed_root(stats_at, lo, hi, f_lo, f_hi, tol=tol)
    _, log_z = stats_at(lam)
    psi = alpha * log_z + lam * (eta - c)
    return psi, lam, lv


def _left_gap_population(gmm, w, beta, c, alpha, eta_lo, eta_hi, tol, grid):
    a, b = min(eta_lo, eta_hi), max(eta_lo, eta_hi)
    span = max(b - a, 1e-3)
    gr = np.linspace(max(a - span, c + 1e-9), b + span, max(grid // 4, 41))

    def psi(e):
        out = _fixed_eta_population(gmm, w, float(e), beta, c, alpha, tol)
        return -np.inf if out is None else out[0]
    vals = np.array([psi(e) for e in gr])
    i = int(np.argmax(vals))
    lo_e, hi_e = gr[max(i - 1, 0)], gr[min(i + 1, gr.size - 1)]
    res = optimize.minimize_scalar(lambda e: -psi(e), bounds=(lo_e, hi_e), method="bounded",
                                   options={"xatol": 1e-10})
    eta = float(res.x) if -res.fun >= vals[i] else float(gr[i])
    _, lam, _ = _fixed_eta_population(gmm, w, eta, beta, c, alpha, tol)
    lv = [Level("left", beta, lam)]
    st = spectral_target_stats(gmm, w, lv, [eta], alpha, 1.0, extra_levels=[Level("left", beta, 1.0)])
    return {"multiplier": lam, "eta": eta, "mean": st["mean"], "kl": st["kl"],
            "objective": st["mean"] - alpha * st["kl"], "constraint_value": st["extra_cvars"][0],
            "value": float("nan")}


def sample_spectral_target(gmm: GaussianMixtureFlow, n: int, w, levels: Any, etas: Sequence[float], alpha: float,
                           mean_weight: float = 0.0, seed: int = 0) -> np.ndarray:
    """Exact draws ``(n, d)`` from ``p* ∝ p_1 exp(phi(w·x) / alpha)`` (piece, then truncated normal along ``w``)."""
    rng = np.random.default_rng(seed)
    w = np.asarray(w, dtype=np.float64)
    wn2 = float(w @ w)
    P = spectral_pieces(gmm, w, levels, etas, alpha, mean_weight)
    p = np.exp(P["logmass"] - special.logsumexp(P["logmass"]))
    piece = rng.choice(p.size, size=n, p=p)
    K = len(gmm.weights)
    k = piece % K
    mu, sd = P["mu"][piece], P["sd"][piece]
    r = stats.truncnorm.rvs((P["lo"][piece] - mu) / sd, (P["hi"][piece] - mu) / sd, loc=mu, scale=sd,
                            random_state=rng)
    means = gmm.means.double().numpy()[k]
    z = rng.standard_normal((n, gmm.dim)) * gmm.stds.double().numpy()[k, None]
    z -= np.outer(z @ w / wn2, w)
    return means - np.outer(means @ w / wn2, w) + np.outer(r / wn2, w) + z
