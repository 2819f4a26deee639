"""Print geodino's import graph: which module imports which, and the same folded to packages.

Why: the layout is meant to show the design (archive -> data -> dino -> launch, transfer beside), and a
graph read off the code is the only picture that cannot go stale. The test for import cycles reads the
same graph (tests/test_architecture.py).

    python tools/import_graph.py            # package-level arrows and any cycle
    python tools/import_graph.py --modules  # every module-level arrow
"""

from __future__ import annotations

import argparse
import ast
import sys
from collections import defaultdict
from pathlib import Path

PACKAGE_ROOT = Path(__file__).resolve().parents[1] / "platform"


def module_name(path: Path, root: Path = PACKAGE_ROOT) -> str:
    parts = list(path.relative_to(root).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


def imported_modules(path: Path, known: set[str], root: Path = PACKAGE_ROOT, top_level_only: bool = False) -> set[str]:
    """geodino modules that `path` imports (anywhere in the file, or only at module level)."""
    tree = ast.parse(path.read_text(), filename=str(path))
    this = module_name(path, root)
    package = this if path.name == "__init__.py" else this.rpartition(".")[0]
    nodes = tree.body if top_level_only else list(ast.walk(tree))
    found = set()
    for node in nodes:
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(anchor + ([base] if base else []))
            # `from geodino import storage` imports the module geodino.storage, not the package geodino
            names = [f"{base}.{alias.name}" if f"{base}.{alias.name}" in known else base for alias in node.names]
        else:
            continue
        for name in names:
            # the longest known module that the imported name lies in
            while name and name not in known:
                name = name.rpartition(".")[0]
            if name and name != this:
                found.add(name)
    return found


def module_graph(root: Path = PACKAGE_ROOT, top_level_only: bool = False) -> dict[str, set[str]]:
    files = sorted((root / "geodino").rglob("*.py"))
    known = {module_name(path, root) for path in files}
    return {module_name(path, root): imported_modules(path, known, root, top_level_only) for path in files}


def package_of(module: str) -> str:
    parts = module.split(".")
    return ".".join(parts[:2]) if len(parts) > 1 else parts[0]


def package_graph(graph: dict[str, set[str]]) -> dict[str, set[str]]:
    folded: dict[str, set[str]] = defaultdict(set)
    for module, targets in graph.items():
        source = package_of(module)
        folded[source] |= {package_of(t) for t in targets if package_of(t) != source}
    return dict(folded)


def find_cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Every strongly connected group of more than one node (Tarjan), each as a sorted list."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    groups: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for target in graph.get(node, ()):
            if target not in index:
                visit(target)
                low[node] = min(low[node], low[target])
            elif target in on_stack:
                low[node] = min(low[node], index[target])
        if low[node] == index[node]:
            group = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                group.append(member)
                if member == node:
                    break
            if len(group) > 1:
                groups.append(sorted(group))

    sys.setrecursionlimit(10_000)
    for node in sorted(graph):
        if node not in index:
            visit(node)
    return groups


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--modules", action="store_true", help="print every module's imports, not the packages'")
    parser.add_argument("--top_level_only", action="store_true",
                        help="only imports at module level (leave out imports inside functions)")
    args = parser.parse_args(argv)
    graph = module_graph(top_level_only=args.top_level_only)
    shown = graph if args.modules else package_graph(graph)
    for source in sorted(shown):
        print(f"{source} -> {', '.join(sorted(shown[source])) or '(nothing of geodino)'}")
    cycles = find_cycles(graph)
    print(f"\nmodule-level cycles: {cycles or 'none'}")
    print(f"package-level cycles: {find_cycles(package_graph(graph)) or 'none'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
