"""The Ray cluster this process uses: join it or start one, its GPUs, and CPUs for training workers.

Why worker CPUs are derived: Ray Train workers and Ray Data's reading tasks draw on the same CPUs.
On a 2-core machine two training workers at 1 CPU each leave Ray Data nothing, and
the pipeline waits forever for a CPU that never frees up. So training workers get
what is left after Ray Data's share, fractional if need be.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import socket
import warnings

import ray

from geodino import storage
from geodino.errors import ConfigError

# Ray Data keeps at least this share of the cluster's CPUs (and at least one CPU).
DATA_CPU_SHARE = 0.5
MIN_WORKER_CPUS = 0.1


RAY_LOG_LEVEL_VARIABLE = "GEODINO_RAY_LOG_LEVEL"
LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")


def ray_log_level() -> str:
    """The level of Ray's own logs in this job's processes: ERROR unless GEODINO_RAY_LOG_LEVEL says otherwise.

    On a busy machine Ray Train and Ray Data log hundreds of lines per run (a report per epoch, a plan per
    dataset, a warning per second when the state API is slow); geodino prints its own progress, so Ray's are
    turned down through Ray's logging configuration, and GEODINO_RAY_LOG_LEVEL=INFO brings them back."""
    level = os.environ.get(RAY_LOG_LEVEL_VARIABLE, "ERROR").upper()
    if level not in LOG_LEVELS:
        raise ConfigError(f"{RAY_LOG_LEVEL_VARIABLE}={level}: give one of {', '.join(LOG_LEVELS)}")
    return level


@dataclasses.dataclass(frozen=True)
class SubmittedJob:
    """This driver was started by `ray job submit`: it runs on the cluster's head, not where the user typed the
    command, and in Ray's copy of `--working-dir` (its current folder), which Ray may delete once the job is
    over. What a job prints as the next command, and where it may keep its outputs, follow from that."""

    submission_id: str
    working_dir: str | None  # the job's copy of --working-dir; None when the job shipped none

    def holds(self, path: str) -> bool:
        """Whether a local path lies inside the job's working-dir copy."""
        return self.working_dir is not None and storage.lies_inside(path, self.working_dir)


def submitted_job() -> SubmittedJob | None:
    """The job this driver runs as, from the job configuration Ray's job supervisor hands the driver."""
    raw = os.environ.get("RAY_JOB_CONFIG_JSON_ENV_VAR")
    if not raw:
        return None
    try:
        job_config = json.loads(raw)
    except ValueError:
        return None
    submission_id = (job_config.get("metadata") or {}).get("job_submission_id")
    if not submission_id:
        return None
    shipped = (job_config.get("runtime_env") or {}).get("working_dir")
    return SubmittedJob(submission_id, os.getcwd() if shipped else None)


def job_runtime_env(level: str) -> dict | None:
    """What a submitted job adds to its runtime env: Ray Data's log level for the job's own actors (the per-epoch
    split coordinator prints a line per dataset execution otherwise), which run in processes started for the job
    that no setting in this driver reaches. Ray merges it into the job's runtime env. A value already in this
    driver's environment is kept, as the local branch of init_ray keeps it: Ray hands the driver both the job's
    --runtime-env variables and the environment of `ray start` (and refuses two values of one variable)."""
    if submitted_job() is None or "RAY_DATA_LOG_LEVEL" in os.environ:
        return None
    return {"env_vars": {"RAY_DATA_LOG_LEVEL": level}}


def init_ray(num_cpus: int | None = None) -> None:
    """Join the cluster named by RAY_ADDRESS (as `ray job submit` sets it), or start a local one.

    A script must not pass num_cpus to an existing cluster: Ray rejects it.
    """
    if ray.is_initialized():
        return
    level = ray_log_level()
    if os.environ.get("RAY_ADDRESS"):
        address = os.environ["RAY_ADDRESS"]
        check_cluster_answers(address)
        try:
            ray.init(runtime_env=job_runtime_env(level), logging_config=ray.LoggingConfig(log_level=level))
        except (ConnectionError, ValueError) as error:
            if not isinstance(error, ConnectionError) and "address" not in str(error).lower():
                raise
            reason = str(error).splitlines()[0].split(" Please specify")[0].rstrip(". ")
            raise ConfigError(f"RAY_ADDRESS={address}: {reason}. Unset RAY_ADDRESS to run on a Ray of this machine, "
                              "or set it to the head node's host:6379") from error
    else:
        # The local cluster's processes inherit this environment: Ray Data's actors (the per-epoch split
        # coordinator) configure their logger from it at import, which no logging call from here reaches.
        os.environ.setdefault("RAY_DATA_LOG_LEVEL", level)
        # Ray Train's preemption watcher (one more actor per run, polling for draining nodes) has nothing to watch
        # on a one-machine cluster that this process owns, and its actor prints a core_worker error line on the
        # console of every run. A value the user set is kept.
        os.environ.setdefault("RAY_TRAIN_ENABLE_PREEMPTION_WATCHER", "0")
        ray.init(num_cpus=num_cpus, include_dashboard=False, log_to_driver=True,
                 logging_config=ray.LoggingConfig(log_level=level))
    quiet_ray_data(level)


CONNECT_SECONDS = 5.0


def check_cluster_answers(address: str) -> None:
    """A RAY_ADDRESS left over from a cluster that is gone makes ray.init wait for its GCS for good (minutes of
    'Failed to connect' lines, then nothing): try the port first and say what is wrong in one line."""
    if address in ("auto", "local"):
        return  # Ray looks for a cluster on this machine and says at once when there is none
    if address.startswith(("http://", "https://")):
        raise ConfigError(f"RAY_ADDRESS={address} is a dashboard's address, which `ray job submit` takes; a script "
                          "run directly joins the cluster's GCS: set RAY_ADDRESS to the head node's host:6379, or "
                          "unset it to run on a Ray of this machine")
    host, _, port = address.removeprefix("ray://").rpartition(":")
    if not host or not port.isdigit():
        raise ConfigError(f"RAY_ADDRESS={address} is not host:port (e.g. 10.0.0.5:6379), ray://host:10001 or auto; "
                          "fix it, or unset RAY_ADDRESS to run on a Ray of this machine")
    try:
        socket.create_connection((host, int(port)), timeout=CONNECT_SECONDS).close()
    except OSError as error:
        raise ConfigError(f"RAY_ADDRESS={address}: no Ray cluster answers there ({error.strerror or error}); start "
                          "it (ray start --head), or unset RAY_ADDRESS to run on a Ray of this machine") from error


def quiet_ray_data(level: str) -> None:
    """Ray Data's console lines (a plan and a start per dataset execution, each epoch) at `level`; its log files
    under the session folder keep everything."""
    from ray.data import DataContext

    for handler in logging.getLogger("ray.data").handlers:
        if isinstance(handler, logging.StreamHandler):  # the console; its file handlers keep every level
            handler.setLevel(level)
    DataContext.get_current().print_on_execution_start = level in ("DEBUG", "INFO")


def actor_cpus(actors: int = 1, cluster_cpus: float | None = None) -> float:
    """CPUs to reserve for each of `actors` model actors (feature extraction, predict) on a CPU cluster: one each
    when the cluster has room, else what is left after one whole CPU for Ray Data's tasks, which take 1 CPU
    each. On a 1-CPU host an actor holding that CPU left the readers none and the pipeline waited forever;
    there the actor reserves 0 and shares the core."""
    if cluster_cpus is None:
        cluster_cpus = float(ray.cluster_resources().get("CPU", 0))
    return round(min(1.0, max(0.0, cluster_cpus - 1.0) / actors), 3)


def map_with_model_actor(dataset: ray.data.Dataset, actor_class: type, **options) -> ray.data.Dataset:
    """dataset.map_batches(actor_class, **options) with actors that are not restarted. Ray Data restarts a crashed
    map actor without end by default, and Ray 2.60 then logs at ERROR level, on every probe and prediction, that the
    actor's constructor arguments (Ray Data's own, in the object store) might be lost on a restart
    (ray-project/ray#57733): an alarm users cannot act on. A model actor that crashed ran out of memory or met a
    bug that a restart repeats, so it fails once, with its error; predict keeps its finished parts and a rerun
    continues from them. max_restarts has no named parameter in 2.60 and its generic form warns of deprecation."""
    from ray.util.annotations import RayDeprecationWarning

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RayDeprecationWarning)
        return dataset.map_batches(actor_class, max_restarts=0, **options)


CACHED_DATA_CPUS = 0.25  # what Ray Data needs to hand out blocks already in the object store


def worker_cpus(num_workers: int, cluster_cpus: float | None = None, use_gpu: bool = False,
                data_cached: bool = False) -> float:
    """CPUs to reserve per training worker so that Ray Data always keeps a share to read with.

    A split already materialised in the object store is only handed out, not read or decoded: then the
    training workers take nearly every CPU (and compute with that many threads).
    """
    if num_workers < 1:
        raise ValueError(f"num_workers must be at least 1, not {num_workers}")
    if cluster_cpus is None:
        cluster_cpus = float(ray.cluster_resources().get("CPU", 0))
    if data_cached:
        data_cpus, cap = CACHED_DATA_CPUS, cluster_cpus if not use_gpu else 2.0
    else:
        data_cpus, cap = max(1.0, cluster_cpus * DATA_CPU_SHARE), 1.0 if not use_gpu else 2.0
    available = cluster_cpus - data_cpus
    per_worker = min(cap, available / num_workers)
    if per_worker < MIN_WORKER_CPUS:
        raise ValueError(
            f"{num_workers} training workers do not fit on {cluster_cpus:g} CPUs while keeping "
            f"{data_cpus:g} for Ray Data; use at most {int(available / MIN_WORKER_CPUS)} workers"
        )
    return round(per_worker, 3)


def cluster_gpus() -> int:
    return int(ray.cluster_resources().get("GPU", 0))


def object_store_bytes() -> float:
    return float(ray.cluster_resources().get("object_store_memory", 0))
