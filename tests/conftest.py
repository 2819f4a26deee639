"""Shared fixtures: the real data in ../shared/data, and one Ray instance for the whole session."""

import logging
import os
import shutil
import socket
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("SAGEMAKER_VALIDATE_ROLE", "false")
os.environ.setdefault("RAY_AUTH_MODE", "disabled")
os.environ.setdefault("RAY_DATA_DISABLE_PROGRESS_BARS", "1")
os.environ.setdefault("TQDM_DISABLE", "1")
# Ray Train's own knobs, set before any Ray starts so every worker, `ray start` and entry script inherits them.
# Each Ray Train run here is seconds of training inside ~30 s of start-up, so two fixed costs matter: the controller
# notices a finished worker group only at its next health check (every 2 s by default), and a PreemptionWatcher
# actor (a process of its own, ~4 s to start on 2 cores) watches for node drains that a single machine never has.
# Measured on one 1-epoch run: 40 s -> 32 s. Users' runs keep Ray's defaults.
os.environ.setdefault("RAY_TRAIN_HEALTH_CHECK_INTERVAL_S", "0.5")
os.environ.setdefault("RAY_TRAIN_ENABLE_PREEMPTION_WATCHER", "0")


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


# S3 is a real HTTP endpoint (moto's server, started on first use) given the way users give one:
# through the standard variables, set before Ray starts so that its workers inherit them. The secret is
# distinctive so that tests can search every written file for it.
FAKE_SECRET = "geodino-fake-secret-must-never-be-written"
os.environ["AWS_ACCESS_KEY_ID"] = "AKIAGEODINOTESTKEY01"
os.environ["AWS_SECRET_ACCESS_KEY"] = FAKE_SECRET
os.environ["AWS_DEFAULT_REGION"] = "us-east-1"
os.environ["AWS_ENDPOINT_URL"] = f"http://127.0.0.1:{free_port()}"
os.environ.pop("AWS_PROFILE", None)
os.environ.pop("AWS_SESSION_TOKEN", None)

import pytest  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = Path(os.environ.get("GEODINO_SHARED_DATA", REPO.parent / "shared" / "data"))
BEN_V1_EXAMPLE = SHARED_DATA / "bigearthnet-s2-example"
BEN_V1_LISTS = SHARED_DATA / "bigearthnet-v1-metadata"
BEN_V1_NPZ = SHARED_DATA / "bigearthnet-v1-configilm-mock"
BEN_V2 = SHARED_DATA / "bigearthnet-v2-configilm-mock"
EUROSAT = SHARED_DATA / "eurosat-rgb-subset"
S3_BUCKET = "geodino-test"


def pytest_configure(config):
    if not BEN_V1_EXAMPLE.is_dir():
        raise pytest.UsageError(f"real test data not found at {SHARED_DATA}; set GEODINO_SHARED_DATA")


@pytest.fixture(scope="session")
def ray_session():
    """One local Ray instance (2 CPUs, like this machine) for every test that needs Ray."""
    import ray

    if not ray.is_initialized():
        ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    from ray.data import DataContext

    DataContext.get_current().enable_progress_bars = False
    yield ray


@pytest.fixture(scope="session")
def s3_endpoint():
    """moto's S3 server on 127.0.0.1 at AWS_ENDPOINT_URL, with a bucket `geodino-test`; yields the server."""
    from urllib.parse import urlparse

    import boto3
    from moto.server import ThreadedMotoServer

    logging.getLogger("werkzeug").setLevel(logging.WARNING)  # one line per request otherwise
    url = urlparse(os.environ["AWS_ENDPOINT_URL"])
    server = ThreadedMotoServer(ip_address=url.hostname, port=url.port, verbose=False)
    server.start()
    boto3.client("s3").create_bucket(Bucket=S3_BUCKET)
    yield server
    server.stop()


class MlflowServer:
    """A real `mlflow server` (SQLite store) on 127.0.0.1, started in the background: `url` waits until it answers,
    so a test prepares its data while the server starts (about 12 s on 2 cores)."""

    def __init__(self, folder: Path):
        import subprocess
        import sys

        self.folder = folder
        self.address = f"http://127.0.0.1:{free_port()}"
        port = self.address.rsplit(":", 1)[1]
        self.process = subprocess.Popen(
            [str(Path(sys.executable).parent / "mlflow"), "server", "--host", "127.0.0.1", "--port", port,
             "--workers", "1", "--backend-store-uri", f"sqlite:///{folder / 'mlflow.db'}"],
            cwd=folder, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)

    @property
    def url(self) -> str:
        import time
        import urllib.request

        deadline = time.monotonic() + 120
        while True:
            try:
                with urllib.request.urlopen(f"{self.address}/health", timeout=2):
                    return self.address
            except OSError:
                if self.process.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"mlflow server did not start (exit {self.process.poll()})") from None
                time.sleep(0.3)

    def stop(self) -> None:
        import signal

        os.killpg(self.process.pid, signal.SIGTERM)  # the server, its uvicorn worker and its job consumers
        self.process.wait(timeout=30)


@pytest.fixture
def mlflow_server(tmp_path_factory):
    server = MlflowServer(tmp_path_factory.mktemp("mlflow"))
    yield server
    server.stop()


def upload_folder(local: Path, uri: str) -> int:
    """Copy a local folder to s3://bucket/prefix with boto3 (the way users upload); returns the file count."""
    import boto3

    bucket, _, prefix = uri[len("s3://"):].partition("/")
    client = boto3.client("s3")
    count = 0
    for path in sorted(local.rglob("*")):
        if path.is_file():
            client.upload_file(str(path), bucket, f"{prefix}/{path.relative_to(local).as_posix()}")
            count += 1
    return count


@pytest.fixture
def ben_v1_copy(tmp_path) -> Path:
    """A writable copy of the 6 real BigEarthNet v1 patches, for tests that break files."""
    target = tmp_path / "archive"
    shutil.copytree(BEN_V1_EXAMPLE, target, ignore=shutil.ignore_patterns("SOURCE.md"))
    for path in target.rglob("*"):
        path.chmod(0o644 if path.is_file() else 0o755)
    return target


@pytest.fixture(scope="session")
def ben_v1_metadata(tmp_path_factory) -> Path:
    """The 6 real patches prepared with the official split and exclusion lists."""
    from geodino.archive.prepare import PrepareConfig, prepare

    out = tmp_path_factory.mktemp("ben-v1") / "metadata.parquet"
    prepare(PrepareConfig(archive=str(BEN_V1_EXAMPLE), out=str(out), splits_dir=str(BEN_V1_LISTS),
                          exclusions_dir=str(BEN_V1_LISTS), workers=1))
    return out


@pytest.fixture(scope="session")
def eurosat_metadata(tmp_path_factory) -> str:
    """80 real EuroSAT training images, all 10 classes, prepared: the pretraining tests' small archive."""
    import pandas as pd

    from geodino.archive.prepare import PrepareConfig, prepare

    folder = tmp_path_factory.mktemp("eurosat")
    table = pd.read_csv(EUROSAT / "labels.csv")
    table = table[table["split"] == "train"].groupby("label").head(8)
    table.to_csv(folder / "train.csv", index=False)
    result = prepare(PrepareConfig(archive=str(folder / "train.csv"), out=str(folder / "metadata.parquet"),
                                   data_dir=str(EUROSAT), workers=1))
    return result.metadata_path


@pytest.fixture(scope="session")
def ben30_metadata(tmp_path_factory) -> Path:
    """The 30 real multi-label BigEarthNet patches (14 of the 19 classes) written back in the native layout
    by benchmarks/ben_npz_archive.py, prepared with their own 10/10/10 train/val/test lists."""
    import sys

    from geodino.archive.prepare import PrepareConfig, prepare

    sys.path.insert(0, str(REPO / "benchmarks"))
    import ben_npz_archive

    archive = tmp_path_factory.mktemp("ben30") / "archive"
    ben_npz_archive.write_npz_patches(archive)
    out = archive.parent / "metadata.parquet"
    prepare(PrepareConfig(archive=str(archive), out=str(out), splits_dir=str(BEN_V1_NPZ), workers=1))
    return out


@pytest.fixture(scope="session")
def ray_address(ray_session) -> str:
    """The test session's Ray, for entry scripts run as subprocesses: they join it through RAY_ADDRESS (as jobs
    submitted to a cluster do) instead of each starting a Ray of their own."""
    return ray_session.get_runtime_context().gcs_address


def load_module(path: Path, name: str):
    """A script or tool loaded from its file: experiments/ and tools/ are folders of scripts, not packages."""
    import importlib.util

    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module
