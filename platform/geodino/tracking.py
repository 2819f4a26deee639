"""Optional MLflow tracking of pretraining runs and probe sweeps (--mlflow_tracking_uri, --mlflow_experiment).

Why MLflow beside TensorBoard: TensorBoard reads one storage folder; teams that compare runs across
machines and jobs use a tracking server, and SageMaker offers managed MLflow. So a run can also land there:
parameters once, metrics per epoch, tables and plots as artefacts. A pretraining run keeps one MLflow run
across restarts (found again by its storage folder), as it keeps one folder. Sweeps use Ray Tune's own
MLflowLoggerCallback for the trials and add one summary run with the comparison table and plot.
"""

from __future__ import annotations

import logging
import math
import os
import time
from pathlib import Path

from geodino.errors import ConfigError

RUN_TAG = "geodino.run"  # the run's storage folder: how a restarted run finds its MLflow run again
PARAM_BATCH = 100  # MLflow's limit of parameters per log_batch call
PARAM_LENGTH = 6000  # MLflow's limit of one parameter value
TRACKING_SCHEMES = ("file", "http", "https", "databricks", "databricks-uc", "uc", "postgresql", "mysql", "sqlite",
                    "mssql", "arn")  # the tracking URIs MLflow 3 accepts (a SageMaker server's ARN with its plugin)


def absolute_tracking_uri(value: str | None) -> str | None:
    """A plain folder becomes a file: URI of its absolute path (workers run elsewhere); URIs pass unchanged
    (http(s)://, file:, databricks, or a SageMaker MLflow tracking server ARN)."""
    if not value:
        return None
    if value.startswith("file:"):
        return Path(value[len("file:"):].removeprefix("//")).resolve().as_uri()
    if "://" in value or value.startswith(("arn:", "databricks")):
        return value
    return Path(value).resolve().as_uri()


def allow_file_store(uri: str) -> str:
    """MLflow 3 keeps its file store in maintenance mode and refuses it unless MLFLOW_ALLOW_FILE_STORE is set; a
    user who gives a folder asked for exactly that store, so it is allowed for this process."""
    if uri.startswith("file:"):
        os.environ.setdefault("MLFLOW_ALLOW_FILE_STORE", "true")
    return uri


def check_tracking_uri(value: str | None, flag: str = "--mlflow_tracking_uri") -> None:
    """The mistakes a user can make in the flag, named before any work: MLflow absent, a file store that is a file."""
    if not value:
        return
    try:
        import mlflow  # noqa: F401
    except ImportError as error:
        raise ConfigError(f"{flag} needs MLflow: pip install mlflow ({error})") from None
    uri = absolute_tracking_uri(value)
    if uri.startswith("file:") and os.path.isfile(uri[len("file://"):]):
        raise ConfigError(f"{flag} {value}: that is a file; give a folder for MLflow's file store (or a server URI)")
    scheme = uri.split(":", 1)[0].split("+", 1)[0].lower()
    if scheme not in TRACKING_SCHEMES:
        raise ConfigError(f"{flag} {value}: MLflow knows no URI scheme {scheme!r}; give a folder (a file store), "
                          f"http(s)://HOST:PORT of an MLflow server, or one of {', '.join(TRACKING_SCHEMES)}")


def check_tracking_server(value: str | None, flag: str = "--mlflow_tracking_uri") -> None:
    """An http(s) tracking server answers, asked where the run starts (not by validate: submit_sagemaker.py
    validates on the user's machine, which may not reach a server inside the job's VPC). One request, no retries:
    MLflow retries a server that does not answer for about 4 minutes (measured: 248 s), and inside a Ray worker
    after the cluster started; a server that is down or a mistyped port ends here."""
    uri = absolute_tracking_uri(value)
    if not uri or not uri.lower().startswith(("http://", "https://")):
        return
    from mlflow.tracking import MlflowClient

    settings = {"MLFLOW_HTTP_REQUEST_MAX_RETRIES": "0", "MLFLOW_HTTP_REQUEST_TIMEOUT": "10"}
    before = {name: os.environ.get(name) for name in settings}
    os.environ.update(settings)
    mlflow_log = logging.getLogger("mlflow")
    level = mlflow_log.level
    mlflow_log.setLevel(logging.ERROR)  # its warnings about request headers would come before the one-line error
    try:
        MlflowClient(tracking_uri=uri).search_experiments(max_results=1)
    except Exception as error:  # MLflow wraps connection errors, HTTP errors and bad answers alike
        if "connect" in str(error).lower():
            raise ConfigError(f"{flag} {value}: no MLflow server (nothing answers there); start one (mlflow server "
                              "--host 127.0.0.1 --port 5000) or fix the address") from None
        raise ConfigError(f"{flag} {value}: the server there answered MLflow's request with an error "
                          f"({str(error).strip().splitlines()[0][:200]}); check the address and, for a server that "
                          "asks, MLFLOW_TRACKING_USERNAME/MLFLOW_TRACKING_PASSWORD or MLFLOW_TRACKING_TOKEN") from None
    finally:
        mlflow_log.setLevel(level)
        for name, saved in before.items():
            if saved is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = saved


def flat_params(values: dict, prefix: str = "") -> dict[str, str]:
    """Nested settings as MLflow parameters: dotted keys, string values within MLflow's length limit."""
    flat = {}
    for key, value in values.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            flat |= flat_params(value, f"{name}.")
        elif value is not None:
            flat[name] = str(value)[:PARAM_LENGTH]
    return flat


def numeric(metrics: dict) -> dict[str, float]:
    """The values MLflow can chart: finite numbers (bools as 0/1)."""
    return {key: float(value) for key, value in metrics.items()
            if isinstance(value, (int, float)) and math.isfinite(float(value))}


class MLflowRun:
    """One MLflow run, through MlflowClient (no process-wide active run, so it is safe inside a Ray worker)."""

    def __init__(self, tracking_uri: str, experiment: str, run_name: str, params: dict, key: str | None = None):
        from mlflow.tracking import MlflowClient

        self.client = MlflowClient(tracking_uri=allow_file_store(absolute_tracking_uri(tracking_uri)))
        found = self.client.get_experiment_by_name(experiment)
        experiment_id = found.experiment_id if found else self.client.create_experiment(experiment)
        earlier = self.earlier_run(experiment_id, key) if key else None
        if earlier:  # a restart: the same MLflow run continues; its parameters were logged when it began
            self.run_id = earlier
            self.client.update_run(self.run_id, status="RUNNING")
            return
        self.run_id = self.client.create_run(experiment_id, run_name=run_name,
                                             tags={RUN_TAG: key} if key else None).info.run_id
        self.log_params(params)

    def earlier_run(self, experiment_id: str, key: str) -> str | None:
        for run in self.client.search_runs([experiment_id], max_results=5000):
            if run.data.tags.get(RUN_TAG) == key:
                return run.info.run_id
        return None

    def log_params(self, params: dict) -> None:
        from mlflow.entities import Param

        items = [Param(name, value) for name, value in flat_params(params).items()]
        for start in range(0, len(items), PARAM_BATCH):
            self.client.log_batch(self.run_id, params=items[start:start + PARAM_BATCH])

    def log_metrics(self, metrics: dict, step: int) -> None:
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        self.client.log_batch(self.run_id, metrics=[Metric(key, value, now, step)
                                                    for key, value in numeric(metrics).items()])

    def log_artifacts(self, paths: list[str]) -> None:
        for path in paths:
            self.client.log_artifact(self.run_id, path)

    def finish(self, status: str = "FINISHED") -> None:
        self.client.set_terminated(self.run_id, status=status)


def tune_callbacks(tracking_uri: str | None, experiment: str, sweep_name: str) -> list:
    """Ray Tune's MLflow logger for a sweep's trials (one MLflow run each, parameters and per-epoch metrics)."""
    if not tracking_uri:
        return []
    from ray.air.integrations.mlflow import MLflowLoggerCallback

    return [MLflowLoggerCallback(tracking_uri=allow_file_store(absolute_tracking_uri(tracking_uri)),
                                 experiment_name=experiment,
                                 tags={"geodino.sweep": sweep_name})]
