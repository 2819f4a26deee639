"""Bring Ray to a GPU machine that has PyTorch but no Ray and no network, as one archive under 64 MiB.

Why: the lent GPU machines (and many locked-down clusters) have torch, timm, pyarrow and pandas but no Ray,
and cannot fetch it, so Ray Train had never run DINO on a GPU here. Ray's wheel is 70 MB compressed and
240 MB installed, mostly Java jars, RLlib, Serve, LLM serving and the dashboard's web client, which a Ray
Train + Ray Data job does not import.

On a machine with PyPI (once per Ray version and target Python):
    python cluster/gpu/bring_ray.py pack --python 3.12 --out ray-py312.tar.xz
On the GPU machine (no network):
    python cluster/gpu/bring_ray.py unpack ray-py312.tar.xz --into .ray-site
    export PYTHONPATH=$PWD/.ray-site:$PYTHONPATH RAY_AUTH_MODE=disabled
    python cluster/gpu/bring_ray.py check          # imports Ray Train and Ray Data, starts and stops Ray
`pack` downloads binary wheels for the target (no install, no build), unzips them into one folder, drops
the parts named in DROPPED, and compresses with xz. Only packages the machine may lack are bundled
(BUNDLED); everything else (numpy, pyarrow, pandas, grpcio, protobuf, msgpack, pyyaml, requests, click,
filelock, aiohttp, fsspec) is expected there: `check` names any that is missing. rasterio is not bundled
(its wheel carries GDAL, 25 MB): pretrain from a pack (prepare --pack), which needs no GeoTIFF reader.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import sys
import tarfile
import tempfile
import zipfile
from pathlib import Path

# Ray with what Ray Train/Tune/Data import beyond a PyTorch image's usual packages. Versions follow the
# project's constraints file when it pins them, so the bundle is the Ray the tests ran.
BUNDLED = ("ray", "jsonschema", "jsonschema-specifications", "referencing", "rpds-py", "pydantic", "pydantic-core",
           "annotated-types", "typing-inspection", "tensorboardX")
# Parts of the Ray wheel a Ray Train + Ray Data job never imports (paths inside site-packages).
DROPPED = ("ray/jars", "ray/rllib", "ray/serve", "ray/llm", "ray/dashboard/client", "ray/tests",
           "ray/core/src/ray/raylet/raylet.debug", "ray/cpp")
CONSTRAINTS = Path(__file__).resolve().parents[2] / "constraints.txt"


def pinned(names: tuple[str, ...], constraints: Path) -> list[str]:
    """name==version for each name the constraints file pins, else the bare name."""
    pins = {}
    if constraints.exists():
        for line in constraints.read_text().splitlines():
            if "==" in line:
                name, version = line.split("==", 1)
                pins[name.strip().lower().replace("_", "-")] = version.strip()
    return [f"{name}=={pins[name.lower()]}" if name.lower() in pins else name for name in names]


class UsageError(Exception):
    """A mistake in the command line or its files: one line, exit status 2, nothing written."""


PACK_MARK = "./ray/__init__.py"  # every archive pack writes holds it


def is_pack(path: Path) -> bool:
    """An archive pack wrote (a tar.xz holding Ray); reading its index takes seconds, as it is compressed whole."""
    try:
        with tarfile.open(path, "r:xz") as archive:
            archive.getmember(PACK_MARK)
        return True
    except (tarfile.TarError, KeyError, OSError, EOFError):
        return False


def check_pack_flags(python: str, out: Path) -> None:
    if not re.fullmatch(r"3\.\d{1,2}", python):
        raise UsageError(f"--python {python!r}: give the GPU machine's Python as major.minor, e.g. 3.12")
    if not out.parent.is_dir():
        raise UsageError(f"--out {out}: no folder {out.parent} to write it in")
    if out.is_dir() or (out.exists() and not is_pack(out)):
        raise UsageError(f"--out {out}: already there and not an archive pack wrote, which it does not replace; "
                         "choose another --out or move it away")


def pack(python: str, platform: str, out: Path, work: Path) -> Path:
    check_pack_flags(python, out)
    wheels, site = work / "wheels", work / "site"
    requirements = pinned(BUNDLED, CONSTRAINTS)
    download = subprocess.run([sys.executable, "-m", "pip", "download", "--quiet", "--no-deps", "--only-binary=:all:",
                               "--python-version", python, "--platform", platform, "--dest", str(wheels),
                               *requirements], capture_output=True, text=True)
    if download.returncode != 0:
        said = [line for line in download.stderr.splitlines() if line.startswith("ERROR:")] or [
            download.stderr.strip().splitlines()[-1] if download.stderr.strip() else f"exit {download.returncode}"]
        raise UsageError(f"pip found no wheels for Python {python} on {platform} ({said[-1]}); check --python, "
                         "--platform and that this machine reaches the package index")
    for wheel in sorted(wheels.glob("*.whl")):
        extract_wheel(wheel, site)
    for path in DROPPED:
        shutil.rmtree(site / path, ignore_errors=True)
        (site / path).unlink(missing_ok=True)
    for cache in site.rglob("__pycache__"):
        shutil.rmtree(cache, ignore_errors=True)
    for binary in site.rglob("*.so"):  # debug symbols are most of Ray's shared objects' size
        subprocess.run(["strip", "--strip-debug", str(binary)], check=False, capture_output=True)
    partial = out.with_name(out.name + ".partial")  # an interrupted pack leaves no archive that looks whole
    with tarfile.open(partial, "w:xz", preset=9) as archive:
        archive.add(site, arcname=".")
    os.replace(partial, out)
    return out


def extract_wheel(wheel: Path, site: Path) -> None:
    """Unzip a wheel keeping its files' modes: zipfile drops them, and Ray's gcs_server and raylet are programs."""
    with zipfile.ZipFile(wheel) as archive:
        for info in archive.infolist():
            path = Path(archive.extract(info, site))
            mode = info.external_attr >> 16
            if mode and not info.is_dir():
                path.chmod(mode & 0o777)


def unpack(archive: Path, into: Path) -> None:
    if not archive.is_file():
        raise UsageError(f"{archive}: no such file; give the .tar.xz that `bring_ray.py pack` wrote")
    if not is_pack(archive):
        raise UsageError(f"{archive}: not an archive `bring_ray.py pack` wrote (no {PACK_MARK.lstrip('./')} in a "
                         "tar.xz); make one with pack on a machine with the package index")
    if into.exists() and not into.is_dir():
        raise UsageError(f"--into {into}: a file, not a folder")
    into.mkdir(parents=True, exist_ok=True)
    with tarfile.open(archive) as bundle:
        bundle.extractall(into, filter="tar")


EXPECTED = ("numpy", "pyarrow", "pandas", "grpc", "google.protobuf", "msgpack", "yaml", "requests", "click",
            "filelock", "aiohttp", "fsspec", "torch")


def check() -> int:
    """Import what geodino's Ray launcher imports, start Ray, run one Ray Data task, stop Ray."""
    import importlib

    missing = []
    for name in EXPECTED:
        try:
            importlib.import_module(name)
        except ImportError:
            missing.append(name)
    if missing:
        print(f"missing on this machine (carry them as wheels too): {', '.join(missing)}", file=sys.stderr)
        return 2
    import ray
    import ray.data
    import ray.train.torch  # noqa: F401

    ray.init(num_cpus=1, include_dashboard=False, log_to_driver=False)
    rows = ray.data.range(8).map_batches(lambda batch: {"id": batch["id"] * 2}).take_all()
    ray.shutdown()
    assert sorted(row["id"] for row in rows) == list(range(0, 16, 2))
    print(f"ray {ray.__version__} from {Path(ray.__file__).parent}: Ray Train and Ray Data import, Ray starts")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    commands = parser.add_subparsers(dest="command", required=True)
    packing = commands.add_parser("pack", help="download and slim Ray for a target Python into a tar.xz")
    packing.add_argument("--python", default="3.12", help="the GPU machine's Python, major.minor (default: 3.12)")
    packing.add_argument("--platform", default="manylinux2014_x86_64", help="wheel platform tag")
    packing.add_argument("--out", required=True, help="the archive to write, e.g. ray-py312.tar.xz")
    unpacking = commands.add_parser("unpack", help="extract an archive made by pack into a folder for PYTHONPATH")
    unpacking.add_argument("archive")
    unpacking.add_argument("--into", default=".ray-site")
    commands.add_parser("check", help="import and start Ray from PYTHONPATH")
    args = parser.parse_args(argv)
    try:
        return run_command(args)
    except UsageError as error:
        print(f"bring_ray.py: error: {error}", file=sys.stderr)
        return 2


def run_command(args: argparse.Namespace) -> int:
    if args.command == "pack":
        with tempfile.TemporaryDirectory() as work:
            out = pack(args.python, args.platform, Path(args.out), Path(work))
        print(f"{out}: {out.stat().st_size / 2**20:.1f} MiB")
        return 0
    if args.command == "unpack":
        unpack(Path(args.archive), Path(args.into))
        print(f"export PYTHONPATH={Path(args.into).resolve()}:$PYTHONPATH RAY_AUTH_MODE=disabled")
        return 0
    return check()


if __name__ == "__main__":
    sys.exit(main())
