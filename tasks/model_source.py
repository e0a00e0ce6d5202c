"""``sparse-vqvae --model <MLflow model or run>``: the CLI's model source for the pipeline's MLflow runs and models.

Registered in pyproject.toml (entry-point group ``sparse_vqvae.model_sources``), so the library
itself never imports MLflow. References:

- a registered model, as MLflow writes it: ``models:/sparse-vqvae-embedded@latest`` (the newest version),
  ``models:/NAME@ALIAS`` (``@omp``: the newest version of that quantizer), ``models:/NAME/VERSION``, or a logged
  model's id, ``models:/m-...``: the model the evaluate stage logged (tasks/tracking.py, ``log_pipeline_model``),
  its files downloaded once to ``<cache>/models/<model id>/``;
- a run: its id (32 hex digits) or ``runs:/<run id>[/...]``.

The run may be a pipeline's parent run or one of its stage runs; the
model comes from the pipeline's ``train_vqvae`` stage run (artifact ``checkpoints/model.pt``), the
frequency model and priors from its ``train_prior`` stage run (artifacts ``models/prior/``): the
given stage run itself, else the newest finished one under the same parent. A pipeline run for which
DVC skipped train_vqvae (say, only prior parameters changed) has none of its own: then the model is the
newest finished train_vqvae run's with the same data and model-side parameters. Artifacts are
downloaded once, to ``$XDG_CACHE_HOME/sparse-vqvae/mlflow/<stage run id>/`` (default ``~/.cache``).

Tracking URI: the one the pipeline in the current folder logs to (params.yaml's, else
$MLFLOW_TRACKING_URI, else ``sqlite:///<current folder>/mlflow.db``).
"""

from __future__ import annotations

import os
import re
import shutil
import tempfile
from pathlib import Path
from typing import Any

from .layout import FREQUENCY_MODEL, PRIORS, VQVAE

RUN_ID = re.compile(r"[0-9a-f]{32}")
RUN_URI = re.compile(r"runs:/(?P<run>[0-9a-f]{32})(?:/.*)?")
MODEL_ARTIFACT = f"checkpoints/{VQVAE.name}"  # where train_vqvae logs the model
PRIOR_ARTIFACTS = PRIORS.as_posix()  # where train_prior logs the frequency model and priors
PARENT_TAG = "mlflow.parentRunId"
# What the model train_vqvae makes depends on (dvc.yaml: the prepared data, the pretrained model, these params).
MODEL_PARAMS = ("data.", "data_hash", "pretrain.", "model.", "train.", "ray.")


def from_mlflow_run(reference: str) -> dict[str, Path] | None:
    """The model files of MLflow model ``reference`` (a ``models:/`` URI), or of the pipeline run that MLflow run
    ``reference`` (an id or a ``runs:/`` URI) belongs to; None if it is neither."""
    if reference.startswith("models:/"):
        return from_mlflow_model(reference)
    if match := RUN_URI.fullmatch(reference):
        reference = match["run"]
    if not RUN_ID.fullmatch(reference):
        return None
    from mlflow.exceptions import MlflowException
    from mlflow.tracking import MlflowClient

    uri = _tracking_uri()
    if uri.startswith("sqlite:///") and not Path(uri.removeprefix("sqlite:///")).is_file():
        raise FileNotFoundError(f"no MLflow run {reference}: no tracking database {uri.removeprefix('sqlite:///')}")
    client = MlflowClient(uri)
    try:
        run = client.get_run(reference)
    except MlflowException as error:
        raise ValueError(f"no MLflow run {reference} in {uri}: {error.message.splitlines()[0]}") from error
    tags = run.data.tags
    parent = tags[PARENT_TAG] if "stage" in tags and PARENT_TAG in tags else reference
    stages = {stage: run if tags.get("stage") == stage else _newest_finished(client, run, stage, parent)
              for stage in ("train_vqvae", "train_prior")}
    vqvae = stages["train_vqvae"] or _same_model(client, stages["train_prior"] or run)
    if vqvae is None:
        raise FileNotFoundError(f"MLflow run {reference}: no finished train_vqvae stage run in pipeline run {parent}, "
                                f"nor one with the same parameters")
    model = _download(client, vqvae.info.run_id, MODEL_ARTIFACT)
    if model is None:
        raise FileNotFoundError(f"MLflow run {vqvae.info.run_id} (train_vqvae) has no artifact {MODEL_ARTIFACT}")
    paths = {"model": model}
    prior = stages["train_prior"]
    priors = _download(client, prior.info.run_id, PRIOR_ARTIFACTS) if prior is not None else None
    if priors is not None:  # else (no train_prior run, or one from before it logged them) the CLI's defaults
        paths |= {"codec_model": priors / FREQUENCY_MODEL.name, "priors": priors}
    return paths


def from_mlflow_model(uri: str) -> dict[str, Path]:
    """The files of the model that ``models:/`` URI ``uri`` names: a registered model's version or alias, or a
    logged model's id. A logged model's files never change, so its cache is never stale; an alias is looked up
    every time (it moves)."""
    from mlflow.exceptions import MlflowException
    from mlflow.models import Model
    from mlflow.store.artifact.utils.models import get_model_name_and_version
    from mlflow.tracking import MlflowClient

    tracking = _tracking_uri()
    if tracking.startswith("sqlite:///") and not Path(tracking.removeprefix("sqlite:///")).is_file():
        raise FileNotFoundError(f"no MLflow model {uri}: no tracking database {tracking.removeprefix('sqlite:///')}")
    client = MlflowClient(tracking)
    try:
        found = get_model_name_and_version(client, uri)
        model_id = found[0] if len(found) == 1 else logged_model_id(client.get_model_version(*found))
        if model_id is None:
            raise FileNotFoundError(f"MLflow model {uri} (version {found[1]} of {found[0]}) is no logged model of "
                                    "this pipeline (registered from a run's artifacts)")
        target = cache_folder() / "models" / model_id
        if not target.is_dir():
            import mlflow.artifacts

            target.parent.mkdir(parents=True, exist_ok=True)
            scratch = Path(tempfile.mkdtemp(prefix=".download-", dir=target.parent))
            try:
                downloaded = mlflow.artifacts.download_artifacts(artifact_uri=f"models:/{model_id}", dst_path=str(scratch),
                                                                 tracking_uri=tracking)
                if not target.exists():  # else another process was quicker
                    Path(downloaded).replace(target)
            finally:
                shutil.rmtree(scratch, ignore_errors=True)
    except MlflowException as error:
        raise ValueError(f"no MLflow model {uri} in {tracking}: {error.message.splitlines()[0]}") from error
    artifacts = Model.load(target).flavors.get("python_function", {}).get("artifacts", {})
    if "model" not in artifacts:
        raise FileNotFoundError(f"MLflow model {uri} ({model_id}) is not a sparse-vqvae codec: it has no model artifact")
    return {key: target / artifacts[key]["path"] for key in ("model", "codec_model", "priors") if key in artifacts}


def logged_model_id(version: Any) -> str | None:
    """The logged model a registered version was made from (``models:/<model id>``: its source, where the SQL
    store keeps it), or None for one registered from a run's artifacts."""
    if getattr(version, "model_id", None):
        return version.model_id
    source = version.source or ""
    return source.removeprefix("models:/") if source.startswith("models:/m-") else None


def _newest_finished(client: Any, run: Any, stage: str, parent: str) -> Any | None:
    """The newest finished ``stage`` run of pipeline run ``parent`` (in ``run``'s experiment)."""
    query = f"tags.stage = '{stage}' and attributes.status = 'FINISHED' and tags.`{PARENT_TAG}` = '{parent}'"
    found = client.search_runs([run.info.experiment_id], query, max_results=1, order_by=["attributes.start_time DESC"])
    return found[0] if found else None


def _same_model(client: Any, like: Any) -> Any | None:
    """When DVC skipped train_vqvae (its deps unchanged), the pipeline run has no train_vqvae run of its own: the
    model it used is that of the newest finished train_vqvae run with the same data and model-side parameters."""
    wanted = {key: value for key, value in like.data.params.items() if key.startswith(MODEL_PARAMS)}
    if not wanted:
        return None
    query = "tags.stage = 'train_vqvae' and attributes.status = 'FINISHED'"
    for candidate in client.search_runs([like.info.experiment_id], query, order_by=["attributes.start_time DESC"]):
        if all(candidate.data.params.get(key) == value for key, value in wanted.items()):
            return candidate
    return None


def _tracking_uri() -> str:
    """The store the pipeline in the current folder logs to (tracking.tracking_uri: params.yaml's, else
    $MLFLOW_TRACKING_URI, else its mlflow.db); outside a pipeline folder, $MLFLOW_TRACKING_URI or ./mlflow.db."""
    from .params import PARAMS_FILE, load_params
    from .tracking import tracking_uri

    if PARAMS_FILE.is_file():
        return tracking_uri(load_params(PARAMS_FILE), Path.cwd())
    return os.environ.get("MLFLOW_TRACKING_URI") or f"sqlite:///{Path.cwd().resolve() / 'mlflow.db'}"


def cache_folder() -> Path:
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "sparse-vqvae" / "mlflow"


def _download(client: Any, run_id: str, artifact: str) -> Path | None:
    """Artifact ``artifact`` (file or folder) of ``run_id``, from the cache or downloaded into it; None if
    the run has no such artifact. A finished run's artifacts do not change, so the cache is never stale."""
    target = cache_folder() / run_id / artifact
    if target.exists():
        return target
    parent, name = artifact.rpartition("/")[::2]
    if name not in {Path(info.path).name for info in client.list_artifacts(run_id, parent or None)}:
        return None
    target.parent.mkdir(parents=True, exist_ok=True)
    scratch = Path(tempfile.mkdtemp(prefix=".download-", dir=target.parent))
    try:
        downloaded = Path(client.download_artifacts(run_id, artifact, str(scratch)))
        if not target.exists():  # else another process was quicker
            downloaded.replace(target)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    return target
