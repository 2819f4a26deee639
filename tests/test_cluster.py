"""Cluster configs checked against the schemas of the tools that read them, and a real `ray job submit`."""

import os
import re
import shlex
import shutil
import subprocess
import sys
import tempfile
import time

import pytest
import yaml
from conftest import REPO, free_port

from geodino.dino.checkpoint import read_checkpoint
from geodino.launch.sagemaker_host import start_ray_node, stop_ray_node

CLUSTER = REPO / "cluster"


def test_aws_cluster_yaml_passes_rays_own_validation():
    from ray.autoscaler._private.util import prepare_config, validate_config

    config = yaml.safe_load((CLUSTER / "aws" / "geodino-cluster.yaml").read_text())
    validate_config(prepare_config(config))
    nodes = config["available_node_types"]
    assert nodes[config["head_node_type"]]["resources"] == {"CPU": 0}
    assert any(node["node_config"]["InstanceType"].startswith(("g5", "p4d")) for node in nodes.values())
    assert any(node["node_config"].get("InstanceMarketOptions", {}).get("MarketType") == "spot" for node in nodes.values())
    head_start = " ".join(config["head_start_ray_commands"])
    assert "--dashboard-host=127.0.0.1" in head_start and "0.0.0.0" not in head_start
    assert not any(word in yaml.safe_dump(config).lower() for word in ("aws_secret", "aws_access_key"))

    broken = yaml.safe_load((CLUSTER / "aws" / "geodino-cluster.yaml").read_text())
    broken["available_node_types"]["head"]["min_wokers"] = 0  # a typo the schema must catch
    with pytest.raises(Exception, match="min_wokers"):
        validate_config(broken)


# KubeRay's ray.io/v1 API (ray-operator/apis/ray/v1/rayjob_types.go, raycluster_types.go): the fields a
# RayJob may carry. Unknown fields are dropped silently by the API server, so a typo would go unnoticed.
RAYJOB_SPEC = {"activeDeadlineSeconds", "backoffLimit", "clusterSelector", "deletionStrategy", "entrypoint",
               "entrypointNumCpus", "entrypointNumGpus", "entrypointResources", "jobId", "managedBy", "metadata",
               "rayClusterSpec", "runtimeEnvYAML", "shutdownAfterJobFinishes", "submissionMode", "submitterConfig",
               "submitterPodTemplate", "suspend", "ttlSecondsAfterFinished"}
RAYCLUSTER_SPEC = {"autoscalerOptions", "enableInTreeAutoscaling", "gcsFaultToleranceOptions", "headGroupSpec",
                   "headServiceAnnotations", "managedBy", "rayVersion", "suspend", "workerGroupSpecs"}
HEAD_GROUP = {"enableIngress", "headService", "rayStartParams", "serviceType", "template"}
WORKER_GROUP = {"groupName", "idleTimeoutSeconds", "maxReplicas", "minReplicas", "numOfHosts", "rayStartParams",
                "replicas", "scaleStrategy", "suspend", "template"}
SUBMISSION_MODES = {"K8sJobMode", "HTTPMode", "InteractiveMode", "SidecarMode"}


def test_kuberay_rayjob_uses_only_rayjob_fields():
    manifest = yaml.safe_load((CLUSTER / "kuberay" / "geodino-rayjob.yaml").read_text())
    assert manifest["apiVersion"] == "ray.io/v1" and manifest["kind"] == "RayJob"
    spec = manifest["spec"]
    assert set(spec) <= RAYJOB_SPEC, set(spec) - RAYJOB_SPEC
    assert spec["submissionMode"] in SUBMISSION_MODES
    assert "experiments/pretrain.py" in spec["entrypoint"]
    yaml.safe_load(spec["runtimeEnvYAML"])  # a string holding YAML, as KubeRay expects
    cluster = spec["rayClusterSpec"]
    assert set(cluster) <= RAYCLUSTER_SPEC, set(cluster) - RAYCLUSTER_SPEC
    head = cluster["headGroupSpec"]
    assert set(head) <= HEAD_GROUP, set(head) - HEAD_GROUP
    groups = [head] + cluster["workerGroupSpecs"]
    for group in cluster["workerGroupSpecs"]:
        assert set(group) <= WORKER_GROUP, set(group) - WORKER_GROUP
        assert group["minReplicas"] <= group["replicas"] <= group["maxReplicas"]
    for group in groups:  # map[string]string in the CRD: a bare number or boolean is rejected
        assert all(isinstance(value, str) for value in group["rayStartParams"].values()), group["rayStartParams"]
        assert group["template"]["spec"]["containers"]
    assert head["rayStartParams"]["num-cpus"] == "0" and head["rayStartParams"]["dashboard-host"] == "127.0.0.1"
    assert any("nvidia.com/gpu" in c["resources"]["limits"] for g in cluster["workerGroupSpecs"]
               for c in g["template"]["spec"]["containers"])


POLL_S = 0.5  # how often the job-submit test asks the head; each wait below is written as its deadline in s


def submit_until_an_agent_answers(command: list[str], env: dict) -> subprocess.CompletedProcess:
    """`ray job submit` as typed, retried while the head's job agent is not up yet (it starts a little after the
    dashboard, and until then every submission is answered with "No available agent")."""
    for _ in range(int(60 / POLL_S)):
        submitted = subprocess.run(command, env=env, capture_output=True, text=True, timeout=600, cwd=REPO)
        if "No available agent" not in submitted.stderr:
            return submitted
        time.sleep(POLL_S)
    return submitted


@pytest.mark.timeout(900)
def test_the_main_job_submitted_to_a_real_head_and_the_command_it_prints_next(tmp_path):
    """cluster/README's `ray job submit ... -- python experiments/pretrain.py` (the demo, one epoch), then exactly
    the next command the job prints, typed in the checkout as the README says."""
    from ray.job_submission import JobSubmissionClient

    env = {**os.environ, "RAY_AUTH_MODE": "disabled"}  # the head and the client must agree on auth
    env["PATH"] = os.path.dirname(sys.executable) + os.pathsep + env["PATH"]  # `python`/`ray` = this venv's
    env["GEODINO_HOME"] = str(tmp_path / "home")  # a job's driver inherits the environment of `ray start`
    env.pop("RAY_ADDRESS", None)
    env.pop("RAY_DATA_LOG_LEVEL", None)  # a user's shell: the tests' own local Ray set it in this process
    # Its own agent port too: another Ray on this machine (the tests' own) already holds the default 52365,
    # and a head whose job agent cannot bind answers every submission with "No available agent".
    gcs_port, dashboard_port, agent_port = free_port(), free_port(), free_port()
    ray_temp = tempfile.mkdtemp(prefix="ray-job-", dir="/tmp")  # not /tmp/ray: keep ray.init() elsewhere unaffected
    head = start_ray_node(["--head", "--port", str(gcs_port), "--dashboard-host", "127.0.0.1", "--dashboard-port",
                           str(dashboard_port), "--dashboard-agent-listen-port", str(agent_port), "--num-cpus", "2",
                           "--temp-dir", ray_temp], env=env)
    env["RAY_ADDRESS"] = f"http://127.0.0.1:{dashboard_port}"  # cluster/README: export RAY_ADDRESS=...
    try:
        for _ in range(int(120 / POLL_S)):
            try:
                client = JobSubmissionClient(env["RAY_ADDRESS"])
                break
            except Exception:  # the dashboard takes a few seconds to answer
                time.sleep(POLL_S)
        else:
            raise AssertionError("the dashboard never answered")
        runs = tmp_path / "runs"
        command = ["ray", "job", "submit", "--working-dir", ".", "--runtime-env", "cluster/runtime_env.yaml", "--",
                   "python", "experiments/pretrain.py", "--epochs", "1", "--storage_path", str(runs)]  # as the README
        job = submit_until_an_agent_answers(command, env)
        assert job.returncode == 0, (job.stdout + job.stderr)[-4000:]
        console = job.stdout + job.stderr  # the job's own log, tailed
        assert "finished 1 epochs" in console and "for the same network at random init" in console
        assert "--use_gpu auto: the Ray cluster has 0 GPUs, so training runs on the CPU" in console
        # A quiet log to follow: each epoch line once, none of Ray Train's report dicts or Ray Data's plans. (Ray
        # Train's detached PlacementGroupCleaner actor may print a thread traceback here when the state API is slow,
        # as on CI's 2 busy cores: Ray's own helper, whose output a job cannot filter; the job still succeeds.)
        assert len([line for line in console.splitlines() if re.search(r"epoch +0  loss \d", line)]) == 1, console
        for noise in ("Reporting training result", "Execution plan of Dataset", "Progress bars disabled",
                      "execution finished in"):
            assert noise not in console, noise
        assert "warning: --" not in console  # an absolute --storage_path outlives the job's working-dir copy
        job_id = [line.split("'")[1] for line in job.stdout.splitlines() if "submitted successfully" in line][0]
        runtime_env = client.get_job_info(job_id).runtime_env
        assert runtime_env["working_dir"].startswith("gcs://_ray_pkg_")  # the checkout travelled with the job
        assert runtime_env["env_vars"]["PYTHONPATH"] == "platform"
        state = read_checkpoint(str(runs / "demo" / "final"))
        assert state["args"]["preset"] == "demo" and state["args"]["epochs"] == 1  # the typed flag won over the preset
        next_line = [line for line in job.stdout.splitlines() if line.startswith("next: ")][-1]
        probe_command = shlex.split(next_line[len("next: "):])
        assert probe_command[:3] == ["ray", "job", "submit"] and "experiments/linear_probe.py" in probe_command
        probe = submit_until_an_agent_answers(probe_command, env)
        assert probe.returncode == 0, (probe.stdout + probe.stderr)[-4000:]
        assert "knn" in probe.stdout and "linear" in probe.stdout
        # Ray 2.60 logged at ERROR level, on every probe, that Ray Data's feature actor might not restart
        # (ray-project/ray#57733); the actors are not restarted, and max_restarts' deprecation warning is not shown
        for noise in ("has constructor arguments in the object store", "RayDeprecationWarning"):
            assert noise not in probe.stdout + probe.stderr, noise
        assert (runs / "probe" / "metrics.json").exists()  # beside the run, not in the job's working-dir copy
    finally:
        stop_ray_node(head)
        shutil.rmtree(ray_temp, ignore_errors=True)


def test_bring_ray_names_each_mistake_in_one_line_and_writes_nothing(tmp_path):
    """cluster/gpu/bring_ray.py carries Ray to a GPU machine without network. Its mistakes ended in tracebacks (a
    CalledProcessError from pip for --python 3, a FileNotFoundError for a missing archive), and pack overwrote
    whatever file --out named. Each is one line and exit 2 now; a pack that pip can fetch was run by hand (3.11:
    21.4 MiB, unpacked, `check` started Ray from it: benchmarks/RESULTS.md)."""
    import tarfile

    script = [sys.executable, str(CLUSTER / "gpu" / "bring_ray.py")]
    mine = tmp_path / "notes.txt"
    mine.write_text("the user's own file")
    (tmp_path / "readme.txt").write_text("not Ray")
    with tarfile.open(tmp_path / "other.tar.xz", "w:xz") as archive:
        archive.add(tmp_path / "readme.txt", arcname="./readme.txt")
    cases = {("pack", "--python", "3", "--out", "r.tar.xz"): "--python '3': give the GPU machine's Python as "
                                                                "major.minor, e.g. 3.12",
             ("pack", "--out", str(mine)): f"--out {mine}: already there and not an archive pack wrote, which it "
                                           "does not replace",
             ("pack", "--out", str(tmp_path / "gone" / "r.tar.xz")): f"no folder {tmp_path / 'gone'} to write it in",
             ("unpack", str(tmp_path / "ray.tar.xz")): "ray.tar.xz: no such file; give the .tar.xz that",
             ("unpack", str(tmp_path / "other.tar.xz"), "--into", str(tmp_path / "site")): "other.tar.xz: not an "
                                                                                         "archive `bring_ray.py pack`",
             ("unpack", str(tmp_path / "other.tar.xz"), "--into", str(mine)): "other.tar.xz: not an archive"}
    for argv, fragment in cases.items():
        done = subprocess.run([*script, *argv], capture_output=True, text=True, cwd=tmp_path, timeout=60)
        lines = done.stderr.strip().splitlines()
        assert done.returncode == 2 and len(lines) == 1 and lines[0].startswith("bring_ray.py: error: "), done
        assert fragment in lines[0], (fragment, lines[0])
    assert mine.read_text() == "the user's own file"
    assert sorted(path.name for path in tmp_path.iterdir()) == ["notes.txt", "other.tar.xz", "readme.txt"]
