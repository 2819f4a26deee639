"""What runs on each host of a SageMaker training job: form a Ray cluster, then run the task.

SageMaker starts the entry script once per host and tells each host who it is
(``/opt/ml/input/config/resourceconfig.json``, ``SM_HOSTS``, ``SM_CURRENT_HOST``).
The first host starts a Ray head, waits until every host has joined, and runs
the same ``run_pretraining`` / ``run_linear_probe`` as a laptop or a Ray cluster
would. The other hosts join as Ray workers and block until the head is gone,
then exit 0, which is how SageMaker learns that the job succeeded.
"""

from __future__ import annotations

import dataclasses
import json
import os
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass

import ray

from geodino import cli
from geodino.cli import parse_config, parse_config_and_given
from geodino.dino.config import PretrainConfig
from geodino.errors import ConfigError
from geodino.launch.run import run_pretraining
from geodino.launch.sagemaker_job import BACKENDS, TASKS
from geodino.ray_cluster import init_ray
from geodino.transfer.linear_probe import LinearProbeConfig, run_linear_probe

RESOURCE_CONFIG = "/opt/ml/input/config/resourceconfig.json"
DEFAULT_RAY_PORT = 6379
JOIN_TIMEOUT_S = 600.0  # hosts of one job start within minutes of each other
POLL_S = 2.0


@dataclass
class SageMakerEnv:
    hosts: list[str]
    current_host: str
    num_gpus: int
    num_cpus: int
    channels: dict[str, str]  # channel name -> local folder (SM_CHANNEL_*)
    model_dir: str
    ray_port: int = DEFAULT_RAY_PORT

    @property
    def head(self) -> str:
        return self.hosts[0]

    @property
    def is_head(self) -> bool:
        return self.current_host == self.head


def read_sagemaker_env(environ: dict | None = None) -> SageMakerEnv:
    """The job's topology from resourceconfig.json (or SM_HOSTS / SM_CURRENT_HOST) and its channels."""
    environ = dict(os.environ if environ is None else environ)
    config_path = environ.get("GEODINO_SM_RESOURCE_CONFIG", RESOURCE_CONFIG)
    if os.path.exists(config_path):
        with open(config_path) as handle:
            config = json.load(handle)
        hosts, current = list(config["hosts"]), config["current_host"]
    elif "SM_HOSTS" in environ and "SM_CURRENT_HOST" in environ:
        hosts, current = json.loads(environ["SM_HOSTS"]), environ["SM_CURRENT_HOST"]
    else:
        raise ConfigError(f"not on SageMaker: neither {config_path} nor SM_HOSTS/SM_CURRENT_HOST is there; this is "
                          "what a SageMaker job runs on each host: submit one with experiments/submit_sagemaker.py, "
                          "or train here with experiments/pretrain.py")
    if current not in hosts:
        raise ConfigError(f"current host {current!r} is not among the job's hosts {hosts}")
    channels = {key[len("SM_CHANNEL_"):].lower(): value for key, value in environ.items() if key.startswith("SM_CHANNEL_")}
    return SageMakerEnv(
        hosts=hosts,
        current_host=current,
        num_gpus=int(environ.get("SM_NUM_GPUS", 0)),
        num_cpus=int(environ.get("SM_NUM_CPUS", os.cpu_count() or 1)),
        channels=channels,
        model_dir=environ.get("SM_MODEL_DIR", "/opt/ml/model"),
        ray_port=int(environ.get("GEODINO_RAY_PORT", DEFAULT_RAY_PORT)),
    )


# ---------------------------------------------------------------------------- Ray cluster


def wait_for_port(host: str, port: int, timeout_s: float) -> str:
    """Resolve `host` and wait until something listens on `port`; SageMaker's DNS names appear late."""
    deadline = time.monotonic() + timeout_s
    last_error: Exception | None = None
    while time.monotonic() < deadline:
        try:
            address = socket.gethostbyname(host)
            with socket.create_connection((address, port), timeout=POLL_S):
                return address
        except OSError as error:
            last_error = error
            time.sleep(POLL_S)
    raise TimeoutError(f"{host}:{port} did not answer within {timeout_s:.0f} s ({last_error})")


def is_listening(address: str, port: int) -> bool:
    try:
        with socket.create_connection((address, port), timeout=POLL_S):
            return True
    except OSError:
        return False


def start_ray_node(args: list[str], env: dict | None = None) -> subprocess.Popen:
    """`ray start ... --block` in its own process group, so stopping it stops its raylet too.

    Not `ray stop`: that stops every Ray instance on the machine, other jobs' included.
    """
    command = [os.path.join(os.path.dirname(sys.executable), "ray"), "start", "--block", "--disable-usage-stats", *args]
    # On SIGTERM Ray drains the node for up to 30 s (for Serve replicas behind live proxies). A geodino host is
    # stopped when its job is over, so the drain only waited out its timeout: 20 s of a billed host per stop.
    env = {"RAY_GRACEFUL_SHUTDOWN_DRAIN_TIMEOUT_S": "0", **(os.environ if env is None else env)}
    return subprocess.Popen(command, start_new_session=True, env=env)


def stop_ray_node(process: subprocess.Popen, grace_s: float = 20.0) -> None:
    if process.poll() is not None:
        return
    os.killpg(process.pid, signal.SIGTERM)
    try:
        process.wait(grace_s)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait()


def wait_for_nodes(count: int, timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while True:
        alive = sum(1 for node in ray.nodes() if node["Alive"])
        if alive >= count:
            return
        if time.monotonic() > deadline:
            raise TimeoutError(f"only {alive} of {count} hosts joined the Ray cluster within {timeout_s:.0f} s")
        time.sleep(POLL_S)


def node_resources(env: SageMakerEnv) -> list[str]:
    return ["--num-gpus", str(env.num_gpus), "--num-cpus", str(env.num_cpus)]


def run_worker_host(env: SageMakerEnv, timeout_s: float = JOIN_TIMEOUT_S) -> int:
    """Join the head's cluster and stay until the head is gone (the job is over), then exit 0."""
    head_address = wait_for_port(env.head, env.ray_port, timeout_s)
    node = start_ray_node(["--address", f"{head_address}:{env.ray_port}", *node_resources(env)])
    try:
        while node.poll() is None and is_listening(head_address, env.ray_port):
            time.sleep(POLL_S)
    finally:
        stop_ray_node(node)
    print(f"{env.current_host}: the Ray head on {env.head} has finished; leaving", flush=True)
    return 0


def run_head_host(env: SageMakerEnv, task: str, task_argv: list[str], timeout_s: float = JOIN_TIMEOUT_S) -> int:
    address = socket.gethostbyname(env.head)
    temp_dir = os.environ.get("GEODINO_RAY_TEMP_DIR")  # several "hosts" on one machine keep apart
    node = start_ray_node(["--head", "--port", str(env.ray_port), "--node-ip-address", address,
                           "--dashboard-host", "127.0.0.1", *node_resources(env),
                           *(["--temp-dir", temp_dir] if temp_dir else [])])
    try:
        wait_for_port(address, env.ray_port, timeout_s)
        os.environ["RAY_ADDRESS"] = f"{address}:{env.ray_port}"
        init_ray()  # joins RAY_ADDRESS, with geodino's Ray log level
        wait_for_nodes(len(env.hosts), timeout_s)
        resources = ray.cluster_resources()
        print(f"Ray cluster ready: {len(env.hosts)} hosts, {resources.get('CPU', 0):g} CPUs, "
              f"{resources.get('GPU', 0):g} GPUs", flush=True)
        run_task(task, task_argv, env)
    finally:
        ray.shutdown()
        stop_ray_node(node)
    return 0


# ---------------------------------------------------------------------------- tasks


def run_task(task: str, argv: list[str], env: SageMakerEnv) -> None:
    """Parse the task's own flags (SageMaker passes hyperparameters as --name value) and fill in the channels."""
    if task == "pretrain":
        config = parse_config(PretrainConfig, argv, prog="sagemaker_entry (PretrainConfig)")
        gpus = env.num_gpus * len(env.hosts)
        config = dataclasses.replace(
            config,
            metadata_dir=config.metadata_dir or env.channels.get("metadata"),
            data_dir=config.data_dir or env.channels.get("train"),
            output_dir=config.output_dir or env.model_dir,
            num_workers=gpus or config.num_workers,
            use_gpu=gpus > 0,
        )
        result = run_pretraining(config)
        if result is not None:  # under mpirun only rank 0 has it
            print(f"pretraining finished: {len(result.metrics)} epochs, checkpoint in {result.checkpoint_dir}",
                  flush=True)
    elif task == "probe":
        config, typed = parse_config_and_given(LinearProbeConfig, argv, prog="sagemaker_entry (LinearProbeConfig)")
        weights = env.channels.get("dino_checkpoint")
        config = dataclasses.replace(  # the channels fill what the hyperparameters did not name
            config,
            pretrained_weights=weights if weights and "pretrained_weights" not in typed else config.pretrained_weights,
            metadata_dir=config.metadata_dir or env.channels.get("metadata"),
            data_dir=config.data_dir or env.channels.get("train"),
            output_dir=config.output_dir if "output_dir" in typed else env.model_dir,
        )
        report = run_linear_probe(config)
        print(json.dumps({"linear_test": report["linear"]["test"]}), flush=True)
    else:
        raise ValueError(f"unknown task {task!r}")


def main(argv: list[str] | None = None) -> int:
    parser = cli.ArgumentParser(description=__doc__)
    parser.add_argument("--task", choices=TASKS, default="pretrain",
                        help="pretrain (PretrainConfig's flags follow) or probe (LinearProbeConfig's)")
    parser.add_argument("--backend", choices=BACKENDS, default="nccl",
                        help="nccl: Ray Train across the hosts; smddp: this process is one MPI rank, no Ray; "
                             "gloo: CPU hosts (chosen when there are no GPUs)")
    args, task_argv = parser.parse_known_args(argv)
    # SageMaker passes each hyperparameter as one argument: "--global_crops_scale" "0.4 1.0".
    task_argv = [part for token in task_argv for part in (token.split() if not token.startswith("--") else [token])]
    env = read_sagemaker_env()
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")  # the job's hosts share a private network
    if args.backend != "smddp" and env.num_gpus == 0:
        args.backend = "gloo"
    task_argv += ["--backend", args.backend] if args.task == "pretrain" else []
    if args.backend == "smddp":  # started by SageMaker's MPI driver (smddprun), one process per GPU, no Ray
        run_task(args.task, task_argv + ["--launcher", "torchrun"], env)
        return 0
    print(f"{env.current_host}: {'head' if env.is_head else 'worker'} of {env.hosts}, {env.num_gpus} GPUs, "
          f"channels {sorted(env.channels)}", flush=True)
    if env.is_head:
        return run_head_host(env, args.task, task_argv)
    return run_worker_host(env)
