"""benchmarks/fast_sampling.py --quick: every row of the full table, in seconds."""
import json

import pandas as pd

from helpers.bench import load_benchmark


def test_quick_mode_writes_every_row(tmp_path):
    card = tmp_path / "card.json"
    card.write_text('{"name": "qm9-graph", "metrics": {"validity": 0.9}}')
    df = load_benchmark("fast_sampling").main(["--quick", "--out", str(tmp_path), "--update-card", "--card",
                                               str(card)])
    out = pd.read_csv(tmp_path / "fast_sampling.csv")
    assert list(out["path"]) == ["default", "default", "fast", "fast", "fast", "fast"]
    assert list(out["grid"]) == ["uniform"] * 5 + ["fast"]
    assert list(out["workers"]) == [1, 1, 2, 2, 2, 2]
    # network calls: steps - 1 on the uniform SDE grid, the fast grid's length on the fast one
    assert list(out["network_calls"]) == [3, 2, 3, 3, 2, 4]
    assert out["speed_up"].iloc[0] == 1 and out["validity_change_points"].iloc[0] == 0
    assert ((out["validity"] >= 0) & (out["validity"] <= 1)).all() and (out["mol_per_s"] > 0).all()
    assert len(df) == 6
    assert "| path | grid | steps | network_calls |" in (tmp_path / "fast_sampling.md").read_text()
    written = json.loads(card.read_text())
    assert written["metrics"] == {"validity": 0.9}  # the rest of the card is kept
    assert [r["steps"] for r in written["fast_sampling"]["rows"]] == list(out["steps"])
    assert "NaN" not in card.read_text()  # strict JSON: the missing compile times are null
