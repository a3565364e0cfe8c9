"""Every docstring that cites the design document cites a section that exists in it."""
from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
CITE = re.compile(r"docs/design\.md\)?\s*((?:§[\d.]+(?:\s*[-,;]\s*|\s*and\s*|;?\s*this module:\s*)?)+)")


def _sections() -> set[str]:
    text = (ROOT / "docs" / "design.md").read_text()
    return set(re.findall(r"^#{2,3} §([\d.]+)", text, flags=re.M))


def test_the_design_doc_has_numbered_sections():
    secs = _sections()
    assert {"1", "2", "2.1", "4.2", "6", "7", "8", "9"} <= secs


def test_every_citation_names_an_existing_section():
    secs = _sections()
    cited = []
    for path in [*ROOT.joinpath("tfftmol").rglob("*.py"), *ROOT.joinpath("benchmarks").glob("*.py"), ROOT / "README.md"]:
        text = path.read_text()
        assert "DESIGN.md" not in text, f"{path.relative_to(ROOT)} cites a file that is not in the project"
        for m in CITE.finditer(text):
            for sec in re.findall(r"§([\d.]+)", m.group(1)):
                cited.append(sec)
                assert sec.rstrip(".") in secs, f"{path.relative_to(ROOT)} cites docs/design.md §{sec}, not in it"
    assert len(cited) >= 15
