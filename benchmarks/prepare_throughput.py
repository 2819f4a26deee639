"""prepare throughput on a large BigEarthNet v1 archive built by replicating the real example patches.

python benchmarks/prepare_throughput.py --patches 20000 --root /tmp/ben-20k
Replicas are hard links under new patch names, so 20,000 folders cost little disk. Prints a table of
patches/s and peak RSS per (workers, verify) setting, all measured in this one run.
"""

import argparse
import os
import resource
import shutil
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
EXAMPLE = REPO.parent / "shared" / "data" / "bigearthnet-s2-example"


def replicate(root: Path, patches: int) -> Path:
    archive = root / "archive"
    if archive.exists() and len(os.listdir(archive)) == patches:
        return archive
    shutil.rmtree(archive, ignore_errors=True)
    archive.mkdir(parents=True)
    sources = sorted(p for p in EXAMPLE.iterdir() if p.is_dir())
    for index in range(patches):
        source = sources[index % len(sources)]
        name = f"{source.name}_r{index}"
        folder = archive / name
        folder.mkdir()
        for file in source.iterdir():
            os.link(file, folder / file.name.replace(source.name, name))
    return archive


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--patches", type=int, default=20000)
    parser.add_argument("--root", default="/tmp/geodino-bench")
    parser.add_argument("--settings", nargs="+", default=["2:pixels", "1:pixels", "2:header"],
                        help="WORKERS:VERIFY pairs to time")
    args = parser.parse_args()
    archive = replicate(Path(args.root), args.patches)
    rows = []
    for setting in args.settings:
        workers, verify = setting.split(":")
        out = Path(args.root) / f"meta-{workers}-{verify}.parquet"
        started = time.perf_counter()
        done = subprocess.run([sys.executable, str(REPO / "experiments" / "prepare.py"), str(archive), "--out", str(out),
                               "--workers", workers, "--verify", verify], capture_output=True, text=True,
                              env={**os.environ, "TQDM_DISABLE": "1"})
        seconds = time.perf_counter() - started
        if done.returncode:
            print(done.stderr, file=sys.stderr)
            return done.returncode
        peak_mb = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
        rows.append((workers, verify, seconds, args.patches / seconds, peak_mb))
    print(f"prepare on {args.patches} BigEarthNet v1 patch folders (12 bands each), {os.cpu_count()} cores")
    print(f"{'workers':>7} {'verify':>7} {'seconds':>8} {'patches/s':>10} {'peak RSS MB (max so far)':>25}")
    for workers, verify, seconds, rate, peak in rows:
        print(f"{workers:>7} {verify:>7} {seconds:>8.1f} {rate:>10.0f} {peak:>25.0f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
