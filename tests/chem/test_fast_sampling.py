"""Fast sampling (bfloat16, torch.compile, worker processes) against the reference sampling loop."""
from __future__ import annotations

import subprocess
import sys
import warnings

import pandas as pd
import pytest
import torch

from tfftmol.chem.fast_sampling import _batch_seeds, bf16_native, sample_fast, sampling_velocity
from tfftmol.chem.qm9_model import WEIGHTS_PATH, load_qm9_graph
from tfftmol.core.sampling import sample

needs_weights = pytest.mark.skipif(not WEIGHTS_PATH.exists(), reason="shipped qm9-graph weights not exported")


@pytest.fixture(scope="module")
def qm9():
    return load_qm9_graph()


@needs_weights
def test_step_velocity_is_the_forward_pass_at_one_time(qm9):
    x = torch.randn(40, 189, generator=torch.Generator().manual_seed(0))
    for t in (0.05, 0.5, 0.97):
        tb = torch.full((40,), t)
        with torch.no_grad():
            torch.testing.assert_close(qm9.step_velocity(x, tb), qm9.forward(x, tb), rtol=1e-5, atol=1e-5)


@needs_weights
def test_each_batch_is_the_reference_loop_on_its_own_generator(qm9):
    """Batch i of the fast path = core.sampling.sample on generator seeded by the i-th spawned seed."""
    n, rows, steps = 50, 20, 6
    fast = sample_fast(qm9, n, steps=steps, seed=11, batch_size=rows)
    seeds = _batch_seeds(11, 3)
    ref = []
    for i, s in enumerate(seeds):
        gen = torch.Generator().manual_seed(s)
        x0 = qm9.sample_prior(rows, generator=gen)
        ref.append(sample(qm9, rows, method="sde", steps=steps, generator=gen, x0=x0).x[:min(rows, n - i * rows)])
    ref = torch.cat(ref)
    torch.testing.assert_close(fast.x, ref, rtol=1e-5, atol=1e-5)
    assert fast.smiles == [d.smiles for d in qm9.decode(ref)]


@needs_weights
def test_the_same_molecules_for_any_number_of_workers(qm9):
    one = sample_fast(qm9, 45, steps=5, seed=3, batch_size=10, workers=1)
    two = sample_fast(qm9, 45, steps=5, seed=3, batch_size=10, workers=2)
    assert len(one) == len(two) == 45
    assert torch.equal(one.x, two.x)
    assert one.smiles == two.smiles and one.reasons == two.reasons
    # and through the model's own sample()
    three = qm9.sample(45, steps=5, seed=3, batch_size=10, workers=3)
    assert torch.equal(one.x, three.x)


@needs_weights
def test_bf16_gives_nearly_the_same_molecules(qm9):
    """Same noise, network in bfloat16: measured 97.8% identical SMILES on 400 samples at 30 steps."""
    a = sample_fast(qm9, 120, steps=30, seed=1, batch_size=60)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # emulated bfloat16 on a CPU without it
        b = sample_fast(qm9, 120, steps=30, seed=1, batch_size=60, precision="bf16")
    same = sum(x == y for x, y in zip(a.smiles, b.smiles)) / 120
    assert same >= 0.9
    assert abs(a.validity - b.validity) <= 0.05
    assert b.x.dtype == torch.float32


@needs_weights
def test_velocity_in_bf16_stays_close_to_fp32(qm9):
    x = torch.randn(30, 189, generator=torch.Generator().manual_seed(2))
    t = torch.full((30,), 0.6)
    with torch.no_grad():
        v32 = sampling_velocity(qm9, "fp32")(x, t)
        v16 = sampling_velocity(qm9, "bf16")(x, t)
    assert v16.dtype == torch.float32
    rel = (v16 - v32).norm() / v32.norm()
    assert 0 < rel < 0.05  # bfloat16 keeps ~3 significant digits: close, but not the same numbers


def test_bad_arguments_name_the_value_and_the_range(qm9):
    with pytest.raises(ValueError, match=r"precision='fp16' must be one of \('fp32', 'bf16'\)"):
        sample_fast(qm9, 4, precision="fp16")
    with pytest.raises(ValueError, match="workers=0 must be an integer >= 1"):
        sample_fast(qm9, 4, workers=0)
    with pytest.raises(ValueError, match="steps=1 must be an integer >= 2"):
        sample_fast(qm9, 4, steps=1)
    with pytest.raises(ValueError, match="sampler='langevin'"):
        sample_fast(qm9, 4, sampler="langevin")
    with pytest.raises(ValueError, match="generator= cannot be combined"):
        qm9.sample(4, workers=2, generator=torch.Generator())


def test_bf16_native_needs_the_bf16_instructions_not_only_avx512():
    """Plain AVX-512 (bfloat16 emulated by oneDNN) is not native; AVX-512 BF16 or AMX-BF16 is; CUDA always is."""
    assert not bf16_native("cpu", cpu_flags={"avx2", "avx512f", "avx512bw", "avx512vl", "avx512dq"})
    assert bf16_native("cpu", cpu_flags={"avx512f", "avx512_bf16"})
    assert bf16_native("cpu", cpu_flags={"amx_bf16", "amx_tile"})
    assert not bf16_native("cpu", cpu_flags=set())
    assert bf16_native("cuda:0")


@needs_weights
def test_compile_without_a_compiler_warns_and_samples_eagerly(qm9):
    import torch._inductor.config as ic
    torch._dynamo.reset()
    with ic.patch({"cpp.cxx": ("/nonexistent/c++",)}):
        with pytest.warns(RuntimeWarning, match="torch.compile is not usable here"):
            got = sample_fast(qm9, 12, steps=3, seed=5, batch_size=12, compile=True)
    torch._dynamo.reset()
    ref = sample_fast(qm9, 12, steps=3, seed=5, batch_size=12)
    assert torch.equal(got.x, ref.x)


@pytest.mark.slow
@needs_weights
def test_compiled_sampling_matches_eager(qm9):
    torch._dynamo.reset()
    with warnings.catch_warnings():
        warnings.filterwarnings("error", message="torch.compile is not usable", category=RuntimeWarning)
        got = sample_fast(qm9, 40, steps=6, seed=9, batch_size=20, compile=True, workers=2)
    ref = sample_fast(qm9, 40, steps=6, seed=9, batch_size=20)
    torch.testing.assert_close(got.x, ref.x, rtol=1e-3, atol=1e-3)
    assert sum(a == b for a, b in zip(got.smiles, ref.smiles)) >= 38


@needs_weights
def test_cli_sample_with_workers_and_bf16(tmp_path):
    out = tmp_path / "s.csv"
    r = subprocess.run([sys.executable, "-m", "tfftmol.cli", "sample", "-n", "30", "-o", str(out), "--steps", "5",
                        "--batch-size", "10", "--workers", "2", "--precision", "bf16"],
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    df = pd.read_csv(out)
    assert len(df) == 30 and set(df.columns) >= {"smiles", "valid", "reason"}
    r = subprocess.run([sys.executable, "-m", "tfftmol.cli", "sample", "-n", "3", "-o", str(out), "--workers", "0"],
                       capture_output=True, text=True, timeout=300)
    assert r.returncode != 0 and "--workers 0 must be >= 1" in r.stderr


@pytest.mark.slow
@needs_weights
def test_cli_fast_preset_is_the_same_sample_as_its_flags_spelled_out(tmp_path):
    """--fast = --compile, one worker per core, bf16 where native, the fast grid: the same molecules as those
    flags given; --fast --grid uniform keeps the uniform grid."""
    from tfftmol.chem.fast_sampling import bf16_native
    a, b = tmp_path / "a.csv", tmp_path / "b.csv"
    common = [sys.executable, "-m", "tfftmol.cli", "sample", "-n", "20", "--steps", "6", "--batch-size", "10"]
    # one worker each: every worker compiles the step, and the compiled path in two workers is
    # test_compiled_sampling_matches_eager's
    r = subprocess.run(common + ["-o", str(a), "--fast", "--workers", "1"], capture_output=True, text=True,
                       timeout=600)
    assert r.returncode == 0, r.stderr
    prec = "bf16" if bf16_native() else "fp32"
    r = subprocess.run(common + ["-o", str(b), "--compile", "--workers", "1", "--precision", prec, "--grid", "fast"],
                       capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr
    pd.testing.assert_frame_equal(pd.read_csv(a), pd.read_csv(b))


def test_fast_preset_settings(qm9):
    """What --fast turns on, and what an explicit flag keeps: the fast grid only for the SDE of an argmax-decoded
    flow, never over an explicit --grid."""
    import argparse

    from tfftmol.chem.selfies import load_zinc_selfies
    from tfftmol.cli import _fast_preset

    def ns(**kw):
        return argparse.Namespace(**{"fast": True, "compile": False, "workers": None, "precision": "fp32",
                                     "grid": None, "sampler": "sde", **kw})

    a = _fast_preset(ns(), qm9)
    assert a.compile and a.workers >= 1 and a.grid == "fast"
    assert a.precision == ("bf16" if bf16_native() else "fp32")
    assert _fast_preset(ns(grid="uniform"), qm9).grid == "uniform"
    assert _fast_preset(ns(sampler="ode"), qm9).grid == "uniform"
    assert _fast_preset(ns(workers=3), qm9).workers == 3
    assert _fast_preset(ns(), load_zinc_selfies()).grid == "uniform"
    plain = _fast_preset(ns(fast=False), qm9)
    assert not plain.compile and plain.workers is None and plain.grid == "uniform" and plain.precision == "fp32"


def test_a_latent_flow_without_step_velocity_samples_the_same_for_any_workers():
    """zinc-selfies has no step_velocity: the fast path uses its velocity and its own decoder."""
    from tfftmol.chem.selfies import load_zinc_selfies
    z = load_zinc_selfies()
    one = sample_fast(z, 30, steps=5, sampler="ode", seed=4, batch_size=10, workers=1)
    two = sample_fast(z, 30, steps=5, sampler="ode", seed=4, batch_size=10, workers=2)
    assert torch.equal(one.x, two.x) and one.smiles == two.smiles
    assert one.validity == 1.0  # every decoded latent is a molecule
    # batch 0 is the reference ODE loop on its own generator
    gen = torch.Generator().manual_seed(_batch_seeds(4, 3)[0])
    x0 = z.sample_prior(10, generator=gen)
    ref = sample(z, 10, method="euler", steps=5, generator=gen, x0=x0).x
    torch.testing.assert_close(one.x[:10], ref, rtol=1e-5, atol=1e-5)


# -- grid="fast" -------------------------------------------------------------------------------------------------
def test_fast_grid_times_and_checks():
    from tfftmol.chem.fast_sampling import fast_grid
    g = fast_grid(30)
    mid = 0.5 + 7 / 36
    expected = torch.tensor([1 / 8, 1 / 4] + [0.25 + k / 20 for k in range(1, 6)] + [0.5 + k / 36 for k in range(1, 8)]
                            + [mid + k / 24 for k in range(1, 4)])
    torch.testing.assert_close(g, expected)
    assert len(g) == 17  # network calls, against 29 on the uniform grid of 30 steps
    assert len(fast_grid(60)) > len(g) and float(fast_grid(60)[-1]) <= 5 / 6
    with pytest.raises(ValueError, match="steps=5 must be an integer >= 6 for grid='fast'"):
        fast_grid(5)
    with pytest.raises(ValueError, match="grid='fast' is a grid of the SDE sampler; sampler='ode'"):
        sample_fast(load_qm9_graph(), 4, steps=24, sampler="ode", grid="fast")
    with pytest.raises(ValueError, match=r"grid='coarse' must be one of \('uniform', 'fast'\)"):
        sample_fast(load_qm9_graph(), 4, steps=24, grid="coarse")


def test_fast_grid_ends_on_the_posterior_mean_of_a_point_mass():
    """Data concentrated at mu: the posterior mean x + (1 - t) v is mu at any t, whatever the path did before."""
    from tfftmol.chem.fast_sampling import _sde_fast_grid, fast_grid
    from tfftmol.toy2d.gmm import GaussianMixtureFlow
    mu = torch.tensor([[2.0, -1.0]])
    gmm = GaussianMixtureFlow(mu, [1e-3], [1.0])
    gen = torch.Generator().manual_seed(0)
    x0 = torch.randn(500, 2, generator=gen)
    calls = []

    def f(x, t):
        calls.append(float(t[0]))
        return gmm.velocity(x, t)

    grid = fast_grid(30)
    x1 = _sde_fast_grid(f, x0, grid, gen)
    torch.testing.assert_close(x1, mu.expand(500, 2), rtol=0, atol=1e-2)
    # one network call per grid time, the last one (the jump) at the last time
    assert calls == pytest.approx(grid.tolist())
    # the first Euler-Maruyama step forgets the prior: its factor 1 - h / t_1 is zero when h = t_1 = 1/8
    gen2 = torch.Generator().manual_seed(0)
    torch.randn(500, 2, generator=gen2)
    other = _sde_fast_grid(lambda x, t: gmm.velocity(x, t), 5.0 + x0, grid, gen2)
    torch.testing.assert_close(other, x1)


@needs_weights
def test_fast_grid_samples_the_same_for_any_workers_and_through_the_model(qm9):
    one = sample_fast(qm9, 30, steps=12, seed=5, batch_size=10, workers=1, grid="fast")
    two = sample_fast(qm9, 30, steps=12, seed=5, batch_size=10, workers=2, grid="fast")
    assert torch.equal(one.x, two.x) and one.smiles == two.smiles
    three = qm9.sample(30, steps=12, seed=5, batch_size=10, grid="fast")
    assert torch.equal(one.x, three.x)
    # the posterior mean of the graph flow is SCALE (2 p - 1) with p the class probabilities of each slot
    from tfftmol.chem.graph import split_state
    from tfftmol.chem.model import SCALE
    node, edge = split_state(one.x)
    for part in (node, edge):
        p = (part / SCALE + 1) / 2
        assert float(p.min()) >= -1e-5
        torch.testing.assert_close(p.sum(-1), torch.ones(p.shape[:-1]), rtol=0, atol=1e-4)


def test_cli_grid_fast_writes_molecules_and_rejects_the_ode(tmp_path):
    out = tmp_path / "g.csv"
    common = [sys.executable, "-m", "tfftmol.cli", "sample", "-n", "12", "--steps", "8", "--batch-size", "6"]
    r = subprocess.run(common + ["-o", str(out), "--grid", "fast"], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    assert len(pd.read_csv(out)) == 12
    r = subprocess.run(common + ["-o", str(out), "--grid", "fast", "--sampler", "ode"], capture_output=True,
                       text=True, timeout=300)
    assert r.returncode != 0 and "grid='fast' is a grid of the SDE sampler" in r.stderr


def test_fast_grid_is_refused_for_a_flow_not_decoded_by_argmax():
    from tfftmol.chem.selfies import load_zinc_selfies
    with pytest.raises(ValueError, match="grid='fast' ends on posterior means, which decode like samples only "
                                         "for a flow decoded by argmax"):
        sample_fast(load_zinc_selfies(), 4, steps=24, grid="fast")
