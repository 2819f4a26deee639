"""The layout's rules, read off the code: no import cycles, a Ray-free bare-GPU path, small modules and loops."""

import ast
import inspect
import subprocess
import sys

import pytest
from conftest import REPO, load_module

PACKAGE = REPO / "platform" / "geodino"


def import_graph_tool():
    return load_module(REPO / "tools" / "import_graph.py", "import_graph")


def test_no_import_cycles_between_modules_or_packages():
    tool = import_graph_tool()
    graph = tool.module_graph()  # every import, those inside functions included
    assert "geodino.dino.loop" in graph and "geodino.data.ray_data" in graph["geodino.launch.ray_train"]
    assert tool.find_cycles(graph) == []
    assert tool.find_cycles(tool.package_graph(graph)) == []


def test_the_cycle_finder_finds_a_cycle():
    tool = import_graph_tool()
    assert tool.find_cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


def test_packages_import_in_one_direction():
    """archive at the bottom; data on archive; dino on nothing of those; launch and transfer on top."""
    tool = import_graph_tool()
    packages = tool.package_graph(tool.module_graph())
    top_level = {"geodino.storage", "geodino.errors", "geodino.metrics", "geodino.cli", "geodino.ray_cluster",
                 "geodino.tracking"}
    assert packages["geodino.archive"] <= top_level
    assert packages["geodino.data"] <= top_level | {"geodino.archive"}
    assert packages["geodino.dino"] <= top_level
    for leaf in top_level:
        assert packages.get(leaf, set()) <= top_level, leaf


RAY_FREE = ["geodino.dino", "geodino.data", "geodino.data.indexed", "geodino.launch", "geodino.launch.torchrun",
            "geodino.archive", "geodino.metrics"]


def test_the_bare_gpu_path_imports_with_ray_absent():
    """What the torchrun launcher needs, imported in a Python where `import ray` fails."""
    program = ("import sys\nsys.modules['ray'] = None\n"
               + "".join(f"import {name}\n" for name in RAY_FREE)
               + "from geodino.launch import run_pretraining\n"
               + "assert not [m for m in sys.modules if m == 'ray' and sys.modules[m] is not None]\n"
               + "print('ray-free')\n")
    done = subprocess.run([sys.executable, "-c", program], capture_output=True, text=True, timeout=300,
                          env={"PYTHONPATH": str(REPO / "platform"), "PATH": "/usr/bin:/bin"})
    assert done.returncode == 0 and "ray-free" in done.stdout, done.stderr[-2000:]
    # ... and the check itself can fail: a module that needs Ray does not import there.
    failing = subprocess.run([sys.executable, "-c", "import sys\nsys.modules['ray'] = None\nimport geodino.data.ray_data"],
                             capture_output=True, text=True, timeout=300, env={"PYTHONPATH": str(REPO / "platform")})
    assert failing.returncode != 0 and "ray" in failing.stderr


def test_the_loop_takes_a_handful_of_arguments():
    from geodino.dino import dino_loop, train_one_epoch

    for function in (dino_loop, train_one_epoch):
        assert len(inspect.signature(function).parameters) <= 5, function.__name__


MAX_LINES = 400


@pytest.mark.parametrize("path", sorted(PACKAGE.rglob("*.py")), ids=lambda p: str(p.relative_to(PACKAGE)))
def test_modules_are_small_and_say_what_they_are_for(path):
    source = path.read_text()
    assert source.count("\n") <= MAX_LINES, f"{path.name} has {source.count(chr(10))} lines"
    docstring = ast.get_docstring(ast.parse(source))
    assert docstring and len(docstring.splitlines()[0]) > 20, f"{path.name}: no docstring saying what it is for"
