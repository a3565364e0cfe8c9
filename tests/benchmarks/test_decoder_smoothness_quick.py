"""``benchmarks/decoder_smoothness.py --quick``: smoothness rows per decoder and per scale, sample metrics."""
from __future__ import annotations


import pandas as pd

from helpers.bench import load_benchmark


def test_quick_mode_writes_rows_per_decoder_and_scale(tmp_path):
    mod = load_benchmark("decoder_smoothness")
    out = mod.main(["--quick", "--out", str(tmp_path)])
    df = pd.read_csv(tmp_path / "decoder_smoothness_quick.csv")
    assert sorted(set(df["decode_beam"])) == [1, 2] and len(df) == 8
    for _, d in df.groupby("decode_beam"):  # a larger move keeps fewer molecules
        assert d.sort_values("scale")["same"].is_monotonic_decreasing, d
    s = pd.read_csv(tmp_path / "decoder_smoothness_quick_samples.csv")
    assert list(s["decode_beam"]) == [1, 2] and (s["validity"] == 1.0).all()
    assert (s["decode_ms_per_mol"] > 0).all()
    assert (tmp_path / "decoder_smoothness_quick.md").read_text().startswith("# Decoder smoothness")
    assert len(out["samples"]) == 2
