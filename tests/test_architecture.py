"""Layers point one way: the sweep never imports data code, the data never model code."""

import ast

import pytest

from conftest import REPO

FORBIDDEN = {
    "lr_finder.py": {"preprocess", "model_resnet50", "train", "find_lr"},
    "preprocess.py": {"model_resnet50", "lr_finder", "train"},
    "model_resnet50.py": {"preprocess"},
}


def imported_modules(path) -> set[str]:
    """Top-level names of every module ``path`` imports, inside functions too."""
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names |= {alias.name.split(".")[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module.split(".")[0])
    return names


@pytest.mark.parametrize("module", sorted(FORBIDDEN))
def test_module_does_not_import_the_layers_it_must_not_know(module):
    assert imported_modules(REPO / module) & FORBIDDEN[module] == set()


def test_the_check_sees_imports_inside_functions(tmp_path):
    source = tmp_path / "m.py"
    source.write_text("import os\n\ndef f():\n    from model_resnet50 import build_resnet50\n")
    assert imported_modules(source) == {"os", "model_resnet50"}
