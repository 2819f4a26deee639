"""Build (and send) a SageMaker training job that runs geodino, with the real sagemaker SDK.

sagemaker 3.x builds jobs with ``sagemaker.train.ModelTrainer``. The request it
makes is captured at the last step before it leaves the machine (botocore's
``before-call`` event for ``CreateTrainingJob``), so ``--dry_run`` prints exactly
what SageMaker would receive and sends nothing: the code bundle's S3 uploads are
answered locally too and listed instead.

Two ways to run on the hosts, chosen by the backend:

* ``nccl`` / ``gloo``: SageMaker starts ``experiments/sagemaker_entry.py`` once per
  host; the first host becomes the Ray head, the others Ray workers, and the same
  TorchTrainer as everywhere else runs with one worker per GPU.
* ``smddp``: SMDDP's AllReduce only works under SageMaker's mpirun-based launchers
  (AWS docs, "Use the PyTorch framework estimators": "If you choose to replace NCCL
  AllReduce with SMDDP AllReduce, you must choose one of the mpirun-based options").
  Ray's workers are not started by mpirun, so this backend uses
  ``sagemaker.train.distributed.MPI`` (the MPI driver runs SMDDP through smddprun)
  and refuses to run on an instance type SMDDP does not support.
"""

from __future__ import annotations

import datetime
import difflib
import functools
import json
import os
from dataclasses import dataclass, field
from typing import Any

from geodino.cli import flag
from geodino.errors import GeodinoError

REPO_ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", "..", ".."))
ENTRY_SCRIPT = "experiments/sagemaker_entry.py"
REQUIREMENTS = "cluster/sagemaker/requirements.txt"
CHECKPOINT_LOCAL_PATH = "/opt/ml/checkpoints"  # SageMaker syncs it with checkpoint_s3_uri, both ways
CHANNELS = {"metadata": "metadata_dir", "train": "data_dir", "dino_checkpoint": "dino_checkpoint"}  # channel: flag
TASKS = ("pretrain", "probe")
INPUT_MODES = ("File", "FastFile", "Pipe")
BACKENDS = ("nccl", "gloo", "smddp")
# AWS: "Supported frameworks, AWS Regions, and instances types" of the SMDDP library.
SMDDP_INSTANCE_TYPES = ("ml.p3.16xlarge", "ml.p3dn.24xlarge", "ml.p4d.24xlarge", "ml.p4de.24xlarge", "ml.p5.48xlarge")
# Source folders the hosts need; the rest of the checkout (virtualenv, runs, caches) stays home.
IGNORE_PATTERNS = [".venv", ".git", "runs", "__pycache__", ".pytest_cache", "*.egg-info", "demo_data", "tests",
                   "benchmarks", "build", ".ci", "*.pyc"]


class JobRequestError(GeodinoError, ValueError):
    """The job would fail on SageMaker; the message says which option to change."""


@dataclass
class SageMakerJobConfig:
    task: str = flag("pretrain", "pretrain or probe (also the first word: submit_sagemaker.py pretrain ...)", choices=TASKS)
    role: str | None = flag(None, "ARN of the IAM role SageMaker assumes (required)")
    instance_type: str = flag("ml.p4d.24xlarge", "SageMaker training instance type, checked against botocore's list")
    instance_count: int = flag(1, "Hosts; more than 1 forms one Ray cluster across them")
    backend: str = flag(
        "nccl",
        "nccl: Ray Train on the hosts; smddp: SageMaker's AllReduce under mpirun (p4d/p4de/p5 only); "
        "gloo: CPU instances", choices=BACKENDS)
    metadata_dir: str | None = flag(
        None, "s3:// folder with metadata.parquet and metadata.json (prepare's output): the metadata channel",
        aliases=("--metadata",))
    data_dir: str | None = flag(None, "s3:// archive root (the patch folders or packed shards): the train channel",
                                aliases=("--train",))
    dino_checkpoint: str | None = flag(None, "s3:// weights to probe, or a checkpoint to start pretraining from")
    output_path: str | None = flag(
        None, "s3://bucket/prefix for model artefacts and, by default, checkpoints (required)")
    checkpoint_s3_uri: str | None = flag(
        None,
        "Where checkpoints sync to; a spot restart resumes from it. Default: a fresh folder per job "
        "under --output_path")
    job_name: str | None = flag(None, "Training job name; default: geodino-TASK-TIMESTAMP")
    input_mode: str = flag("FastFile", "FastFile streams the many small files on demand; File copies them first", choices=INPUT_MODES)
    framework_version: str | None = flag(
        None, "PyTorch version of the AWS image; default: 2.8.0 (PyTorch training image) for nccl/gloo, 2.4.1 "
        "(the SMP v2 image, which ships SMDDP) for smddp")
    py_version: str | None = flag(None, "Python version of the AWS image; default: py312 for nccl/gloo, py311 for smddp")
    image_uri: str | None = flag(None, "Container image to run instead of the AWS image chosen for --backend")
    region: str | None = flag(None, "AWS region; default: the session's")
    max_run_hours: float = flag(72.0, "Hours before SageMaker stops the job")
    spot: bool = flag(False, "Use managed spot instances (restarted jobs resume from --checkpoint_s3_uri)")
    max_wait_hours: float | None = flag(None, "Spot: hours to wait for capacity plus run; at least --max_run_hours")
    volume_size_gb: int = flag(100, "EBS volume per host")
    dry_run: bool = flag(False, "Print the CreateTrainingJob request and send nothing")
    hyperparameters: dict[str, str] = field(default_factory=dict)  # the task's own flags, DINO's names


def validate(cfg: SageMakerJobConfig) -> None:
    """Refuse requests that SageMaker would accept and then fail on, before anything is uploaded."""
    if cfg.task not in TASKS:
        raise JobRequestError(f"task must be one of {TASKS}, not {cfg.task!r}")
    if cfg.backend not in BACKENDS:
        raise JobRequestError(f"--backend must be one of {BACKENDS}, not {cfg.backend!r}")
    if not cfg.role:
        raise JobRequestError("--role is required: the ARN of an IAM role SageMaker can assume")
    check_instance_type(cfg.instance_type)
    if cfg.instance_count < 1:
        raise JobRequestError(f"--instance_count must be at least 1, not {cfg.instance_count}")
    if cfg.backend == "smddp":
        if cfg.instance_type not in SMDDP_INSTANCE_TYPES:
            raise JobRequestError(
                f"SMDDP does not support {cfg.instance_type}; it runs on {', '.join(SMDDP_INSTANCE_TYPES)}. "
                "Use --backend nccl on this instance type"
            )
        if cfg.task != "pretrain":
            raise JobRequestError("--backend smddp is for pretraining; the probe runs on one GPU, use --backend nccl")
    for name in ("output_path", *CHANNELS.values(), "checkpoint_s3_uri"):
        value = getattr(cfg, name)
        if value and not str(value).startswith("s3://"):
            raise JobRequestError(f"--{name} must be an s3:// URI, not {value!r}")
    if not cfg.output_path:
        raise JobRequestError("--output_path s3://bucket/prefix is required (artefacts and checkpoints go there)")
    if cfg.task == "pretrain" and not cfg.metadata_dir:
        raise JobRequestError("--metadata_dir s3://... (the folder prepare wrote) is required for pretraining")
    if cfg.task == "probe" and not (cfg.metadata_dir and cfg.dino_checkpoint):
        raise JobRequestError("probing needs --metadata_dir and --dino_checkpoint (the weights to probe)")
    if cfg.spot and cfg.max_wait_hours is not None and cfg.max_wait_hours < cfg.max_run_hours:
        raise JobRequestError("--max_wait_hours must be at least --max_run_hours for a spot job")
    for name in ("max_run_hours", "max_wait_hours", "volume_size_gb"):
        if getattr(cfg, name) is not None and getattr(cfg, name) <= 0:
            raise JobRequestError(f"--{name} must be greater than 0, not {getattr(cfg, name)}")
    for flag_name, member in (("job_name", "TrainingJobName"), ("role", "RoleArn")):
        check_request_pattern(f"--{flag_name}", getattr(cfg, flag_name), member)


def check_request_pattern(flag_name: str, value: str | None, member: str) -> None:
    """A value CreateTrainingJob would reject by its own pattern (a job name with '_' or '!', a role that is not
    an IAM role ARN), refused here with that pattern, from botocore's model of the request, not a copy of ours."""
    import re

    if value is None:
        return
    shape = training_job_request_shape().members[member]
    pattern, longest = shape.metadata.get("pattern"), shape.metadata.get("max")
    if (pattern and not re.fullmatch(pattern, value)) or (longest and len(value) > longest):
        example = {"TrainingJobName": "geodino-pretrain-vits16", "RoleArn": "arn:aws:iam::123456789012:role/Name"}
        raise JobRequestError(f"{flag_name} {value!r} is not what SageMaker accepts (pattern {pattern}"
                              f"{f', at most {longest} characters' if longest else ''}), e.g. {example[member]}")


@functools.cache
def training_job_request_shape():
    """botocore's own model of CreateTrainingJob's input: the instance types, name and role patterns SageMaker
    accepts (no list of ours). Loading the service model takes a while, so once per process."""
    import botocore.session

    return botocore.session.get_session().get_service_model("sagemaker").operation_model("CreateTrainingJob").input_shape


def training_instance_types() -> list[str]:
    """The instance types SageMaker trains on."""
    return list(training_job_request_shape().members["ResourceConfig"].members["InstanceType"].enum)


def check_instance_type(instance_type: str) -> None:
    known = training_instance_types()
    if instance_type not in known:
        near = difflib.get_close_matches(instance_type, known, n=3)
        raise JobRequestError(f"--instance_type {instance_type!r} is not a SageMaker training instance type"
                              f"{'; did you mean ' + ', '.join(near) + '?' if near else ''}")


def job_name(cfg: SageMakerJobConfig) -> str:
    if cfg.job_name:
        return cfg.job_name
    stamp = datetime.datetime.now(datetime.timezone.utc).strftime("%Y%m%d-%H%M%S")
    return f"geodino-{cfg.task}-{stamp}"


def hyperparameters(cfg: SageMakerJobConfig, checkpoint_uri: str) -> dict[str, str]:
    """The task's flags (DINO's names) plus the task and backend the entry point dispatches on.

    Checkpoints: on one host Ray Train writes them to the local folder SageMaker
    syncs with checkpoint_s3_uri (a restarted spot job finds them there). With
    several hosts, Ray's rank-0 worker may sit on any host, so Ray Train writes
    to checkpoint_s3_uri directly; a restarted job resumes from the same URI.
    """
    secret_like = [key for key in cfg.hyperparameters if any(word in key.lower() for word in ("secret", "token", "password"))]
    if secret_like:
        raise JobRequestError(f"hyperparameters {secret_like} look like credentials; SageMaker shows hyperparameters "
                              "in its console and API, pass credentials through the job's IAM role instead")
    values = {key: str(value) for key, value in cfg.hyperparameters.items()}
    values.update(task=cfg.task, backend=cfg.backend)
    if cfg.task == "pretrain" and cfg.backend != "smddp":
        if cfg.instance_count == 1:
            values["checkpoint_dir"] = CHECKPOINT_LOCAL_PATH
        else:
            values["storage_path"] = checkpoint_uri
    elif cfg.task == "pretrain":
        values["checkpoint_dir"] = CHECKPOINT_LOCAL_PATH
    return values


# The image each backend needs, as (SDK framework key, PyTorch version, Python version, CUDA tag). SMDDP is not
# preinstalled in the PyTorch training images after 2.2; AWS's SMDDP table lists v2.5.0 (PyTorch 2.4.1) in the
# SMP v2 image smdistributed-modelparallel:2.4.1-gpu-py311-cu121. cluster/README.md has the evidence.
IMAGES = {"smddp": ("pytorch-smp", "2.4.1", "py311", "cu121"), "nccl": ("pytorch", "2.8.0", "py312", None),
          "gloo": ("pytorch", "2.8.0", "py312", None)}


def training_image(cfg: SageMakerJobConfig, region: str) -> str:
    """The AWS image URI for --backend in this region, from the SDK's own image table."""
    from sagemaker.core import image_uris

    framework, version, python, cuda = IMAGES[cfg.backend]
    return image_uris.retrieve(framework, region, version=cfg.framework_version or version,
                               py_version=cfg.py_version or python, instance_type=cfg.instance_type,
                               image_scope="training", container_version=cuda)


def build_model_trainer(cfg: SageMakerJobConfig, session=None):
    """A ModelTrainer for the job; nothing is sent until its train() runs."""
    from sagemaker.core.helper.session_helper import Session
    from sagemaker.core.training.configs import (
        CheckpointConfig,
        Compute,
        OutputDataConfig,
        SourceCode,
        StoppingCondition,
    )
    from sagemaker.train import model_trainer
    from sagemaker.train.distributed import MPI

    validate(cfg)
    name = job_name(cfg)
    session = session or Session(boto_session=regional_boto_session(cfg), default_bucket=bucket_of(cfg.output_path))
    region = cfg.region or session.boto_region_name
    image = cfg.image_uri or training_image(cfg, region)
    max_run = int(cfg.max_run_hours * 3600)
    stopping = StoppingCondition(max_runtime_in_seconds=max_run)
    if cfg.spot:
        stopping.max_wait_time_in_seconds = int((cfg.max_wait_hours or cfg.max_run_hours * 2) * 3600)
    output = cfg.output_path.rstrip("/")
    checkpoint_uri = cfg.checkpoint_s3_uri or f"{output}/{name}/checkpoints"
    channels = [data_channel(channel, getattr(cfg, field), cfg.input_mode) for channel, field in CHANNELS.items()
                if getattr(cfg, field)]
    return model_trainer.ModelTrainer(
        sagemaker_session=session,
        role=cfg.role,
        base_job_name=f"geodino-{cfg.task}",  # the SDK appends its own timestamp
        training_image=image,
        source_code=SourceCode(source_dir=REPO_ROOT, entry_script=ENTRY_SCRIPT, requirements=REQUIREMENTS,
                               ignore_patterns=IGNORE_PATTERNS),
        distributed=MPI() if cfg.backend == "smddp" else None,
        compute=Compute(instance_type=cfg.instance_type, instance_count=cfg.instance_count,
                        volume_size_in_gb=cfg.volume_size_gb, enable_managed_spot_training=cfg.spot),
        stopping_condition=stopping,
        input_data_config=channels,
        training_input_mode=cfg.input_mode,
        output_data_config=OutputDataConfig(s3_output_path=f"{output}/{name}/output"),
        checkpoint_config=CheckpointConfig(s3_uri=checkpoint_uri, local_path=CHECKPOINT_LOCAL_PATH),
        hyperparameters=hyperparameters(cfg, checkpoint_uri),
        environment={"RAY_AUTH_MODE": "disabled", "RAY_USAGE_STATS_ENABLED": "0"},
    )


def data_channel(name: str, uri: str, input_mode: str):
    """An S3 channel with its own input mode (the SDK's InputData always asks for File mode)."""
    from sagemaker.core.shapes import Channel, DataSource, S3DataSource

    source = S3DataSource(s3_data_type="S3Prefix", s3_uri=uri, s3_data_distribution_type="FullyReplicated")
    return Channel(channel_name=name, data_source=DataSource(s3_data_source=source), input_mode=input_mode)


class _Captured(Exception):
    def __init__(self, params: dict):
        super().__init__("CreateTrainingJob captured")
        self.params = params


class _LocalHttpResponse:
    status_code = 200
    headers: dict = {}
    raw = None
    content = b""


# What the SDK calls on the way to CreateTrainingJob, answered locally in a dry run.
DRY_RUN_ANSWERS = {
    "s3.PutObject": {"ETag": '"dry-run"'},
    "s3.CreateMultipartUpload": {"UploadId": "dry-run"},
    "s3.UploadPart": {"ETag": '"dry-run"'},
    "s3.CompleteMultipartUpload": {"ETag": '"dry-run"'},
    "iam.SimulatePrincipalPolicy": {"EvaluationResults": [{"EvalDecision": "allowed"}], "IsTruncated": False},
    # The SDK sometimes asks who the caller is (account lookups, telemetry); a dry run answers, never asks AWS.
    "sts.GetCallerIdentity": {"Account": "000000000000", "Arn": "arn:aws:iam::000000000000:user/dry-run",
                              "UserId": "dry-run"},
}


def capture_job_request(boto_session, dry_run: bool, bucket: str) -> dict:
    """Make `boto_session` stop CreateTrainingJob at its last step and keep its parameters.

    botocore copies a session's event handlers into each client it creates, so
    this must run before the sagemaker Session makes its clients. In a dry run
    every other call the SDK makes (code uploads, the role check) is answered
    here and recorded, so that nothing at all leaves the machine.
    """
    captured: dict[str, Any] = {"calls": []}

    def on_create(params, **_):
        raise _Captured(params)

    def on_call(model, params, **_):
        name = f"{model.service_model.endpoint_prefix}.{model.name}"
        if name == "sagemaker.CreateTrainingJob":
            return None
        key = params.get("url_path", "")
        captured["calls"].append(f"{name} {key}".strip())
        answers = {**DRY_RUN_ANSWERS, "s3.ListBuckets": {"Buckets": [{"Name": bucket, "CreationDate": datetime.datetime.now()}]}}
        if name not in answers:
            raise RuntimeError(f"dry run: the SDK wanted to call {name}, which a dry run does not send")
        return _LocalHttpResponse(), dict(answers[name], ResponseMetadata={"HTTPStatusCode": 200})

    boto_session.events.register("before-parameter-build.sagemaker.CreateTrainingJob", on_create)
    if dry_run:
        boto_session.events.register("before-call", on_call)
    return captured


def regional_boto_session(cfg: SageMakerJobConfig):
    """boto3's session in --region (else the environment's); without any region the SDK stopped with 'Must
    setup local AWS configuration' as a traceback, and --region alone did not reach it."""
    import boto3

    boto_session = boto3.Session(region_name=cfg.region)
    if not boto_session.region_name:
        raise JobRequestError("no AWS region: pass --region (e.g. us-east-1), or set AWS_DEFAULT_REGION or a "
                              "region in ~/.aws/config")
    return boto_session


def job_request(cfg: SageMakerJobConfig, boto_session=None) -> dict:
    """The exact CreateTrainingJob parameters for this configuration; sends nothing in a dry run.

    Outside a dry run the SDK uploads the code bundle (as a real submission
    would) and only CreateTrainingJob is held back.
    """
    from sagemaker.core.helper.session_helper import Session

    validate(cfg)
    boto_session = boto_session or regional_boto_session(cfg)
    captured = capture_job_request(boto_session, dry_run=cfg.dry_run, bucket=bucket_of(cfg.output_path))
    session = Session(boto_session=boto_session, default_bucket=bucket_of(cfg.output_path))
    # The SDK checks the role's trust policy through IAM; a dry run sends nothing, so it skips that check.
    saved = os.environ.get("SAGEMAKER_VALIDATE_ROLE")
    if cfg.dry_run:
        os.environ["SAGEMAKER_VALIDATE_ROLE"] = "false"
    try:
        trainer = build_model_trainer(cfg, session)
        trainer.train(wait=False, logs=False)
    except _Captured as request:
        return {"CreateTrainingJob": request.params, "dry_run_calls": captured["calls"]}
    finally:
        if saved is None:
            os.environ.pop("SAGEMAKER_VALIDATE_ROLE", None)
        else:
            os.environ["SAGEMAKER_VALIDATE_ROLE"] = saved
    raise RuntimeError("the sagemaker SDK finished without calling CreateTrainingJob")


def bucket_of(uri: str) -> str:
    return uri[len("s3://"):].split("/", 1)[0]


def submit(cfg: SageMakerJobConfig, session=None) -> str:
    """Send the job; returns its name. The SDK uploads this checkout's code first."""
    trainer = build_model_trainer(cfg, session)
    trainer.train(wait=False, logs=False)
    return trainer._latest_training_job.training_job_name


def to_json(request: dict) -> str:
    return json.dumps(request, indent=2, sort_keys=True, default=str)
