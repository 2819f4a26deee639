"""Mutation testing of the fast, pure modules: does the suite notice when their code is changed?

    python tools/mutation_report.py                     # every module below, in a scratch copy of HEAD
    python tools/mutation_report.py --only loss metrics # some of them

Each module is mutated by mutmut (2.x: operators flipped, constants changed, lines removed) in a scratch copy
of the committed tree, never in this checkout, and the tests that cover it run against each mutant. A mutant
the tests do not fail on "survives"; the report lists every survivor with its diff, for benchmarks/RESULTS.md,
where each one is either killed by a new test or explained. mutmut is not a dependency of geodino: install it
anywhere (`python -m venv /tmp/mm && /tmp/mm/bin/pip install mutmut==2.5.1`) and pass --mutmut.
"""

from __future__ import annotations

import argparse
import os
import re
import shlex
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
# Tests that spawn gloo process groups are left out: a mutant that makes one rank wait forever hangs mutmut
# itself (2.5.1 stops at its next timeout and never finishes the module); the all-reduce has its own test.
NO_SPAWN = ["-k", "'not gloo and not ddp'"]
MODULES = {  # short name: (module, the tests that cover it, fast ones only)
    "loss": ("platform/geodino/dino/loss.py", ["tests/test_dino_math.py", *NO_SPAWN]),
    "schedules": ("platform/geodino/dino/schedules.py", ["tests/test_dino_math.py", "tests/test_loop.py", *NO_SPAWN]),
    "metrics": ("platform/geodino/metrics.py", ["tests/test_metrics.py", "tests/test_monitors.py"]),
    "probe": ("platform/geodino/transfer/probe.py", ["tests/test_metrics.py"]),
    "checkpoint": ("platform/geodino/dino/checkpoint.py", ["tests/test_checkpoint.py", "tests/test_backbones.py"]),
    "labels": ("platform/geodino/archive/labels.py", ["tests/test_labels.py"]),
}


def scratch_copy() -> Path:
    """The committed tree, outside this checkout: mutmut edits files in place."""
    folder = Path(tempfile.mkdtemp(prefix="geodino-mutation-"))
    archive = subprocess.run(["git", "archive", "HEAD"], cwd=REPO, check=True, capture_output=True).stdout
    subprocess.run(["tar", "-x", "-C", str(folder)], input=archive, check=True)
    return folder  # the tests find ../shared/data through GEODINO_SHARED_DATA (set in mutate)


def mutate(name: str, mutmut: str, copy: Path) -> list[tuple[str, str]]:
    """Run mutmut on one module; return (mutant id, diff) of every survivor."""
    module, tests = MODULES[name]
    env = {**os.environ, "PYTHONPATH": str(copy / "platform"), "HF_HUB_OFFLINE": "1",
           "GEODINO_SHARED_DATA": os.environ.get("GEODINO_SHARED_DATA", str(REPO.parent / "shared" / "data"))}
    # mutmut 2.5.1 counts only exit status 1 as a killed mutant; a mutant that breaks the module's import makes
    # pytest exit 2 (collection error) and would be reported as surviving, so every failure is made a 1.
    pytest = f"{sys.executable} -m pytest -x -q -p no:cacheprovider {' '.join(tests)}"
    runner = f"sh -c {shlex.quote(pytest + ' || exit 1')}"
    cache = copy / ".mutmut-cache"
    if cache.exists():
        cache.unlink()
    subprocess.run([mutmut, "run", "--paths-to-mutate", module, "--runner", runner, "--no-progress", "--simple-output"],
                   cwd=copy, env=env, capture_output=True, text=True)
    results = subprocess.run([mutmut, "results"], cwd=copy, env=env, capture_output=True, text=True).stdout
    survivors = []
    for block in re.findall(r"Survived[^\n]*\n\n?---- [^\n]+ \((\d+)\) ----\n\n([\d, -]+)", results):
        for part in block[1].split(","):
            first, _, last = part.strip().partition("-")
            for mutant in range(int(first), int(last or first) + 1):
                diff = subprocess.run([mutmut, "show", str(mutant)], cwd=copy, env=env, capture_output=True,
                                      text=True).stdout
                survivors.append((str(mutant), diff.strip()))
    print(f"## {name} ({module}): {len(survivors)} survivors; tests: {' '.join(tests)}\n")
    print(results.strip() + "\n")
    for mutant, diff in survivors:
        print(f"### mutant {mutant}\n\n```diff\n{diff}\n```\n")
    return survivors


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--only", nargs="+", choices=sorted(MODULES), help="modules to mutate (default: all)")
    parser.add_argument("--mutmut", default="mutmut", help="the mutmut executable (2.x)")
    args = parser.parse_args(argv)
    copy = scratch_copy()
    total = 0
    for name in args.only or list(MODULES):
        total += len(mutate(name, args.mutmut, copy))
    print(f"surviving mutants in all: {total} (scratch copy: {copy})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
