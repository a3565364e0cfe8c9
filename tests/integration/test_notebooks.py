"""The notebooks: stored without outputs, in sync with their paired scripts, and every one runs.

Each notebook in ``notebooks/`` is executed through ``nbclient`` in its small-budget mode
(``TFFTMOL_NB_SMALL=1``, one thread, outputs under a temporary directory); a cell that raises,
including the notebooks' own ``assert`` cells, fails the test.
"""
import json
import os
import sys
import time
from pathlib import Path

import jupytext
import nbformat
import pytest
from nbclient import NotebookClient
from nbclient.exceptions import CellExecutionError

NB_DIR = Path(__file__).resolve().parents[2] / "notebooks"
NOTEBOOKS = sorted(NB_DIR.glob("[0-9][0-9]_*.ipynb"))
NAMES = [p.stem for p in NOTEBOOKS]


def test_the_six_notebooks_are_there():
    assert [n[:2] for n in NAMES] == ["01", "02", "03", "04", "05", "06"], NAMES
    for p in NOTEBOOKS:
        assert p.with_suffix(".py").is_file(), f"{p.name} has no paired py:percent script"


@pytest.mark.parametrize("name", NAMES)
def test_notebook_is_stored_without_outputs(name):
    nb = nbformat.read(NB_DIR / f"{name}.ipynb", as_version=4)
    nbformat.validate(nb)
    for i, cell in enumerate(nb.cells):
        if cell.cell_type == "code":
            assert cell.outputs == [] and cell.execution_count is None, f"{name}: cell {i} has outputs"
    assert "widgets" not in nb.metadata


@pytest.mark.parametrize("name", NAMES)
def test_notebook_matches_its_paired_script(name):
    """``jupytext --sync`` was run after the last edit: both files hold the same cells."""
    a = nbformat.read(NB_DIR / f"{name}.ipynb", as_version=4)
    b = jupytext.read(NB_DIR / f"{name}.py")
    cells = lambda nb: [(c.cell_type, c.source.strip()) for c in nb.cells]  # noqa: E731
    assert cells(a) == cells(b)


@pytest.mark.parametrize("name", NAMES)
def test_notebook_imports_only_the_public_api(name):
    """Notebooks use ``tfftmol``'s public names and the documented entry modules, nothing private."""
    src = (NB_DIR / f"{name}.py").read_text()
    for bad in ("tfftmol.core.", "from tfftmol.core", "._", "tfftmol.chem.finetune"):
        assert bad not in src, f"{name} uses {bad!r}"


@pytest.fixture(scope="module")
def kernel_dir(tmp_path_factory):
    """A kernelspec for this interpreter, found first on JUPYTER_PATH (not some other python3 on the machine)."""
    d = tmp_path_factory.mktemp("jupyter")
    spec = d / "kernels" / "tfftmol-test"
    spec.mkdir(parents=True)
    (spec / "kernel.json").write_text(json.dumps({
        "argv": [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"],
        "display_name": "tfftmol test", "language": "python"}))
    return d


@pytest.mark.slow  # 66-269 s per notebook (821 s for notebooks 1-5; 06 about 70 s)
@pytest.mark.parametrize("name", NAMES)
def test_notebook_runs_in_small_budget_mode(name, tmp_path, kernel_dir, monkeypatch, capsys):
    monkeypatch.setenv("JUPYTER_PATH", str(kernel_dir))
    monkeypatch.setenv("TFFTMOL_NB_SMALL", "1")
    monkeypatch.setenv("TFFTMOL_NB_OUT", str(tmp_path))
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    monkeypatch.setenv("MKL_NUM_THREADS", "1")
    monkeypatch.setenv("MPLBACKEND", "Agg")
    nb = nbformat.read(NB_DIR / f"{name}.ipynb", as_version=4)
    client = NotebookClient(nb, timeout=900, kernel_name="tfftmol-test",
                            resources={"metadata": {"path": str(NB_DIR)}})
    t0 = time.perf_counter()
    try:
        client.execute()
    except CellExecutionError as e:
        pytest.fail(f"{name}: a cell raised:\n{str(e)[-3000:]}")
    wall = time.perf_counter() - t0
    errors = [o for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", []) if o.output_type == "error"]
    assert not errors
    ran = [c for c in nb.cells if c.cell_type == "code"]
    assert ran and all(c.execution_count is not None for c in ran)
    assert any(tmp_path.iterdir()), "outputs go under TFFTMOL_NB_OUT"
    text = "".join(o.get("text", "") for c in ran for o in c.outputs if o.output_type == "stream")
    key = [line for line in text.splitlines() if " -> " in line or line.startswith("held-out:")]  # key cells
    with capsys.disabled():
        print(f"\n{name}: {wall:.0f} s (small budget)" + "".join(f"\n  {line}" for line in key))
