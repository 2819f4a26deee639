"""Cluster configs checked against the schemas of the tools that read them, and a real `ray job submit`."""

import os
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


@pytest.mark.timeout(600)
def test_ray_job_submit_runs_pretraining_on_a_real_head(ben_v1_metadata, tmp_path):
    from ray.job_submission import JobStatus, JobSubmissionClient

    env = {**os.environ, "RAY_AUTH_MODE": "disabled"}  # the head and the client must agree on auth
    env["PATH"] = os.path.dirname(sys.executable) + os.pathsep + env["PATH"]  # `python` in the job = this venv's
    env.pop("RAY_ADDRESS", None)
    # Its own agent port too: another Ray on this machine (the tests' own) already holds the default 52365,
    # and a head whose job agent cannot bind answers every submission with "No available agent".
    gcs_port, dashboard_port, agent_port = free_port(), free_port(), free_port()
    ray_temp = tempfile.mkdtemp(prefix="ray-job-", dir="/tmp")  # not /tmp/ray: keep ray.init() elsewhere unaffected
    head = start_ray_node(["--head", "--port", str(gcs_port), "--dashboard-host", "127.0.0.1", "--dashboard-port",
                           str(dashboard_port), "--dashboard-agent-listen-port", str(agent_port), "--num-cpus", "2", "--temp-dir", ray_temp], env=env)
    address = f"http://127.0.0.1:{dashboard_port}"
    try:
        client = None
        for _ in range(int(120 / POLL_S)):
            try:
                client = JobSubmissionClient(address)
                break
            except Exception:  # the dashboard takes a few seconds to answer
                time.sleep(POLL_S)
        assert client is not None, "the dashboard never answered"
        flags = ["--metadata_dir", str(ben_v1_metadata), "--arch", "vit_tiny", "--patch_size", "8", "--out_dim", "64",
                 "--global_crops_size", "32", "--local_crops_size", "16", "--local_crops_number", "2", "--epochs", "1",
                 "--batch_size_per_gpu", "2", "--warmup_epochs", "0", "--storage_path", str(tmp_path / "runs"),
                 "--run_name", "submitted", "--output_dir", str(tmp_path / "out"), "--knn_every", "0"]
        command = [os.path.join(os.path.dirname(sys.executable), "ray"), "job", "submit", "--address", address,
                   "--no-wait", "--working-dir", str(REPO), "--runtime-env", str(CLUSTER / "runtime_env.yaml"), "--",
                   "python", "experiments/pretrain.py", *flags]
        for _ in range(int(60 / POLL_S)):  # the head's job agent starts a little after its dashboard
            submitted = subprocess.run(command, env=env, capture_output=True, text=True, timeout=120, cwd=REPO)
            if "No available agent" not in submitted.stderr:
                break
            time.sleep(POLL_S)
        assert submitted.returncode == 0, submitted.stderr[-2000:]
        job_id = [line.split("'")[1] for line in submitted.stdout.splitlines() if "submitted successfully" in line][0]
        status = None
        for _ in range(int(500 / POLL_S)):
            status = client.get_job_status(job_id)
            if status in (JobStatus.SUCCEEDED, JobStatus.FAILED, JobStatus.STOPPED):
                break
            time.sleep(POLL_S)
        logs = client.get_job_logs(job_id)
        assert status == JobStatus.SUCCEEDED, logs[-3000:]
        assert "finished 1 epochs" in logs
        runtime_env = client.get_job_info(job_id).runtime_env
        assert runtime_env["working_dir"].startswith("gcs://_ray_pkg_")  # the checkout travelled with the job
        assert runtime_env["env_vars"]["PYTHONPATH"] == "platform"
        state = read_checkpoint(str(tmp_path / "out" / "final"))
        assert state["epoch"] == 1 and state["args"]["arch"] == "vit_tiny"
    finally:
        stop_ray_node(head)
        import shutil

        shutil.rmtree(ray_temp, ignore_errors=True)
