"""Markdown tables for reports (the fine-tune reports of every domain share this one)."""
from __future__ import annotations

import math
from typing import Any

__all__ = ["markdown_table"]


def markdown_table(df: Any, floatfmt: str = "{:.4g}") -> str:
    """A pandas DataFrame as a GitHub markdown table; NaN and None print as an empty cell."""
    import numpy as np

    def fmt(v):
        if v is None:
            return ""
        if isinstance(v, (float, np.floating)):
            return "" if math.isnan(v) else floatfmt.format(v)
        return str(v)

    head = "| " + " | ".join(map(str, df.columns)) + " |"
    sep = "|" + "|".join("---" for _ in df.columns) + "|"
    rows = ["| " + " | ".join(fmt(v) for v in r) + " |" for r in df.itertuples(index=False)]
    return "\n".join([head, sep, *rows])
