"""Project hygiene: pins agree, the core imports without chemistry, public API is explicit."""
import re
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]


def _pins(lines):
    out = {}
    for line in lines:
        m = re.match(r"^\s*([A-Za-z0-9_.\-]+)\s*==\s*([^\s;]+)", line)
        if m:
            out[m.group(1).lower().replace("_", "-")] = m.group(2)
    return out


def test_environment_yml_pins_match_pyproject():
    py = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    deps = py["dependencies"] + sum(py.get("optional-dependencies", {}).values(), [])
    want = _pins(deps)
    env = yaml.safe_load((ROOT / "environment.yml").read_text())
    pip = next(d["pip"] for d in env["dependencies"] if isinstance(d, dict) and "pip" in d)
    have = _pins(pip)
    assert want == have
    assert want["torch"] == "2.13.0"
    assert "python=3.11" in env["dependencies"]


def test_every_dependency_is_pinned():
    py = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    for d in py["dependencies"]:
        assert "==" in d, d


@pytest.mark.slow  # 12 s: a fresh interpreter importing torch
def test_core_imports_without_rdkit():
    code = (
        "import sys\n"
        "class Block:\n"
        "    def find_spec(self, name, path=None, target=None):\n"
        "        if name.split('.')[0] in ('rdkit', 'deepchem', 'torch_geometric', 'selfies'):\n"
        "            raise ImportError('blocked ' + name)\n"
        "sys.meta_path.insert(0, Block())\n"
        "import tfftmol, tfftmol.core, tfftmol.toy2d.gmm\n"
        "m = tfftmol.load_pretrained('gmm-exact')\n"
        "assert not any(k.split('.')[0] in ('rdkit', 'deepchem', 'torch_geometric') for k in sys.modules)\n"
        "print('ok')\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "ok"


@pytest.mark.parametrize("module", ["tfftmol", "tfftmol.core"])
def test_all_matches_exports(module):
    import importlib

    mod = importlib.import_module(module)
    assert len(mod.__all__) == len(set(mod.__all__))
    for name in mod.__all__:
        assert hasattr(mod, name), name


def test_core_has_no_domain_branches():
    """The core's code (identifiers, imports, non-docstring strings) knows nothing of molecules or images."""
    import ast

    words = ("rdkit", "smiles", "molecule", "mol", "chem", "image", "pixel", "digit")
    for path in (ROOT / "tfftmol" / "core").glob("*.py"):
        tree = ast.parse(path.read_text())
        docstrings = {id(n.body[0].value) for n in ast.walk(tree)
                      if isinstance(n, (ast.Module, ast.FunctionDef, ast.ClassDef, ast.AsyncFunctionDef))
                      and n.body and isinstance(n.body[0], ast.Expr) and isinstance(n.body[0].value, ast.Constant)}
        for node in ast.walk(tree):
            names = []
            if isinstance(node, ast.Name):
                names = [node.id]
            elif isinstance(node, ast.Attribute):
                names = [node.attr]
            elif isinstance(node, (ast.Import, ast.ImportFrom)):
                names = [a.name for a in node.names] + ([node.module] if isinstance(node, ast.ImportFrom) and node.module else [])
            elif isinstance(node, ast.Constant) and isinstance(node.value, str) and id(node) not in docstrings:
                names = [node.value]
            for n in names:
                toks = re.split(r"[^a-z0-9]+", n.lower())
                assert not any(w in toks for w in words), (path.name, n)


def test_unknown_pretrained_name_lists_valid_names():
    import tfftmol

    with pytest.raises(ValueError, match="valid names: .*gmm-exact"):
        tfftmol.load_pretrained("nope")


def test_readme_and_ci_use_the_make_targets():
    readme = (ROOT / "README.md").read_text()
    assert "make demo" in readme and "make test" in readme
    assert "make test" in (ROOT / ".ci" / "run").read_text()
