"""Run entry scripts' mains in one fresh process, as `python experiments/SCRIPT ARGS` would, for many command
lines at once: one interpreter start instead of one per bad input. Reads [[script, [args...]], ...] as JSON on
stdin (a third item per line: environment variables for that line alone); prints, per command line, its exit
status, what it printed, and whether it started Ray.

    python tests/entry_driver.py < cases.json
"""

import contextlib
import importlib
import io
import json
import os
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO / "platform"), str(REPO / "experiments")]

from geodino.cli import run_entry  # noqa: E402


def run_one(script: str, argv: list[str], env: dict | None = None) -> dict:
    module = importlib.import_module(script.removesuffix(".py"))
    sys.argv[0] = script  # argparse names the program after it, as it does for a real run
    stderr, stdout = io.StringIO(), io.StringIO()
    with contextlib.redirect_stderr(stderr), contextlib.redirect_stdout(stdout), environment(env or {}):
        try:
            status = run_entry(script, module.main, argv)
        except SystemExit as exit_:
            status = exit_.code
        except Exception as error:  # noqa: BLE001 - reported, the test names the case
            status = f"raised {type(error).__name__}"
            stderr.write(f"Traceback (most recent call last):\n{type(error).__name__}: {error}\n")
    ray = sys.modules.get("ray")
    started = bool(ray and ray.is_initialized())
    if started:
        ray.shutdown()  # the next command line starts from no Ray again
    return {"status": status, "stdout": stdout.getvalue(), "stderr": stderr.getvalue(), "ray_started": started}


@contextlib.contextmanager
def environment(variables: dict):
    """The command line's own environment variables (RAY_ADDRESS=...), for its run only."""
    saved = {name: os.environ.get(name) for name in variables}
    os.environ.update(variables)
    try:
        yield
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


def run_lines(lines: list[tuple], env: dict | None = None) -> list[dict]:
    """For tests: run the command lines through this file in one fresh process (no RAY_ADDRESS: none to join)."""
    import subprocess

    variables = {key: value for key, value in {**os.environ, **(env or {})}.items() if key != "RAY_ADDRESS"}
    done = subprocess.run([sys.executable, __file__], input=json.dumps(lines), env=variables, text=True,
                          capture_output=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout.splitlines()[-1])


def main() -> int:
    print(json.dumps([run_one(*line) for line in json.load(sys.stdin)]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
