"""The core has no image-specific branches: the digits submodule plugs in from outside."""
import ast
import io
import re
import tokenize
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
IMAGE_WORDS = ("image", "images", "pixel", "pixels", "digit", "digits", "prompt", "prompts", "classifier",
               "sklearn", "mnist", "conv2d", "image2d")


def image_words(source: str) -> list[str]:
    """Image words in the code of ``source``: identifiers, imports, non-docstring strings and comments."""
    tree = ast.parse(source)
    docstrings = {id(n.body[0].value) for n in ast.walk(tree)
                  if isinstance(n, (ast.Module, ast.FunctionDef, ast.ClassDef, ast.AsyncFunctionDef))
                  and n.body and isinstance(n.body[0], ast.Expr) and isinstance(n.body[0].value, ast.Constant)}
    texts = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Name):
            texts.append(node.id)
        elif isinstance(node, ast.Attribute):
            texts.append(node.attr)
        elif isinstance(node, ast.arg):
            texts.append(node.arg)
        elif isinstance(node, (ast.FunctionDef, ast.ClassDef)):
            texts.append(node.name)
        elif isinstance(node, (ast.Import, ast.ImportFrom)):
            texts += [a.name for a in node.names] + ([node.module] if isinstance(node, ast.ImportFrom) and node.module else [])
        elif isinstance(node, ast.Constant) and isinstance(node.value, str) and id(node) not in docstrings:
            texts.append(node.value)
    texts += [t.string for t in tokenize.generate_tokens(io.StringIO(source).readline) if t.type == tokenize.COMMENT]
    hits = []
    for s in texts:
        toks = re.split(r"[^a-z0-9]+", re.sub(r"([a-z])([A-Z])", r"\1_\2", s).lower())
        hits += [w for w in IMAGE_WORDS if w in toks]
    return hits


@pytest.mark.parametrize("path", sorted((ROOT / "tfftmol" / "core").glob("*.py")), ids=lambda p: p.name)
def test_core_module_has_no_image_words(path):
    assert image_words(path.read_text()) == []


@pytest.mark.parametrize("snippet", [
    "if model.is_image:\n    pass\n",
    "from ..image2d.digits import DigitFlow\n",
    "def f(prompts):\n    return prompts\n",
    "x = 1  # scale the pixels\n",
    "name = 'digits-flow'\n",
    "class ImageReward:\n    pass\n",
])
def test_the_check_catches_image_code(snippet):
    assert image_words(snippet) != []


def test_the_check_ignores_docstrings():
    assert image_words('"""Works for molecules and images alike."""\nx = 1\n') == []
