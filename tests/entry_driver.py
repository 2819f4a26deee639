"""Run entry scripts' mains in one fresh process, as `python experiments/SCRIPT ARGS` would, for many command
lines at once: one interpreter start instead of one per bad input. Reads [[script, [args...]], ...] as JSON on
stdin; prints, per command line, its exit status, what it wrote to stderr, and whether Ray was started by then.

    python tests/entry_driver.py < cases.json
"""

import contextlib
import importlib
import io
import json
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO / "platform"), str(REPO / "experiments")]

from geodino.cli import run_entry  # noqa: E402


def run_one(script: str, argv: list[str]) -> dict:
    module = importlib.import_module(script.removesuffix(".py"))
    sys.argv[0] = script  # argparse names the program after it, as it does for a real run
    stderr = io.StringIO()
    with contextlib.redirect_stderr(stderr), contextlib.redirect_stdout(io.StringIO()):
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
    return {"status": status, "stderr": stderr.getvalue(), "ray_started": started}


def main() -> int:
    print(json.dumps([run_one(script, argv) for script, argv in json.load(sys.stdin)]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
