"""MLflow for the stages: one parent run per pipeline run, a nested run per stage.

Everything goes through ``MlflowClient`` with explicit run ids, never the fluent API's global
"active run": stages run in separate processes (DVC) and on Ray workers, and an inherited
``MLFLOW_RUN_ID`` must not make them resume someone else's run.

The parent: the flow creates one per flow run, hands its id to the stages in
``SPARSE_VQVAE_PARENT_RUN`` and ends it. Under a plain ``dvc repro`` the stages share the parent run
of the same parameters and code (found by tag, created by the first stage that runs); nobody is
there to end it afterwards, and a stage cannot know whether DVC will run another, so each stage
reopens that parent and ends it again (FINISHED, or FAILED with the stage): whichever stage is the
last leaves it ended.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import subprocess
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

from mlflow.entities import Metric, Param
from mlflow.tracking import MlflowClient

from .layout import DATA_SUMMARY, project_root
from .params import PARAMS_FILE, PipelineParams

PARENT_ENV = "SPARSE_VQVAE_PARENT_RUN"
# MLflow 3's UI opens an experiment without this tag in its GenAI view (traces, prompts); with it,
# on the runs table. Tag and value as the UI itself sets them (mlflow/server/js: "Machine learning").
EXPERIMENT_KIND = ("mlflow.experimentKind", "custom_model_development")
_BATCH = 900  # MLflow's log_batch takes at most 1000 metrics, 100 params


def tracking_uri(params: PipelineParams, workspace: Path | None = None) -> str:
    """params' ``mlflow.tracking_uri``, else $MLFLOW_TRACKING_URI, else a SQLite file in the workspace - by
    default the project's (``layout.project_root``: a ``dvc exp run --temp``/``--queue`` copy logs to the
    project's store, not to one DVC deletes with the copy) - as an absolute path: DVC experiments, Ray workers
    and Prefect deployments run elsewhere."""
    return (params.mlflow.tracking_uri or os.environ.get("MLFLOW_TRACKING_URI")
            or f"sqlite:///{(workspace or project_root()).resolve() / 'mlflow.db'}")


def artifact_root(uri: str) -> str | None:
    """Artifacts beside a SQLite database (``mlartifacts/``); a server chooses its own."""
    if uri.startswith("sqlite:///"):
        return (Path(uri.removeprefix("sqlite:///")).parent / "mlartifacts").as_uri()
    return None


def experiment_id(client: MlflowClient, name: str, uri: str) -> str:
    """The experiment ``name``, created if new; marked as model training unless someone chose its kind."""
    kind, value = EXPERIMENT_KIND
    experiment = client.get_experiment_by_name(name)
    if experiment is None:
        return client.create_experiment(name, artifact_location=artifact_root(uri), tags={kind: value})
    if kind not in experiment.tags:  # made by an older version of this code, or by hand
        client.set_experiment_tag(experiment.experiment_id, kind, value)
    return experiment.experiment_id


def git_commit() -> str:
    """The commit of the code that runs (the package's own repository), or "unknown"."""
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=Path(__file__).parent, capture_output=True,
                             text=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired):
        return "unknown"
    return out.stdout.strip() if out.returncode == 0 else "unknown"


def data_hash() -> str:
    """The prepared data's content hash (from prepare_data's summary), or "unprepared"."""
    try:
        summary = json.loads(DATA_SUMMARY.read_text())
        return hashlib.sha256((summary["train"]["sha256"] + summary["test"]["sha256"]).encode()).hexdigest()[:16]
    except (OSError, ValueError, KeyError, TypeError):
        return "unprepared"


class StageTracker:
    """Logs one stage's params, metrics and artifacts to its MLflow run."""

    def __init__(self, uri: str, run_id: str) -> None:
        self.uri, self.run_id = uri, run_id
        self.client = MlflowClient(uri)
        # Figures that measure the machine, not the model (wall times, throughputs): logged to MLflow
        # and kept out of the DVC-tracked metrics, which two runs of the same code must reproduce.
        self.timings: dict[str, float] = {}

    def log_metrics(self, metrics: dict[str, Any], step: int = 0, prefix: str = "") -> None:
        now = int(time.time() * 1000)
        batch = [Metric(prefix + key, float(value), now, step) for key, value in metrics.items()
                 if isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)]
        self.log_metric_batch(batch)

    def log_history(self, rows: list[dict[str, Any]]) -> None:
        """Rows of ``{"step": n, name: value...}`` (a training history), each value at its step."""
        now = int(time.time() * 1000)
        self.log_metric_batch([Metric(key, float(value), now, row["step"]) for row in rows for key, value in row.items()
                               if key != "step" and isinstance(value, (int, float)) and not isinstance(value, bool)
                               and math.isfinite(value)])

    def log_metric_batch(self, batch: list[Metric]) -> None:
        for start in range(0, len(batch), _BATCH):
            self.client.log_batch(self.run_id, metrics=batch[start : start + _BATCH])

    def log_artifact(self, path: str | Path, folder: str | None = None) -> None:
        self.client.log_artifact(self.run_id, str(path), folder)


def _log_params(client: MlflowClient, run_id: str, params: dict[str, Any]) -> None:
    items = [Param(key, json.dumps(value) if not isinstance(value, str) else value) for key, value in params.items()]
    for start in range(0, len(items), 100):
        client.log_batch(run_id, params=items[start : start + 100])


def _run_params(params: PipelineParams) -> dict[str, Any]:
    return {**params.flat(), "git_commit": git_commit(), "data_hash": data_hash()}


def _tags(params: PipelineParams) -> dict[str, str]:
    return {"selection_fn": params.model.selection_fn, "dataset": params.data.name}


def start_parent_run(params: PipelineParams, run_name: str = "pipeline", key: str | None = None,
                     workspace: Path | None = None) -> str:
    """A new parent run for one pipeline run; returns its id."""
    uri = tracking_uri(params, workspace)
    client = MlflowClient(uri)
    tags = {**_tags(params), "mlflow.runName": run_name, "pipeline_key": key or ""}
    run = client.create_run(experiment_id(client, params.mlflow.experiment, uri), tags=tags, run_name=run_name)
    _log_params(client, run.info.run_id, {k: v for k, v in _run_params(params).items() if k != "data_hash"})
    return run.info.run_id


def end_parent_run(params: PipelineParams, run_id: str, ok: bool, workspace: Path | None = None) -> None:
    MlflowClient(tracking_uri(params, workspace)).set_terminated(run_id, "FINISHED" if ok else "FAILED")


def _parent_for(params: PipelineParams, client: MlflowClient, experiment: str) -> tuple[str, bool]:
    """The parent run's id, and whether the stages own it (a ``dvc repro`` parent: reopened here, ended
    by each stage) rather than the flow that named it in ``SPARSE_VQVAE_PARENT_RUN``."""
    if os.environ.get(PARENT_ENV):
        return os.environ[PARENT_ENV], False
    content = PARAMS_FILE.read_bytes() if PARAMS_FILE.is_file() else b""
    key = hashlib.sha256(content + git_commit().encode()).hexdigest()[:16]
    found = client.search_runs([experiment], filter_string=f"tags.pipeline_key = '{key}'", max_results=1)
    if not found:
        return start_parent_run(params, "dvc repro", key), True
    if found[0].info.status != "RUNNING":
        client.update_run(found[0].info.run_id, status="RUNNING")
    return found[0].info.run_id, True


@contextmanager
def stage_run(stage: str, params: PipelineParams) -> Iterator[StageTracker]:
    """A nested MLflow run for ``stage`` under the pipeline's parent; FINISHED or FAILED on exit."""
    uri = tracking_uri(params)
    client = MlflowClient(uri)
    experiment = experiment_id(client, params.mlflow.experiment, uri)
    parent, owned = _parent_for(params, client, experiment)
    tags = {**_tags(params), "stage": stage, "mlflow.parentRunId": parent, "mlflow.runName": stage}
    run = client.create_run(experiment, tags=tags, run_name=stage)
    _log_params(client, run.info.run_id, _run_params(params))
    status = "FAILED"
    try:
        yield StageTracker(uri, run.info.run_id)
        status = "FINISHED"
    finally:
        client.set_terminated(run.info.run_id, status)
        if owned:
            client.set_terminated(parent, status)
