"""S3 through a real HTTP endpoint (moto's server on 127.0.0.1, or a throttling one), reached the way users
reach S3: AWS_ENDPOINT_URL, GEODINO_S3_ATTEMPTS and the standard credential chain. Nothing of geodino is
patched in-process; only environment variables are set, as a user would set them."""

import http.server
import json
import threading
from pathlib import Path

import boto3
import numpy as np
import pyarrow.fs as pafs
import pytest
from conftest import BEN_V1_EXAMPLE, BEN_V1_LISTS, FAKE_SECRET, S3_BUCKET, upload_folder

from geodino import storage
from geodino.archive.card import load_card
from geodino.archive.prepare import PrepareConfig, prepare
from geodino.data.config import DataConfig
from geodino.data.ray_data import build_dataset
from geodino.dino.checkpoint import read_checkpoint
from geodino.dino.config import PretrainConfig
from geodino.launch import run_pretraining

TINY = dict(arch="vit_tiny", patch_size=8, out_dim=64, global_crops_size=32, local_crops_size=16,
            local_crops_number=2, warmup_epochs=0, saveckp_freq=1, freeze_last_layer=0, knn_every=0)


@pytest.fixture(scope="module")
def s3_archive(s3_endpoint) -> str:
    uri = f"s3://{S3_BUCKET}/bigearthnet-v1"
    assert upload_folder(BEN_V1_EXAMPLE, uri) > 6 * 12
    return uri


def s3_files(prefix: str) -> list[str]:
    fs, inner = storage.filesystem(prefix)
    infos = fs.get_file_info(pafs.FileSelector(inner, recursive=True, allow_not_found=True))
    return [info.path for info in infos if info.type == pafs.FileType.File]


def test_raster_reads_follow_the_endpoint(s3_archive):
    from geodino.archive.pixels import read_ben_v1

    name = "S2A_MSIL2A_20170613T101031_87_48"
    remote = read_ben_v1(s3_archive, name, name, ("B04", "B11"))
    local = read_ben_v1(str(BEN_V1_EXAMPLE), name, name, ("B04", "B11"))
    np.testing.assert_array_equal(remote, local)


@pytest.mark.timeout(600)
def test_prepare_stream_pretrain_and_resume_on_s3(mlflow_server, ray_session, s3_archive, tmp_path):
    """The archive, the metadata, the run and its checkpoints all on S3: a 12-band run with the
    crops made in Ray Data's tasks (--crops_on data), --limit 2 patches, the k-NN monitor and MLflow; then its
    newest checkpoint is cut short on S3 and the same command with more epochs (a warm restart, Ray Data
    reading every epoch: --cache_data off) goes back to the one before and continues."""
    metadata = f"s3://{S3_BUCKET}/prepared/metadata.parquet"
    result = prepare(PrepareConfig(archive=s3_archive, out=metadata, splits_dir=str(BEN_V1_LISTS),
                                   exclusions_dir=str(BEN_V1_LISTS), workers=1))
    assert result.rows == 6 and result.rejected == 0
    card = load_card(metadata)
    assert card["data_root"] == s3_archive and card["split_source"] == "official lists"

    batch = build_dataset(DataConfig(metadata=metadata, split=None, recommended_only=False)).take_batch(3)
    assert batch["image"].shape == (3, 3, 120, 120) and 0 < batch["image"].mean() < 1

    runs = f"s3://{S3_BUCKET}/runs"
    config = PretrainConfig(**{**TINY, "knn_every": 1}, metadata_dir=metadata, bands="all", normalize="stats",
                            crops_on="data", limit=2, epochs=2, batch_size_per_gpu=1, storage_path=runs,
                            run_name="s3run", output_dir=str(tmp_path / "local"),
                            mlflow_tracking_uri=mlflow_server.url)
    first = run_pretraining(config)
    stored = s3_files(f"{runs}/s3run")
    assert sum(path.endswith("checkpoint.pth") for path in stored) == 2, stored
    assert first.storage_checkpoint.startswith(f"{S3_BUCKET}/runs/s3run")
    state = read_checkpoint(first.checkpoint_dir)
    assert {int(v["step"]) for v in state["optimizer"]["state"].values()} == {4}  # 2 patches, batch 1: 2 steps
    assert state["args"]["in_chans"] == 12 and state["teacher"]["backbone.patch_embed.proj.weight"].shape[1] == 12
    assert state["args"]["inputs"]["rgb"] is False and len(state["args"]["inputs"]["zero_level"]) == 12
    epoch = first.metrics[0]  # the same monitors as an RGB run: entropies, KL, k-NN against random init
    assert epoch["kl"] == pytest.approx(epoch["loss"] - epoch["teacher_entropy"])
    assert 0 < epoch["teacher_batch_entropy"] <= epoch["max_entropy"]
    assert 0 <= epoch["knn_ap"] <= 1 and 0 <= epoch["knn_random_ap"] <= 1

    # The newest checkpoint cut short, as a kill while uploading leaves it (boto3: one GET for the whole object;
    # pyarrow's ranged reads of moto's server take minutes for a 170 MB file)
    bucket, _, key = f"{first.storage_checkpoint}/checkpoint.pth".partition("/")
    s3 = boto3.client("s3")
    whole = s3.get_object(Bucket=bucket, Key=key)["Body"].read()
    s3.put_object(Bucket=bucket, Key=key, Body=whole[:len(whole) // 3])
    resumed = run_pretraining(PretrainConfig(**{**config.__dict__, "epochs": 3, "cache_data": "off"}))
    assert [m["epoch"] for m in resumed.metrics] == [0, 1, 2]
    assert resumed.metrics[0] == first.metrics[0]  # epoch 0 came from the intact checkpoint on S3
    final = read_checkpoint(resumed.checkpoint_dir)
    assert final["epoch"] == 3 and {int(v["step"]) for v in final["optimizer"]["state"].values()} == {6}
    # log.txt and TensorBoard's events live in the run's S3 folder, read back as users read them: TensorBoard's
    # own reader on the s3:// logdir (both sessions' event files), not a local ./runs on the driver. Epoch 1
    # is there twice: its checkpoint was damaged, so it ran again.
    logged = [json.loads(line)["epoch"] for line in storage.read_bytes(f"{runs}/s3run/log.txt").decode().splitlines()]
    assert logged == [0, 1, 1, 2] and not (tmp_path / "local" / "log.txt").exists()
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(f"{runs}/s3run/tensorboard").Reload().Scalars("pretrain/loss")
    assert [event.step for event in events] == [0, 1, 1, 2]
    assert events[-1].value == pytest.approx(resumed.metrics[2]["loss"])
    # --mlflow_tracking_uri: one MLflow run on a real MLflow server (the restart continued it), written by the Ray
    # Train worker over HTTP and read back with MLflow's own client.
    from mlflow.tracking import MlflowClient

    client = MlflowClient(mlflow_server.url)
    [run] = client.search_runs([client.get_experiment_by_name("geodino").experiment_id])
    assert run.info.run_name == "s3run" and run.info.status == "FINISHED"
    assert run.data.params["bands"] == "all" and run.data.params["arch"] == "vit_tiny"
    knn = client.get_metric_history(run.info.run_id, "knn_ap")
    assert sorted(m.step for m in knn) == [0, 1, 1, 2]
    assert max(knn, key=lambda m: (m.step, m.timestamp)).value == pytest.approx(resumed.metrics[2]["knn_ap"])

    # The credentials reached S3 through the standard chain; none of what the run wrote holds them.
    written = [p for folder in (tmp_path, mlflow_server.folder) for p in Path(folder).rglob("*") if p.is_file()]
    leaks = [str(p) for p in written if FAKE_SECRET.encode() in p.read_bytes()]
    # one GET per object with boto3 (above): pyarrow's ranged reads of moto are slow for 170 MB
    for path in s3_files(f"s3://{S3_BUCKET}"):
        bucket, _, key = path.partition("/")
        if FAKE_SECRET.encode() in s3.get_object(Bucket=bucket, Key=key)["Body"].read():
            leaks.append("s3://" + path)
    assert not leaks
    assert json.dumps(read_checkpoint(resumed.checkpoint_dir)["args"]).find(FAKE_SECRET) == -1


class Throttling(http.server.BaseHTTPRequestHandler):
    """An S3 endpoint that answers every request with 503 SlowDown and logs it: what an overloaded S3 does."""

    requests: list[str] = []

    def do_GET(self):  # noqa: N802 (http.server's name)
        Throttling.requests.append(self.path)
        body = b"<Error><Code>SlowDown</Code><Message>Reduce your request rate.</Message></Error>"
        self.send_response(503)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    do_HEAD = do_PUT = do_POST = do_GET

    def log_message(self, *args):
        pass


def test_a_throttling_s3_is_retried_the_configured_number_of_times_then_named(monkeypatch):
    """Retries counted in the endpoint's own request log (no timing); then an error naming object and endpoint."""
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Throttling)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    endpoint = f"http://127.0.0.1:{server.server_address[1]}"
    monkeypatch.setenv("AWS_ENDPOINT_URL", endpoint)  # configured the way users configure it
    monkeypatch.setenv("GEODINO_S3_ATTEMPTS", "3")
    Throttling.requests.clear()
    try:
        with pytest.raises(OSError, match=rf"s3://geodino-test/prepared/metadata.json: cannot read "
                                          rf"\(S3 endpoint {endpoint}, 3 attempts with backoff\)"):
            storage.read_bytes(f"s3://{S3_BUCKET}/prepared/metadata.json")
        assert len(Throttling.requests) == 3 and all("metadata.json" in path for path in Throttling.requests)
    finally:
        server.shutdown()
    monkeypatch.setenv("AWS_ENDPOINT_URL", "http://127.0.0.1:9")  # nothing listens: a write fails, named
    with pytest.raises(OSError, match="cannot write.*previous version, if any, is unchanged"):
        storage.write_bytes_atomic(f"s3://{S3_BUCKET}/prepared/new.json", b"{}")
    # the first question a run asks of its --storage_path: a pyarrow traceback before (55 s without network)
    from geodino.errors import GeodinoError

    with pytest.raises(GeodinoError, match=r"s3://geodino-test/runs/settings.json: cannot reach it \(S3 endpoint "
                                           r"http://127.0.0.1:9, 3 attempts with backoff\).*check the network"):
        storage.exists(f"s3://{S3_BUCKET}/runs/settings.json")


def test_a_short_s3_outage_is_ridden_out_by_retries(s3_endpoint):
    """The endpoint goes away for 1.5 s while a read starts: the retries get the object once it is back."""
    uri = f"s3://{S3_BUCKET}/outage/object.bin"
    storage.write_bytes_atomic(uri, b"payload")
    s3_endpoint.stop()
    restart = threading.Timer(1.5, s3_endpoint.start)
    restart.start()
    try:
        assert storage.read_bytes(uri) == b"payload"  # without retries this read fails at once: nothing listens
    finally:
        restart.join()


def test_pack_on_s3_is_read_by_ray_data_like_the_geotiffs(ray_session, s3_archive):
    """prepare --pack from s3:// to s3://: shards written by parallel processes, streamed back by Ray Data."""
    from geodino.archive.pack import PackConfig, pack

    metadata = f"s3://{S3_BUCKET}/packed/metadata.parquet"
    prepare(PrepareConfig(archive=s3_archive, out=metadata, workers=1))
    everything = dict(metadata=metadata, split=None, recommended_only=False)
    from_files = build_dataset(DataConfig(**everything)).take_batch(6)
    result = pack(PackConfig(metadata=metadata, out_dir=f"s3://{S3_BUCKET}/packed/rgb", shard_size=4, workers=2))
    assert (result.shards, result.written) == (2, 2)
    assert sorted(p.rsplit("/", 1)[1] for p in s3_files(f"s3://{S3_BUCKET}/packed/rgb")) == [
        "pack.json", "shard-00000.parquet", "shard-00001.parquet"]
    assert load_card(metadata)["packed"] == f"s3://{S3_BUCKET}/packed/rgb"
    from_pack = build_dataset(DataConfig(**everything)).take_batch(6)
    by_name = {name: image for name, image in zip(from_files["name"], from_files["image"])}
    for name, image in zip(from_pack["name"], from_pack["image"]):
        np.testing.assert_allclose(image, by_name[name], atol=1e-6)
    assert pack(PackConfig(metadata=metadata, out_dir=f"s3://{S3_BUCKET}/packed/rgb", shard_size=4)).written == 0


def test_a_table_and_a_folder_of_images_on_s3_are_prepared_as_they_are_here(s3_endpoint, tmp_path):
    """EuroSAT JPEGs in class folders on S3, with their table (paths relative to it, and s3:// URIs as a script
    writes them): prepared where they lie, the same rows and pixels as from the same files here. Before, the
    table's folder was taken for a local path (`.../s3:/geodino-test/...`) and every row was rejected, and the
    folder was read as a BigEarthNet archive (`no usable patch ... label file ... missing`)."""
    import shutil

    import pandas as pd
    from conftest import EUROSAT

    from geodino.archive.card import OutputError
    from geodino.data.indexed import labelled_images
    from geodino.errors import GeodinoError, MissingInputError

    local = tmp_path / "eurosat"
    table = pd.read_csv(EUROSAT / "labels.csv").groupby("label").head(2)  # 20 images, 10 classes
    for path in table["path"]:
        (local / path).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(EUROSAT / path, local / path)
    uri = f"s3://{S3_BUCKET}/eurosat"
    table.to_csv(local / "labels.csv", index=False)
    table.assign(path=[f"{uri}/{path}" for path in table["path"]]).to_csv(local / "uris.csv", index=False)
    assert upload_folder(local, uri) == len(table) + 2
    here = prepare(PrepareConfig(archive=str(local / "labels.csv"), out=str(tmp_path / "here.parquet"), workers=1))
    expected, _ = labelled_images(DataConfig(metadata=here.metadata_path, split=None))
    for name, archive in (("relative", f"{uri}/labels.csv"), ("uris", f"{uri}/uris.csv"),
                          ("folder", f"{uri}/images")):
        result = prepare(PrepareConfig(archive=archive, out=str(tmp_path / f"{name}.parquet"), workers=1))
        assert (result.rows, result.rejected) == (len(table), 0), name
        card = load_card(result.metadata_path)
        assert card["data_root"] == (uri if name == "relative" else f"{uri}/images"), name  # where all images are
        assert card["classes"] == sorted(table["label"].unique())
        images, _ = labelled_images(DataConfig(metadata=result.metadata_path, split=None))
        assert np.array_equal(images, expected), name  # read from S3: the same pixels, in the same order
    with pytest.raises(MissingInputError, match=r"s3://.*/labels-typo.csv: no such object or prefix \(S3 endpoint"):
        prepare(PrepareConfig(archive=f"{uri}/labels-typo.csv", out=str(tmp_path / "typo.parquet"), workers=1))
    # a bucket that is not there: named before anything is parsed; any write there is one line of geodino's
    with pytest.raises(OutputError, match=r"--out s3://no-such-bucket/m.parquet: the bucket s3://no-such-bucket is"):
        prepare(PrepareConfig(archive=f"{uri}/labels.csv", out="s3://no-such-bucket/m.parquet", workers=1))
    with pytest.raises(GeodinoError, match=r"s3://no-such-bucket/runs/settings.json: cannot write \(S3 endpoint"):
        storage.write_bytes_atomic("s3://no-such-bucket/runs/settings.json", b"{}")  # before: an OSError traceback


def test_scenes_on_s3_are_cut_into_the_same_tiles_as_here(s3_endpoint, tmp_path):
    """tile.py on an S3 folder of scenes (a 4-band GeoTIFF and one scene's 12 band files, real BigEarthNet
    pixels), read where they lie through GDAL: the same tiles, value for value, as from the same files here.
    Before, an S3 folder was taken for one file: `cannot read the scene`."""
    import shutil
    import subprocess
    import sys

    import rasterio
    from conftest import BEN_V1_NPZ, REPO

    local = tmp_path / "scenes"
    local.mkdir()
    patch = sorted(path for path in BEN_V1_EXAMPLE.iterdir() if path.is_dir())[0]
    for band_file in patch.glob("*_B*.tif"):
        shutil.copy(band_file, local / band_file.name)
    quarters = [np.stack([np.load(path)[band] for band in ("B04", "B03", "B02", "B08")])
                for path in sorted((BEN_V1_NPZ / "patches").glob("*.npz"))[:4]]
    with rasterio.open(local / "T32UNA.tif", "w", driver="GTiff", width=240, height=240, count=4, dtype="uint16",
                       crs="EPSG:32632", transform=rasterio.Affine(10, 0, 500000, 0, -10, 5600000)) as dst:
        dst.write(np.block([[quarters[0], quarters[1]], [quarters[2], quarters[3]]]))
    uri = f"s3://{S3_BUCKET}/scenes"
    assert upload_folder(local, uri) == 13
    script = [sys.executable, str(REPO / "experiments" / "tile.py")]
    for source, out in ((uri, "from_s3"), (str(local), "from_here")):
        done = subprocess.run(script + [source, "--out", out, "--size", "60"], capture_output=True, text=True,
                              cwd=tmp_path)
        assert done.returncode == 0, done.stderr
        assert "wrote 20 tiles of 60 px" in done.stdout  # 4 of the 120 px patch's 12 bands, 16 of the scene
    names = sorted(path.name for path in (tmp_path / "from_here").glob("*.tif"))
    assert names == sorted(path.name for path in (tmp_path / "from_s3").glob("*.tif")) and len(names) == 20
    for name in names:
        with rasterio.open(tmp_path / "from_here" / name) as here, rasterio.open(tmp_path / "from_s3" / name) as s3:
            assert np.array_equal(here.read(), s3.read()) and here.transform == s3.transform
            assert here.descriptions == s3.descriptions
