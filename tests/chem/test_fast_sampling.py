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
    """--fast = --compile, one worker per core, bf16 where native: the same molecules as those flags given."""
    from tfftmol.chem.fast_sampling import bf16_native
    a, b = tmp_path / "a.csv", tmp_path / "b.csv"
    common = [sys.executable, "-m", "tfftmol.cli", "sample", "-n", "20", "--steps", "4", "--batch-size", "10"]
    r = subprocess.run(common + ["-o", str(a), "--fast", "--workers", "2"], capture_output=True, text=True,
                       timeout=600)
    assert r.returncode == 0, r.stderr
    r = subprocess.run(common + ["-o", str(b), "--compile", "--workers", "2", "--precision",
                                 "bf16" if bf16_native() else "fp32"], capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr
    pd.testing.assert_frame_equal(pd.read_csv(a), pd.read_csv(b))


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
