"""``tfftmol.tables.markdown_table``: the one markdown writer every benchmark uses."""
import math

import pandas as pd

from tfftmol.tables import markdown_table


def test_markdown_table_known_text():
    df = pd.DataFrame({"name": ["a", None], "x": [0.123456, math.nan], "n": [3, 4]})
    assert markdown_table(df) == ("| name | x | n |\n|---|---|---|\n| a | 0.1235 | 3 |\n|  |  | 4 |")


def test_markdown_table_custom_format():
    df = pd.DataFrame({"x": [1.0 / 3.0]})
    assert markdown_table(df, floatfmt="{:.2f}").splitlines()[-1] == "| 0.33 |"
