"""SageMaker jobs built by the real sagemaker SDK, captured before they are sent; the entry point run
for real as a two-"host" job on 127.0.0.1."""

import json
import os
import shutil
import subprocess
import sys
import tempfile

import boto3
import pytest
from conftest import FAKE_SECRET, REPO, S3_BUCKET, free_port

from geodino.launch.sagemaker_job import CHECKPOINT_LOCAL_PATH, JobRequestError, SageMakerJobConfig, job_request

ROLE = "arn:aws:iam::123456789012:role/geodino-training"
PRETRAIN = dict(role=ROLE, metadata_dir=f"s3://{S3_BUCKET}/prepared", data_dir=f"s3://{S3_BUCKET}/BigEarthNet-v1.0",
                output_path=f"s3://{S3_BUCKET}/jobs")


def channels(request: dict) -> dict:
    return {c["ChannelName"]: c for c in request["InputDataConfig"]}


def create_training_job_shape():
    """botocore's own model of the CreateTrainingJob input (what SageMaker's API validates against)."""
    client = boto3.client("sagemaker", region_name="us-east-1", endpoint_url="http://127.0.0.1:9")
    return client.meta.service_model.operation_model("CreateTrainingJob").input_shape


def assert_valid_request(request: dict) -> None:
    from botocore.validate import validate_parameters

    validate_parameters(request, create_training_job_shape())  # raises ParamValidationError naming the field


def test_dry_run_builds_an_smddp_job_and_sends_nothing(monkeypatch):
    # An endpoint nothing listens on: had the dry run sent a request, it would fail.
    monkeypatch.setenv("AWS_ENDPOINT_URL", "http://127.0.0.1:9")
    config = SageMakerJobConfig(**PRETRAIN, instance_type="ml.p4d.24xlarge", instance_count=2, backend="smddp",
                                spot=True, max_run_hours=10, dino_checkpoint=f"s3://{S3_BUCKET}/init",
                                hyperparameters={"arch": "vit_small", "epochs": "100", "batch_size_per_gpu": "64"},
                                dry_run=True, job_name="geodino-pretrain-a")
    result = job_request(config)
    request = result["CreateTrainingJob"]
    assert_valid_request(request)

    assert request["ResourceConfig"] == {"InstanceType": "ml.p4d.24xlarge", "InstanceCount": 2, "VolumeSizeInGB": 100}
    assert request["HyperParameters"] == {"arch": "vit_small", "epochs": "100", "batch_size_per_gpu": "64",
                                          "task": "pretrain", "backend": "smddp", "checkpoint_dir": CHECKPOINT_LOCAL_PATH}
    found = channels(request)
    assert set(found) == {"metadata", "train", "dino_checkpoint", "code", "sm_drivers"}
    assert found["train"]["DataSource"]["S3DataSource"]["S3Uri"] == PRETRAIN["data_dir"]
    assert found["train"]["InputMode"] == "FastFile"
    assert request["CheckpointConfig"] == {"S3Uri": f"s3://{S3_BUCKET}/jobs/geodino-pretrain-a/checkpoints",
                                           "LocalPath": CHECKPOINT_LOCAL_PATH}
    assert request["EnableManagedSpotTraining"] is True
    assert request["StoppingCondition"] == {"MaxRuntimeInSeconds": 36000, "MaxWaitTimeInSeconds": 72000}
    # SMDDP ships in the SMP v2 image, not in the PyTorch training images after 2.2 (AWS's SMDDP table)
    assert request["AlgorithmSpecification"]["TrainingImage"] == (
        "658645717510.dkr.ecr.us-east-1.amazonaws.com/smdistributed-modelparallel:2.4.1-gpu-py311-cu121")
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
    assert_valid_request(request)
    assert request["HyperParameters"]["storage_path"] == f"s3://{S3_BUCKET}/jobs/j/checkpoints"
    assert "checkpoint_dir" not in request["HyperParameters"]
    assert "distributed.json" not in json.dumps(request)
    assert request["AlgorithmSpecification"]["TrainingImage"] == (
        "763104351884.dkr.ecr.us-east-1.amazonaws.com/pytorch-training:2.8.0-gpu-py312")  # nccl: Ray Train's image
    elsewhere = job_request(SageMakerJobConfig(**PRETRAIN, instance_type="ml.p5.48xlarge", backend="smddp",
                                               region="eu-west-1", dry_run=True, job_name="k"))["CreateTrainingJob"]
    assert elsewhere["AlgorithmSpecification"]["TrainingImage"] == (
        "658645717510.dkr.ecr.eu-west-1.amazonaws.com/smdistributed-modelparallel:2.4.1-gpu-py311-cu121")


def test_real_submission_uploads_code_to_s3_and_stops_at_create_training_job(s3_endpoint):
    config = SageMakerJobConfig(role=ROLE, task="probe", instance_type="ml.g5.xlarge", metadata_dir=PRETRAIN["metadata_dir"],
                                dino_checkpoint=f"s3://{S3_BUCKET}/runs/final", output_path=PRETRAIN["output_path"],
                                hyperparameters={"arch": "vit_small", "epochs": "50"}, job_name="probe-job")
    request = job_request(config)["CreateTrainingJob"]
    assert_valid_request(request)
    code = channels(request)["code"]["DataSource"]["S3DataSource"]["S3Uri"]
    key = code[len(f"s3://{S3_BUCKET}/"):] + "/experiments/sagemaker_entry.py"
    uploaded = boto3.client("s3").get_object(Bucket=S3_BUCKET, Key=key)["Body"].read()
    assert uploaded == (REPO / "experiments" / "sagemaker_entry.py").read_bytes()
    assert request["HyperParameters"] == {"arch": "vit_small", "epochs": "50", "task": "probe", "backend": "nccl"}


@pytest.mark.parametrize("change, message", [
    (dict(backend="smddp", instance_type="ml.g5.48xlarge"), "SMDDP does not support ml.g5.48xlarge.*--backend nccl"),
    (dict(backend="smddp", task="probe", instance_type="ml.p4d.24xlarge"), "probe runs on one GPU"),
    (dict(role=None), "--role is required"),
    (dict(data_dir="/data/BigEarthNet"), "--data_dir must be an s3:// URI"),
    (dict(output_path=None), "--output_path"),
    (dict(spot=True, max_wait_hours=1.0), "max_wait_hours must be at least"),
    (dict(hyperparameters={"aws_secret_access_key": "x"}), "look like credentials"),
])
def test_requests_sagemaker_would_reject_fail_here_first(change, message, monkeypatch):
    monkeypatch.setenv("AWS_ENDPOINT_URL", "http://127.0.0.1:9")  # nothing may be sent on the way to the error
    config = SageMakerJobConfig(**{**PRETRAIN, **change, "dry_run": True})
    with pytest.raises(JobRequestError, match=message):
        job_request(config)  # the path users take, not validate() alone


def test_botocore_validation_catches_what_a_request_must_not_hold():
    """The check above can fail: a request SageMaker's API model rejects is rejected here too."""
    from botocore.exceptions import ParamValidationError

    with pytest.raises(ParamValidationError, match="InstanceCount"):
        assert_valid_request({"TrainingJobName": "j", "RoleArn": ROLE, "AlgorithmSpecification": {
            "TrainingInputMode": "File"}, "OutputDataConfig": {"S3OutputPath": "s3://b/o"},
            "ResourceConfig": {"InstanceType": "ml.g5.xlarge", "InstanceCount": "two", "VolumeSizeInGB": 10},
            "StoppingCondition": {"MaxRuntimeInSeconds": 10}})


def test_host_requirements_pin_what_constraints_pin():
    pins = dict(line.split("==") for line in (REPO / "constraints.txt").read_text().split() if "==" in line)
    for line in (REPO / "cluster" / "sagemaker" / "requirements.txt").read_text().splitlines():
        if line and not line.startswith("#"):
            name, version = line.split("==")
            assert pins[name.split("[")[0]] == version, line
            assert name not in ("torch", "torchvision"), "the AWS image's torch (SMDDP's 2.4.1) must stay"
    # What does pull torch in (timm) takes any version, so pip keeps the image's (cluster/README.md has the
    # resolver's dry run against torch 2.4.1).
    from importlib.metadata import requires

    assert {"torch", "torchvision"} <= set(requires("timm"))


def test_submit_script_dry_run_prints_the_request(monkeypatch, capsys):
    from conftest import free_port

    private_server = f"http://127.0.0.1:{free_port()}"  # nothing answers there from this machine
    env = {**os.environ, "AWS_ENDPOINT_URL": "http://127.0.0.1:9", "PYTHONPATH": str(REPO / "platform")}
    out = subprocess.run([sys.executable, str(REPO / "experiments" / "submit_sagemaker.py"), "pretrain", "--role", ROLE,
                          "--metadata", PRETRAIN["metadata_dir"], "--output_path", PRETRAIN["output_path"],
                          "--instance_type", "ml.g5.2xlarge", "--dry_run", "--", "--arch", "vit_tiny",
                          "--global_crops_scale", "0.3", "1.0", "--mlflow_tracking_uri", private_server],
                         env=env, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    request = json.loads(out.stdout)["CreateTrainingJob"]
    assert request["HyperParameters"]["global_crops_scale"] == "0.3 1.0"
    # an MLflow server the job reaches inside its VPC need not answer here: the job asks it when it starts
    assert request["HyperParameters"]["mlflow_tracking_uri"] == private_server
    # Mistakes, through the same script's main (in this process: the SDK's import is what a subprocess costs).
    # Values are checked before any request is built: the instance type against what SageMaker trains on
    # (botocore's own list), the task's flags by the task's own validation.
    sys.path.insert(0, str(REPO / "experiments"))
    import submit_sagemaker

    monkeypatch.setenv("AWS_ENDPOINT_URL", "http://127.0.0.1:9")
    common = ["pretrain", "--role", ROLE, "--metadata_dir", PRETRAIN["metadata_dir"], "--output_path", PRETRAIN["output_path"],
              "--dry_run"]
    for extra, message in [(["--", "--ecpochs", "3"], "unrecognized arguments: --ecpochs 3"),
                           (["--instance_type", "ml.p4d.24xlarg"], "'ml.p4d.24xlarg' is not a SageMaker training "
                                                                   "instance type; did you mean ml.p4d.24xlarge"),
                           (["--", "--epochs", "0", "--precision", "fp8"], "--precision: invalid choice: 'fp8'"),
                           # values SageMaker rejects only once the request reaches it, by botocore's own model
                           (["--max_run_hours", "0"], "--max_run_hours must be greater than 0, not 0.0"),
                           (["--job_name", "vits16_run!"], "--job_name 'vits16_run!' is not what SageMaker accepts"),
                           (["--role", "MySageMakerRole"], "--role 'MySageMakerRole' is not what SageMaker accepts"),
                           (["--region", ""], "no AWS region: pass --region")]:
        if extra[0] == "--region":  # and none in the environment: the SDK's own ValueError was a traceback
            monkeypatch.delenv("AWS_DEFAULT_REGION")
            monkeypatch.setenv("AWS_CONFIG_FILE", os.devnull)
        with pytest.raises(SystemExit) as exit_info:
            submit_sagemaker.main(common + extra)
        printed = capsys.readouterr()
        assert exit_info.value.code == 2 and not printed.out
        assert message in printed.err and len(printed.err.strip().splitlines()) == 1, printed.err


@pytest.fixture
def ray_temp():
    """The hosts' Ray folder: not /tmp/ray (`ray start` records its cluster there, and the next local ray.init()
    would try to join it), short (Ray's socket paths must fit 107 bytes), and removed afterwards."""
    folder = tempfile.mkdtemp(prefix="ray-sm-", dir="/tmp")
    yield folder
    shutil.rmtree(folder, ignore_errors=True)


def start_hosts(hosts: list[str], hyperparameters: list[str], channels: dict, tmp_path, tag: str,
                ray_temp: str) -> list:
    """Start sagemaker_entry.py once per "host" with SageMaker's environment, as SageMaker starts a job."""
    port = free_port()
    processes = []
    for host in hosts:
        config = tmp_path / f"{tag}-{host}-resourceconfig.json"
        config.write_text(json.dumps({"current_host": host, "hosts": hosts, "network_interface_name": "lo"}))
        env = {**os.environ, "GEODINO_SM_RESOURCE_CONFIG": str(config), "GEODINO_RAY_PORT": str(port),
               "SM_NUM_GPUS": "0", "SM_NUM_CPUS": "1", "SM_MODEL_DIR": str(tmp_path / "model"),
               "GEODINO_RAY_TEMP_DIR": ray_temp,
               **{f"SM_CHANNEL_{name.upper()}": str(folder) for name, folder in channels.items()}}
        env.pop("RAY_ADDRESS", None)
        log = open(tmp_path / f"{tag}-{host}.log", "w")
        processes.append(subprocess.Popen([sys.executable, str(REPO / "experiments" / "sagemaker_entry.py"),
                                           *hyperparameters], env=env, stdout=log, stderr=subprocess.STDOUT))
    return processes


def finish_hosts(processes: list, hosts: list[str], tmp_path, tag: str) -> dict:
    """Wait for every host to exit 0 and leave no Ray behind; return each host's log."""
    codes = [process.wait(timeout=540) for process in processes]
    logs = {host: (tmp_path / f"{tag}-{host}.log").read_text() for host in hosts}
    assert codes == [0] * len(hosts), {host: text[-3000:] for host, text in logs.items()}
    return logs


def terminate_instances(processes: list) -> None:
    """What a spot interruption does to a job: every process on every host dies at once (SIGKILL)."""
    import psutil

    victims = []
    for process in processes:
        parent = psutil.Process(process.pid)
        victims += [parent, *parent.children(recursive=True)]  # the entry script, `ray start`, raylet, workers
    for victim in victims:
        try:
            victim.kill()
        except psutil.NoSuchProcess:
            pass
    psutil.wait_procs(victims, timeout=30)


@pytest.mark.timeout(900)
def test_two_host_job_survives_a_spot_interruption_and_its_model_is_probed(ben_v1_metadata, ben30_metadata, tmp_path,
                                                                           ray_temp):
    """Two processes with SageMaker's environment form a Ray cluster and pretrain with gloo; after the first
    checkpoint every process of both hosts is SIGKILLed (a spot interruption); SageMaker's restart (the same
    command, the same checkpoint folder) resumes from that checkpoint and both hosts exit 0. The probe task then
    scores the job's model from its dino_checkpoint channel."""
    from test_reliability import wait_for_checkpoints

    from geodino.dino.checkpoint import read_checkpoint

    epochs = 2  # the spot interruption comes after epoch 0's checkpoint; the restart runs the rest
    hosts = ["127.0.0.1", "localhost"]  # two names for this machine, as algo-1 and algo-2 would be
    pretrain = ["--task", "pretrain", "--backend", "gloo", "--arch", "vit_tiny", "--patch_size", "8",
                "--out_dim", "64", "--global_crops_size", "32", "--local_crops_size", "16",
                "--local_crops_number", "2", "--batch_size_per_gpu", "1", "--num_workers", "2", "--epochs", str(epochs),
                "--warmup_epochs", "0", "--saveckp_freq", "1", "--checkpoint_dir", str(tmp_path / "checkpoints"),
                "--run_name", "sm", "--knn_every", "0", "--freeze_last_layer", "0"]
    channels = {"metadata": ben_v1_metadata.parent}
    interrupted = start_hosts(hosts, pretrain, channels, tmp_path, "interrupted", ray_temp)
    wait_for_checkpoints(tmp_path / "checkpoints" / "sm", 1, alive=lambda: interrupted[0].poll() is None)
    terminate_instances(interrupted)
    first_log = (tmp_path / "interrupted-127.0.0.1.log").read_text()
    assert "Ray cluster ready: 2 hosts, 2 CPUs" in first_log and "pretraining finished" not in first_log

    restarted = start_hosts(hosts, pretrain, channels, tmp_path, "restarted", ray_temp)
    logs = finish_hosts(restarted, hosts, tmp_path, "restarted")
    assert "head of" in logs["127.0.0.1"] and "resuming at epoch" in logs["127.0.0.1"]
    assert f"pretraining finished: {epochs} epochs" in logs["127.0.0.1"]
    assert "has finished; leaving" in logs["localhost"]
    current = "/tmp/ray/ray_current_cluster"  # the job's Ray stayed in its own temp folder
    assert not os.path.exists(current) or "ray-sm-" not in open(current).read()
    final = read_checkpoint(str(tmp_path / "model" / "final"))
    assert final["epoch"] == epochs and [m["epoch"] for m in final["metrics"]] == list(range(epochs))
    from geodino.data.config import DataConfig, dataset_size
    from geodino.dino.config import PretrainConfig, steps_per_epoch_for

    patches = dataset_size(DataConfig(metadata=str(ben_v1_metadata), split="train"))
    steps_per_epoch = steps_per_epoch_for(patches, PretrainConfig(batch_size_per_gpu=1, num_workers=2))
    assert {int(v["step"]) for v in final["optimizer"]["state"].values()} == {epochs * steps_per_epoch}  # none twice

    probe = ["--task", "probe", "--epochs", "2", "--batch_size_per_gpu", "8"]
    channels = {"metadata": ben30_metadata.parent, "dino_checkpoint": tmp_path / "model" / "final"}
    probing = start_hosts(["127.0.0.1"], probe, channels, tmp_path, "probe", ray_temp)
    logs = finish_hosts(probing, ["127.0.0.1"], tmp_path, "probe")
    printed = json.loads(next(line for line in logs["127.0.0.1"].splitlines() if line.startswith('{"linear_test"')))
    report = json.loads((tmp_path / "model" / "metrics.json").read_text())  # SM_MODEL_DIR: uploaded as model.tar.gz
    assert report["task"] == "multi_label" and report["rows"] == {"train": 10, "validation": 10, "test": 10}
    assert printed["linear_test"]["ap_macro"] == report["linear"]["test"]["ap_macro"]
    assert report["backbone"] == str(tmp_path / "model" / "final")  # the dino_checkpoint channel's weights
