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
import shutil
import subprocess
import tempfile
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
# The runs table as the experiment's shared view (MLflow's "share view": an experiment tag holding the table's
# state, opened with ?viewStateShareKey=<key>): the columns that compare pipeline runs, newest first. The UI's
# GenAI / Model training switch follows ?workflowType= (else the browser's last choice, GenAI at first).
RUNS_VIEW = "sparse-vqvae-runs"
RUNS_VIEW_TAG = f"mlflow.sharedViewState.{RUNS_VIEW}"
RUNS_VIEW_COLUMNS = ("attributes.`Models`", "params.`model.selection_fn`",
                     "params.`model.num_atoms`", "metrics.`test_psnr`", "metrics.`codec_bpp`", "metrics.`codec_psnr`",
                     "metrics.`prior_codec_bpp`", "metrics.`test_ssim`", "tags.`stage`")
_BATCH = 900  # MLflow's log_batch takes at most 1000 metrics, 100 params
MODEL_NAME = "sparse-vqvae-{dataset}"  # the registered model of a dataset's pipeline runs, a version per run
LOGGED_MODEL = "codec"  # the name of the pipeline run's logged model
CODEC_CODE = Path(__file__).with_name("mlflow_codec.py")  # the pyfunc, logged as code ("models from code")


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
    """The experiment ``name``, created if new; marked as model training unless someone chose its kind, with the
    runs table's shared view (``runs_view_url``) unless it has one."""
    kind, value = EXPERIMENT_KIND
    view = json.dumps({"selectedColumns": list(RUNS_VIEW_COLUMNS), "orderByKey": "attributes.start_time",
                       "orderByAsc": False})
    experiment = client.get_experiment_by_name(name)
    if experiment is None:
        return client.create_experiment(name, artifact_location=artifact_root(uri), tags={kind: value, RUNS_VIEW_TAG: view})
    if kind not in experiment.tags:  # made by an older version of this code, or by hand
        client.set_experiment_tag(experiment.experiment_id, kind, value)
    if experiment.tags.get(RUNS_VIEW_TAG) != view:  # ours: this code's columns (a user's own view is their browser's)
        client.set_experiment_tag(experiment.experiment_id, RUNS_VIEW_TAG, view)
    return experiment.experiment_id


def runs_view_url(ui: str, experiment: str) -> str:
    """The MLflow UI at ``ui`` (http://host:port) on ``experiment``'s runs: the model-training view, the shared view's
    columns."""
    return f"{ui.rstrip('/')}/#/experiments/{experiment}/runs?viewStateShareKey={RUNS_VIEW}&workflowType=machine_learning"


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
        log_datasets(client, run.info.run_id)  # what the stage read (prepare_data: what it made)
        status = "FINISHED"
    finally:
        client.set_terminated(run.info.run_id, status)
        if owned:
            client.set_terminated(parent, status)


def registered_model_name(params: PipelineParams) -> str:
    return MODEL_NAME.format(dataset=params.data.name)


def log_datasets(client: MlflowClient, run_id: str) -> None:
    """The prepared train and test splits as the run's input datasets (``log_input``): named
    ``<dataset>-<split>``, their digest the content hash prepare_data recorded, their source where the images
    came from; nothing before the data is prepared."""
    from mlflow.data.code_dataset_source import CodeDatasetSource
    from mlflow.data.meta_dataset import MetaDataset
    from mlflow.entities import DatasetInput, InputTag
    from mlflow.types.schema import Schema, TensorSpec
    import numpy as np

    try:
        summary = json.loads(DATA_SUMMARY.read_text())
    except (OSError, ValueError):
        return
    inputs = []
    for split, context in (("train", "training"), ("test", "evaluation")):
        record = summary.get(split)
        if not isinstance(record, dict) or "sha256" not in record:
            continue
        shape = (-1, record.get("height", -1), record.get("width", -1), 3)
        source = CodeDatasetSource({"dataset": summary.get("dataset"), "root": summary.get("root"),
                                    "prepared": str(Path.cwd() / DATA_SUMMARY.parent), "images": record.get("count")})
        dataset = MetaDataset(source, name=f"{summary.get('dataset')}-{split}", digest=record["sha256"][:16],
                              schema=Schema([TensorSpec(np.dtype("uint8"), shape, "images")]))
        inputs.append(DatasetInput(dataset._to_mlflow_entity(), tags=[InputTag("mlflow.data.context", context)]))
    if inputs:
        client.log_inputs(run_id, datasets=inputs)


def log_pipeline_model(params: PipelineParams, tracker: StageTracker, model: Path, codec_model: Path,
                       priors: list[Path], metrics: dict[str, Any]) -> Any:
    """The pipeline's codec - VQ-VAE, frequency model, priors - as one MLflow model (a pyfunc that compresses
    and decompresses: tasks/mlflow_codec.py) of the pipeline run (the parent of ``tracker``'s stage run), with
    the run's datasets, registered as a new version of ``sparse-vqvae-<dataset>``. The alias named after its
    quantizer (``@omp``, ``@vanilla``...) moves to that version; ``@latest`` is MLflow's own, the newest.
    Returns the model version."""
    import mlflow
    from mlflow.models import Model
    from mlflow.models.signature import ModelSignature
    from mlflow.tracking._tracking_service.utils import _use_tracking_uri
    from mlflow.types.schema import ColSpec, ParamSchema, ParamSpec, Schema

    import sparse_vqvae

    client = tracker.client
    parent = client.get_run(tracker.run_id).data.tags.get("mlflow.parentRunId", tracker.run_id)
    name = registered_model_name(params)
    signature = ModelSignature(
        inputs=Schema([ColSpec("binary", "image", required=False), ColSpec("binary", "data", required=False)]),
        outputs=Schema([ColSpec("binary", "data", required=False), ColSpec("binary", "image", required=False),
                        ColSpec("string", "error", required=False)]),
        params=ParamSchema([ParamSpec("mode", "string", "compress"), ParamSpec("quality", "long", None),
                            ParamSpec("entropy", "string", "factorised")]))
    figures = {key: float(value) for key, value in metrics.items() if key in _MODEL_FIGURES}
    # The headline figures on the pipeline run too (the runs table compares pipeline runs; the logged model gets
    # the run's figures as its own metrics).
    tracker.client.log_batch(parent, metrics=[Metric(key, value, int(time.time() * 1000), 0)
                                              for key, value in figures.items() if math.isfinite(value)])
    with tempfile.TemporaryDirectory() as scratch, _quiet_downloads():
        folder = Path(scratch) / "priors"  # the priors alone (models/prior/ holds the frequency model and plots too)
        folder.mkdir()
        for path in priors:
            shutil.copy2(path, folder / path.name)
        # Made here, in the pipeline run's experiment (Model.log alone would put it in the process's active one).
        logged = client.create_logged_model(client.get_run(parent).info.experiment_id, name=LOGGED_MODEL,
                                            source_run_id=parent, tags={**_tags(params), "stage_run": tracker.run_id},
                                            model_type="image codec")
        with _use_tracking_uri(tracker.uri):
            info = Model.log(artifact_path=None, flavor=mlflow.pyfunc, run_id=parent, model_id=logged.model_id,
                             python_model=str(CODEC_CODE), signature=signature, registered_model_name=name,
                             artifacts={"model": str(model), "codec_model": str(codec_model), "priors": str(folder)},
                             pip_requirements=[f"sparse-vqvae=={sparse_vqvae.__version__}", f"mlflow=={mlflow.__version__}"])
    version = info.registered_model_version
    for key, value in {**_tags(params), "pipeline_run": parent, "git_commit": git_commit(),
                       "data_hash": data_hash(), **{k: f"{v:.4g}" for k, v in figures.items()}}.items():
        client.set_model_version_tag(name, str(version), key, value)
    client.set_registered_model_alias(name, params.model.selection_fn, str(version))
    summary = ", ".join(f"{key} {value:.4g}" for key, value in figures.items())
    client.update_model_version(name, str(version), description=f"{params.model.selection_fn} on "
                                f"{params.data.name}: {summary}")
    log_datasets(client, parent)
    return client.get_model_version(name, str(version))


_MODEL_FIGURES = ("test_psnr", "test_ssim", "codec_bpp", "codec_psnr", "prior_codec_bpp", "prior_bits_per_image")


@contextmanager
def _quiet_downloads() -> Iterator[None]:
    """No progress bars while MLflow copies the model's files (one per file, to the stage's output)."""
    name = "MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR"
    before = os.environ.get(name)
    os.environ[name] = "false"
    try:
        yield
    finally:
        if before is None:
            os.environ.pop(name, None)
        else:
            os.environ[name] = before


def main() -> None:
    """``python -m tasks.tracking [UI]``: where the MLflow UI at UI (default http://127.0.0.1:5000) shows this
    pipeline's runs (params.yaml's experiment, in its tracking store), for ``make mlflow-ui``."""
    import sys

    from .params import load_params

    ui = sys.argv[1] if len(sys.argv) > 1 else "http://127.0.0.1:5000"
    params = load_params()
    uri = tracking_uri(params)
    if uri.startswith("sqlite:///") and not Path(uri.removeprefix("sqlite:///")).is_file():
        print(f"no runs yet ({uri.removeprefix('sqlite:///')} does not exist): `make run` makes them; "
              f"then open {ui}")
        return
    print(f"the pipeline's runs: {runs_view_url(ui, experiment_id(MlflowClient(uri), params.mlflow.experiment, uri))}")


if __name__ == "__main__":
    main()
