"""Faster sampling of a molecular flow: bfloat16 arithmetic, ``torch.compile`` and one-thread worker processes.

:func:`sample_fast` draws the same kind of sample as ``model.sample`` (the same SDE or ODE, the same number of
steps, the same decoding), with three independent levers:

* ``precision="bf16"``: the network runs under ``torch.autocast`` in bfloat16; the state, the integration and
  the softmax stay float32.  On a CPU with native bfloat16 (AVX-512 BF16 or AMX) this is about 1.5x per forward
  pass; without it bfloat16 is emulated and slower, so :func:`bf16_native` says which.
* ``compile=True``: the sampling-step velocity goes through ``torch.compile`` (inductor).  Compiling takes
  10-60 s once per process and shape (inductor caches it on disk for later processes), so it pays from a few
  thousand molecules on; if the compiler is not there
  (no C compiler on the machine) the run warns once and goes on eagerly.
* ``workers=k``: ``k`` forked processes of one thread each share the batches (two processes beat two threads of
  one process on a 2-core machine).  Where ``fork`` does not exist the batches run in this process.
* ``grid="fast"`` (the SDE of an argmax-decoded flow only): fewer network calls on another time grid,
  :func:`fast_grid`.  Two steps cover ``t < 1/4``, where the memoryless SDE's noise
  (``sigma^2 = 2 (1 - t) / t >= 6``) erases the state anyway; the steps are finest on ``[1/2, 0.7]``, where
  validity was measured to depend most on the step, and the last state, near ``t = 5/6``, is the posterior mean
  ``x + (1 - t) v(x, t)`` (the flow's own prediction of ``x_1``), whose argmax is what the remaining steps
  would settle on.  At ``steps=30``: 17 network calls instead of 29 at the validity of the uniform grid
  (``benchmarks/fast_sampling.py``).

Reproducible for any ``workers``: batch ``i`` draws its prior and its noise from its own generator, seeded by
``numpy.random.SeedSequence(seed).spawn``, and every batch has ``batch_size`` rows (the last one is padded and
cut), so ``workers=1`` and ``workers=2`` give the same molecules.  This stream differs from ``model.sample``'s
single generator: a seed names a different (equally distributed) sample on the two paths.

Measured on ``qm9-graph``: ``benchmarks/fast_sampling.py`` (quality and speed of each path, 10,000 molecules)
and ``benchmarks/speed.py`` (against the code before any speed work, interleaved); the README's sampling step.

Example:
    >>> from tfftmol.pretrained import load_pretrained                                  # doctest: +SKIP
    >>> res = sample_fast(load_pretrained("qm9-graph"), 10000, seed=0, precision="bf16",
    ...                   compile=True, workers=2)                                        # doctest: +SKIP
"""
from __future__ import annotations

import math
import multiprocessing as mp
import warnings
from typing import Any, Callable, Optional

import numpy as np
import torch

from tfftmol.core.precision import PRECISIONS, bf16_native, check_precision, in_precision
from tfftmol.core.sampling import sample as integrate
from tfftmol.core.sde import em_step

__all__ = ["PRECISIONS", "GRIDS", "sample_fast", "bf16_native", "sampling_velocity", "fast_grid", "wants_fast"]

_METHOD = {"sde": "sde", "heun": "heun", "ode": "euler"}
GRIDS = ("uniform", "fast")
#: the windows of :func:`fast_grid`: ``(from, to, step x steps)``; each starts where the previous one ended
FAST_WINDOWS = ((0.25, 0.5, 1.5), (0.5, 0.7, 5.0 / 6.0), (0.7, 5.0 / 6.0, 1.25))


def fast_grid(steps: int) -> torch.Tensor:
    """The times of ``grid="fast"`` at resolution ``steps`` (``1 / steps`` is the uniform grid's step).

    ``1/8`` and ``1/4`` (two coarse steps where the memoryless SDE's noise erases the state), then the steps
    ``1.5 / steps`` up to ``t = 1/2``, ``(5/6) / steps`` up to ``t = 0.7`` (where the graph flow settles most slots)
    and ``1.25 / steps`` up to ``t = 5/6``, each as many as fit in its window; at the last time the sample is the
    posterior mean ``x + (1 - t) v``.  ``len(fast_grid(steps))`` network calls in all: 17 at ``steps=30``
    (the uniform grid: 29).  The first step has the length of ``t_1``, so the factor ``1 - h / t_1`` in front of
    the prior draw is exactly zero, as on the uniform grid.
    """
    if not isinstance(steps, int) or steps < 6:
        raise ValueError(f"steps={steps!r} must be an integer >= 6 for grid='fast'")
    times = [0.125, 0.25]
    for _, end, mult in FAST_WINDOWS:
        h = mult / steps
        while times[-1] + h <= end + 1e-9:
            times.append(times[-1] + h)
    return torch.tensor(times)


def _sde_fast_grid(f: Callable, x: torch.Tensor, grid: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Euler-Maruyama of the memoryless SDE on ``grid`` from ``x`` at ``grid[0]``, then the posterior mean."""
    ts = grid.to(x.device, x.dtype)
    for k in range(len(ts) - 1):
        v = f(x, ts[k].expand(x.shape[0]))
        eps = torch.randn(x.shape, generator=generator, dtype=x.dtype).to(x.device)
        x = em_step(x, v, ts[k], float(ts[k + 1] - ts[k]), eps)
    t = ts[-1]
    return x + (1.0 - t) * f(x, t.expand(x.shape[0]))


def wants_fast(precision: str = "fp32", compile: bool = False, workers: Optional[int] = None,
               grid: str = "uniform") -> bool:
    """Whether these settings ask for :func:`sample_fast` rather than a model's own ``sample``."""
    return precision != "fp32" or bool(compile) or workers is not None or grid != "uniform"


def _check(n: int, steps: int, sampler: str, batch_size: int, precision: str, workers: int,
           grid: str = "uniform") -> None:
    if not isinstance(n, int) or n < 0:
        raise ValueError(f"n={n!r} must be an integer >= 0")
    if sampler not in _METHOD:
        raise ValueError(f"sampler={sampler!r} must be one of {tuple(_METHOD)}")
    if not isinstance(steps, int) or steps < (2 if sampler == "sde" else 1):
        raise ValueError(f"steps={steps!r} must be an integer >= {2 if sampler == 'sde' else 1} for sampler "
                         f"{sampler!r}")
    if not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size={batch_size!r} must be an integer >= 1")
    check_precision(precision)
    if grid not in GRIDS:
        raise ValueError(f"grid={grid!r} must be one of {GRIDS}")
    if grid == "fast":
        if sampler != "sde":
            raise ValueError(f"grid='fast' is a grid of the SDE sampler; sampler={sampler!r} takes grid='uniform'")
        fast_grid(steps)
    if not isinstance(workers, int) or workers < 1:
        raise ValueError(f"workers={workers!r} must be an integer >= 1")


def sampling_velocity(model: Any, precision: str = "fp32") -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
    """The velocity ``f(x, t)`` of a sampling step (every row at the same time ``t``), in ``precision``.

    A model may offer ``model.step_velocity(x, t)`` (the same maths with the time embedding computed once per
    batch and no data-dependent branch, so ``torch.compile`` sees one graph); otherwise ``model.velocity`` is used.
    The output is float32 whatever ``precision`` is.
    """
    check_precision(precision)
    step = getattr(model, "step_velocity", None) or model.velocity

    def f(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        return in_precision(x, precision, lambda: step(x, t))

    return f


class _Compiled:
    """``torch.compile(f)`` that falls back to ``f`` (with one warning) when compiling fails.

    Compiling runs in this process, without inductor's pool of compile workers: their threads would be
    alive when :func:`sample_fast` later forks its workers, and a fork while a thread holds a lock can hang
    the child.
    """

    def __init__(self, f: Callable):
        self.f, self.compiled, self.failed = f, torch.compile(f, dynamic=False), False

    def __call__(self, x, t):
        if not self.failed:
            try:
                import torch._inductor.config as inductor_config
                with inductor_config.patch(compile_threads=1):
                    return self.compiled(x, t)
            except Exception as e:  # noqa: BLE001 - no C compiler, an unsupported op: run eagerly
                self.failed = True
                warnings.warn(f"torch.compile is not usable here ({type(e).__name__}: {str(e)[:200]}); "
                              "sampling goes on without it", RuntimeWarning, stacklevel=2)
        return self.f(x, t)


def _batch_seeds(seed: int, n_batches: int) -> list[int]:
    return [int(s.generate_state(1, dtype=np.uint64)[0] % (2 ** 63 - 1))
            for s in np.random.SeedSequence(seed).spawn(n_batches)]


# the state of one sampling job, set before the workers fork (read by _run_batches in the children);
# "grid": the times of the fast grid, or None for the uniform grid of "method" and "steps"
_JOB: dict = {}


def _run_batches(idx: list[int]) -> list[tuple[int, torch.Tensor, list]]:
    job = _JOB
    model, f, rows = job["model"], job["f"], job["batch_size"]
    out = []
    for i in idx:
        gen = torch.Generator().manual_seed(job["seeds"][i])
        x0 = model.sample_prior(rows, generator=gen, device="cpu").to(job["device"])
        with torch.no_grad():
            if job["grid"] is not None:
                x = _sde_fast_grid(f, x0, job["grid"], gen)
            else:
                x = integrate(f, rows, method=job["method"], steps=job["steps"], generator=gen, x0=x0).x
        m = min(rows, job["n"] - i * rows)
        x = x[:m].float().cpu()
        out.append((i, x, model.decode(x) if job["decode"] else None))
    return out


def _child(idx: list[int]) -> list:
    torch.set_num_threads(1)
    return _run_batches(idx)


def sample_fast(model: Any, n: int, *, steps: int = 30, sampler: str = "sde", seed: Optional[int] = None,
                batch_size: int = 500, precision: str = "fp32", compile: bool = False, workers: int = 1,
                decode: bool = True, grid: str = "uniform"):
    """Draw ``n`` molecules of ``model`` with the speed levers of this module.

    Args:
        model: a molecular flow with ``sample_prior``, ``velocity`` (or ``step_velocity``) and ``decode``
            (``qm9-graph``, ``zinc-selfies``, a fine-tuned copy of either).
        n: molecules; steps, sampler: as ``model.sample`` (``"sde"``, ``"ode"`` or ``"heun"``).
        seed: names the sample (any ``workers``); ``None`` draws one from torch's global generator.
        batch_size: rows per batch (each batch is one compiled shape).
        precision: ``"fp32"`` or ``"bf16"`` (the network only).
        compile: run the sampling-step velocity through ``torch.compile`` (falls back with a warning).
        workers: one-thread worker processes sharing the batches (``fork``); 1 runs here, in one thread.
        decode: decode the final states (``False``: return the states only).
        grid: ``"uniform"`` (``t_k = k / steps``, as ``model.sample``) or ``"fast"`` (the SDE only: fewer network
            calls, :func:`fast_grid`).

    Returns:
        a :class:`~tfftmol.chem.qm9_model.SampleResult` (``decode=True``) or the states ``(n, *state_shape)``.
    """
    from tfftmol.chem.qm9_model import SampleResult

    _check(n, steps, sampler, batch_size, precision, workers, grid)
    if grid == "fast" and not getattr(model, "argmax_decoded", False):
        raise ValueError(f"grid='fast' ends on posterior means, which decode like samples only for a flow decoded "
                         f"by argmax (qm9-graph); {type(model).__name__} is not: use grid='uniform'")
    device = next(model.parameters()).device
    if precision == "bf16" and not bf16_native(device):
        warnings.warn("precision='bf16' on a CPU without native bfloat16: it is emulated, and slower than fp32",
                      RuntimeWarning, stacklevel=2)
    if seed is None:
        seed = int(torch.randint(0, 2 ** 31 - 1, ()).item())
    n_batches = math.ceil(n / batch_size) if n else 0
    f = sampling_velocity(model, precision)
    f = _Compiled(f) if compile else f
    was = model.training
    model.eval()
    _JOB.clear()
    _JOB.update(model=model, f=f, batch_size=batch_size, seeds=_batch_seeds(seed, n_batches), n=n, steps=steps,
                method=_METHOD[sampler], device=device, decode=decode,
                grid=fast_grid(steps) if grid == "fast" else None)
    parts: list = []
    try:
        can_fork = "fork" in mp.get_all_start_methods() and device.type == "cpu"
        if workers > 1 and n_batches > 1 and not can_fork:
            warnings.warn("workers > 1 needs the 'fork' start method on a CPU model; the batches run in this "
                          "process", RuntimeWarning, stacklevel=2)
        k = min(workers, n_batches) if can_fork else 1
        if k <= 1:
            threads = torch.get_num_threads()
            torch.set_num_threads(1)  # the same arithmetic as one worker, so any ``workers`` gives the same sample
            try:
                parts = _run_batches(list(range(n_batches)))
            finally:
                torch.set_num_threads(threads)
        else:
            if compile:  # compile once here, before the fork: the workers inherit the compiled code
                with torch.no_grad():
                    x = model.sample_prior(batch_size, device=device)
                    f(x, torch.full((batch_size,), 0.5, device=device))
            with mp.get_context("fork").Pool(k) as pool:
                for chunk in pool.map(_child, [list(range(j, n_batches, k)) for j in range(k)]):
                    parts.extend(chunk)
    finally:
        _JOB.clear()
        model.train(was)
    parts.sort(key=lambda p: p[0])
    x = torch.cat([p[1] for p in parts]) if parts else torch.zeros(0, *model.state_shape)
    if not decode:
        return x
    return SampleResult.from_decoded(x, [d for p in parts for d in p[2]])
