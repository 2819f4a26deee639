"""SageMaker jobs built by the real sagemaker SDK, captured before they are sent; the entry point run
for real as a two-"host" job on 127.0.0.1."""

import json
import os
import re
import shutil
import subprocess
import sys
import tempfile

import boto3
import pytest
from conftest import FAKE_SECRET, REPO, S3_BUCKET, free_port

from geodino.launch.sagemaker_job import (
    CHECKPOINT_LOCAL_PATH,
    JobRequestError,
    SageMakerJobConfig,
    job_request,
    validate,
)

ROLE = "arn:aws:iam::123456789012:role/geodino-training"
PRETRAIN = dict(role=ROLE, metadata=f"s3://{S3_BUCKET}/prepared", train=f"s3://{S3_BUCKET}/BigEarthNet-v1.0",
                output_path=f"s3://{S3_BUCKET}/jobs")


def channels(request: dict) -> dict:
    return {c["ChannelName"]: c for c in request["InputDataConfig"]}


def test_dry_run_builds_an_smddp_job_and_sends_nothing(monkeypatch):
    # An endpoint nothing listens on: had the dry run sent a request, it would fail.
    monkeypatch.setenv("AWS_ENDPOINT_URL", "http://127.0.0.1:9")
    config = SageMakerJobConfig(**PRETRAIN, instance_type="ml.p4d.24xlarge", instance_count=2, backend="smddp",
                                spot=True, max_run_hours=10, dino_checkpoint=f"s3://{S3_BUCKET}/init",
                                hyperparameters={"arch": "vit_small", "epochs": "100", "batch_size_per_gpu": "64"},
                                dry_run=True, job_name="geodino-pretrain-a")
    result = job_request(config)
    request = result["CreateTrainingJob"]

    assert request["ResourceConfig"] == {"InstanceType": "ml.p4d.24xlarge", "InstanceCount": 2, "VolumeSizeInGB": 100}
    assert request["HyperParameters"] == {"arch": "vit_small", "epochs": "100", "batch_size_per_gpu": "64",
                                          "task": "pretrain", "backend": "smddp", "checkpoint_dir": CHECKPOINT_LOCAL_PATH}
    found = channels(request)
    assert set(found) == {"metadata", "train", "dino_checkpoint", "code", "sm_drivers"}
    assert found["train"]["DataSource"]["S3DataSource"]["S3Uri"] == PRETRAIN["train"]
    assert found["train"]["InputMode"] == "FastFile"
    assert request["CheckpointConfig"] == {"S3Uri": f"s3://{S3_BUCKET}/jobs/geodino-pretrain-a/checkpoints",
                                           "LocalPath": CHECKPOINT_LOCAL_PATH}
    assert request["EnableManagedSpotTraining"] is True
    assert request["StoppingCondition"] == {"MaxRuntimeInSeconds": 36000, "MaxWaitTimeInSeconds": 72000}
    assert re.fullmatch(r"763104351884\.dkr\.ecr\.us-east-1\.amazonaws\.com/pytorch-training:[\d.]+-gpu-py3\d+",
                        request["AlgorithmSpecification"]["TrainingImage"])
    uploads = [call for call in result["dry_run_calls"] if call.startswith("s3.PutObject")]
    assert any(call.endswith("/code/experiments/sagemaker_entry.py") for call in uploads)
    assert any(call.endswith("/sm_drivers/distributed.json") for call in uploads)  # MPI: SMDDP's launcher
    assert not any("/code/.venv/" in call or "/code/tests/" in call for call in uploads)
    # Large files in a checkout go up in parts; every call was answered locally either way.
    assert {call.split()[0] for call in result["dry_run_calls"]} <= {
        "s3.ListBuckets", "iam.SimulatePrincipalPolicy", "s3.PutObject", "s3.CreateMultipartUpload", "s3.UploadPart",
        "s3.CompleteMultipartUpload", "sts.GetCallerIdentity"}
    assert FAKE_SECRET not in json.dumps(result) and os.environ["AWS_ACCESS_KEY_ID"] not in json.dumps(result)

    # Each job gets a fresh checkpoint folder unless one is given to resume from.
    again = job_request(SageMakerJobConfig(**{**config.__dict__, "job_name": "geodino-pretrain-b"}))
    assert again["CreateTrainingJob"]["CheckpointConfig"]["S3Uri"].endswith("/geodino-pretrain-b/checkpoints")


def test_multi_host_ray_job_checkpoints_straight_to_s3(monkeypatch):
    monkeypatch.setenv("AWS_ENDPOINT_URL", "http://127.0.0.1:9")
    request = job_request(SageMakerJobConfig(**PRETRAIN, instance_type="ml.g5.12xlarge", instance_count=3,
                                             dry_run=True, job_name="j"))["CreateTrainingJob"]
    assert request["HyperParameters"]["storage_path"] == f"s3://{S3_BUCKET}/jobs/j/checkpoints"
    assert "checkpoint_dir" not in request["HyperParameters"]
    assert "distributed.json" not in json.dumps(request)


def test_real_submission_uploads_code_to_s3_and_stops_at_create_training_job(s3_endpoint):
    config = SageMakerJobConfig(role=ROLE, task="probe", instance_type="ml.g5.xlarge", metadata=PRETRAIN["metadata"],
                                dino_checkpoint=f"s3://{S3_BUCKET}/runs/final", output_path=PRETRAIN["output_path"],
                                hyperparameters={"arch": "vit_small", "epochs": "50"}, job_name="probe-job")
    request = job_request(config)["CreateTrainingJob"]
    code = channels(request)["code"]["DataSource"]["S3DataSource"]["S3Uri"]
    key = code[len(f"s3://{S3_BUCKET}/"):] + "/experiments/sagemaker_entry.py"
    uploaded = boto3.client("s3").get_object(Bucket=S3_BUCKET, Key=key)["Body"].read()
    assert uploaded == (REPO / "experiments" / "sagemaker_entry.py").read_bytes()
    assert request["HyperParameters"] == {"arch": "vit_small", "epochs": "50", "task": "probe", "backend": "nccl"}


@pytest.mark.parametrize("change, message", [
    (dict(backend="smddp", instance_type="ml.g5.48xlarge"), "SMDDP does not support ml.g5.48xlarge.*--backend nccl"),
    (dict(backend="smddp", task="probe", instance_type="ml.p4d.24xlarge"), "probe runs on one GPU"),
    (dict(role=None), "--role is required"),
    (dict(train="/data/BigEarthNet"), "--train must be an s3:// URI"),
    (dict(output_path=None), "--output_path"),
    (dict(spot=True, max_wait_hours=1.0), "max_wait_hours must be at least"),
    (dict(hyperparameters={"aws_secret_access_key": "x"}), "look like credentials"),
])
def test_requests_sagemaker_would_reject_fail_here_first(change, message):
    config = SageMakerJobConfig(**{**PRETRAIN, **change})
    with pytest.raises(JobRequestError, match=message):
        validate(config)
        job_request(SageMakerJobConfig(**{**config.__dict__, "dry_run": True}))


def test_host_requirements_pin_what_constraints_pin():
    pins = dict(line.split("==") for line in (REPO / "constraints.txt").read_text().split() if "==" in line)
    for line in (REPO / "cluster" / "sagemaker" / "requirements.txt").read_text().splitlines():
        if line and not line.startswith("#"):
            name, version = line.split("==")
            assert pins[name.split("[")[0]] == version, line


def test_submit_script_dry_run_prints_the_request(monkeypatch):
    env = {**os.environ, "AWS_ENDPOINT_URL": "http://127.0.0.1:9", "PYTHONPATH": str(REPO / "platform")}
    out = subprocess.run([sys.executable, str(REPO / "experiments" / "submit_sagemaker.py"), "pretrain", "--role", ROLE,
                          "--metadata", PRETRAIN["metadata"], "--output_path", PRETRAIN["output_path"],
                          "--instance_type", "ml.g5.2xlarge", "--dry_run", "--", "--arch", "vit_tiny",
                          "--global_crops_scale", "0.3", "1.0"], env=env, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    request = json.loads(out.stdout)["CreateTrainingJob"]
    assert request["HyperParameters"]["global_crops_scale"] == "0.3 1.0"
    typo = subprocess.run([sys.executable, str(REPO / "experiments" / "submit_sagemaker.py"), "pretrain", "--role",
                           ROLE, "--metadata", PRETRAIN["metadata"], "--output_path", PRETRAIN["output_path"],
                           "--dry_run", "--", "--ecpochs", "3"], env=env, capture_output=True, text=True, timeout=120)
    assert typo.returncode == 2 and "--ecpochs" in typo.stderr


@pytest.mark.timeout(600)
def test_entry_point_runs_a_two_host_job_on_one_machine(ben_v1_metadata, tmp_path):
    """Two processes with SageMaker's environment form a Ray cluster, pretrain 1 epoch with gloo, and exit 0."""
    hosts = ["127.0.0.1", "localhost"]  # two names for this machine, as algo-1 and algo-2 would be
    port = free_port()
    # Not /tmp/ray: `ray start` records its cluster there, and the next local ray.init() would try to join it.
    ray_temp = tempfile.mkdtemp(prefix="ray-sm-", dir="/tmp")  # short: Ray's socket paths must fit 107 bytes
    hyperparameters = ["--task", "pretrain", "--backend", "gloo", "--arch", "vit_tiny", "--patch_size", "8",
                       "--out_dim", "64", "--global_crops_size", "32", "--local_crops_size", "16",
                       "--local_crops_number", "2", "--epochs", "1", "--batch_size_per_gpu", "1", "--num_workers", "2",
                       "--warmup_epochs", "0", "--saveckp_freq", "1", "--checkpoint_dir", str(tmp_path / "checkpoints"),
                       "--run_name", "sm"]
    processes = []
    for host in hosts:
        config = tmp_path / f"{host}-resourceconfig.json"
        config.write_text(json.dumps({"current_host": host, "hosts": hosts, "network_interface_name": "lo"}))
        env = {**os.environ, "GEODINO_SM_RESOURCE_CONFIG": str(config), "GEODINO_RAY_PORT": str(port),
               "SM_NUM_GPUS": "0", "SM_NUM_CPUS": "1", "SM_CHANNEL_METADATA": str(ben_v1_metadata.parent),
               "SM_MODEL_DIR": str(tmp_path / "model"), "GEODINO_RAY_TEMP_DIR": ray_temp}
        env.pop("RAY_ADDRESS", None)
        log = open(tmp_path / f"{host}.log", "w")
        processes.append(subprocess.Popen([sys.executable, str(REPO / "experiments" / "sagemaker_entry.py"),
                                           *hyperparameters], env=env, stdout=log, stderr=subprocess.STDOUT))
    codes = [process.wait(timeout=540) for process in processes]
    current = "/tmp/ray/ray_current_cluster"
    assert not os.path.exists(current) or f":{port}" not in open(current).read()
    shutil.rmtree(ray_temp, ignore_errors=True)
    logs = {host: (tmp_path / f"{host}.log").read_text() for host in hosts}
    assert codes == [0, 0], {host: text[-3000:] for host, text in logs.items()}
    assert "Ray cluster ready: 2 hosts, 2 CPUs" in logs["127.0.0.1"]
    assert "head of" in logs["127.0.0.1"] and "pretraining finished: 1 epochs" in logs["127.0.0.1"]
    assert "has finished; leaving" in logs["localhost"]
    assert (tmp_path / "model" / "final" / "teacher_backbone.pth").exists()
    assert list((tmp_path / "checkpoints" / "sm").glob("checkpoint_*/checkpoint.pth"))
