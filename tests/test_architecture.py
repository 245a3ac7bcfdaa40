"""The map of docs/architecture.md held against the imports (inside functions too): every top-level
module has a layer, imports only from its own layer or those below, the import graph has no cycle,
and the pairs that must never meet do not, in either direction."""

import ast

import pytest

from conftest import REPO

# Lowest first. A module may import from its own layer (without a cycle) and from those below.
LAYERS = {
    "base": {"errors", "input_size", "settings", "imagenet_labels", "shard_layout", "atomic_io", "suggest", "finder_result",
             "report", "lr_plot", "demo_data"},
    "data, model, machine": {"images", "image_folder", "shards", "preprocess", "shard_writer", "model_resnet50",
                             "runtime", "recipes", "checkpoint"},
    "sweep and training": {"lr_finder", "train_setup", "lr_source", "train_outputs", "train", "lr_verify"},
    "workflow": {"find_lr"},
    "command line": {"cli"},
    "entry points": {"main", "run_lr_finder", "prepare_imagenet"},
}
RANK = {module: rank for rank, modules in enumerate(LAYERS.values()) for module in modules}
DATA = {"images", "image_folder", "shards", "preprocess", "shard_writer", "shard_layout", "imagenet_labels"}
NEVER_MEET = [  # (these modules, those modules): no import either way
    (DATA, {"model_resnet50"}),  # the data never knows the model, nor the model the data
    ({"lr_finder", "suggest", "lr_plot"}, DATA | {"model_resnet50"}),  # the range test knows neither data nor model
    ({"image_folder"}, {"shards"}),  # the two readers stand beside each other on images.py
]


def imported_modules(path) -> set[str]:
    """Top-level names of every module ``path`` imports, inside functions too."""
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names |= {alias.name.split(".")[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module.split(".")[0])
    return names


def project_graph() -> dict[str, set[str]]:
    modules = {p.stem for p in REPO.glob("*.py")}
    return {m: imported_modules(REPO / f"{m}.py") & modules - {m} for m in modules}


def test_every_top_level_module_has_a_layer():
    assert set(project_graph()) == set(RANK)


@pytest.mark.parametrize("module", sorted(RANK))
def test_module_imports_only_its_layer_and_below(module):
    upward = {m for m in project_graph()[module] if RANK[m] > RANK[module]}
    assert upward == set(), f"{module} ({list(LAYERS)[RANK[module]]}) imports from above: {upward}"


def test_the_import_graph_has_no_cycle():
    graph, done, path = project_graph(), set(), []

    def visit(module):
        if module in path:
            raise AssertionError("import cycle: " + " -> ".join(path[path.index(module):] + [module]))
        if module in done:
            return
        path.append(module)
        for imported in sorted(graph[module]):
            visit(imported)
        path.pop()
        done.add(module)

    for module in sorted(graph):
        visit(module)


@pytest.mark.parametrize("these,those", NEVER_MEET, ids=["data-model", "sweep-data", "folder-shards"])
def test_pairs_that_must_not_meet_import_neither_way(these, those):
    graph = project_graph()
    edges = {(a, b) for a in these for b in graph[a] if b in those} | \
            {(b, a) for b in those for a in graph[b] if a in these}
    assert edges == set()


def test_the_check_sees_imports_inside_functions(tmp_path):
    source = tmp_path / "m.py"
    source.write_text("import os\n\ndef f():\n    from model_resnet50 import build_resnet50\n")
    assert imported_modules(source) == {"os", "model_resnet50"}


def test_a_class_folder_run_never_imports_webdataset():
    import subprocess
    import sys

    code = "import sys, preprocess, find_lr, train, main; print('webdataset' in sys.modules, 'shards' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, check=True).stdout
    assert out.split() == ["False", "False"]
