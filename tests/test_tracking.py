"""MLflow bookkeeping of the stages, against a real SQLite store in a temporary folder: the parent run
of a plain ``dvc repro`` ends with its last stage, and the experiment opens on its runs table."""

from __future__ import annotations

import json
from pathlib import Path

import mlflow
import pytest
import yaml
from mlflow.tracking import MlflowClient

from tasks.params import load_params
from tasks.tracking import (EXPERIMENT_KIND, PARENT_ENV, RUNS_VIEW, RUNS_VIEW_COLUMNS, RUNS_VIEW_TAG, experiment_id,
                            runs_view_url, stage_run, start_parent_run, tracking_uri)

from .pipeline_workspace import TINY

UI_SCRIPTS = sorted((Path(mlflow.__file__).parent / "server/js/build/static/js").glob("*.js"))


@pytest.fixture
def workspace(tmp_path, monkeypatch):
    """A folder with the tiny params.yaml as the working directory (where the stages find it and put
    mlflow.db), and no parent run handed down by a flow: as under a plain ``dvc repro``."""
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(TINY))
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv(PARENT_ENV, raising=False)
    params = load_params()
    return params, MlflowClient(tracking_uri(params))


def _stages(client: MlflowClient, params) -> dict[str, object]:
    experiment = client.get_experiment_by_name(params.mlflow.experiment)
    return {run.data.tags["stage"]: run for run in client.search_runs([experiment.experiment_id])
            if "stage" in run.data.tags}


def test_the_parent_of_a_dvc_repro_ends_with_each_stage_and_fails_with_a_failed_one(workspace):
    params, client = workspace
    with stage_run("prepare_data", params):
        parent = client.get_run(_stages(client, params)["prepare_data"].data.tags["mlflow.parentRunId"])
        assert parent.info.status == "RUNNING"
    assert client.get_run(parent.info.run_id).info.status == "FINISHED"  # nothing may follow: it is ended now

    with pytest.raises(RuntimeError, match="out of memory"):
        with stage_run("pretrain_dictionary", params):
            assert client.get_run(parent.info.run_id).info.status == "RUNNING"  # the next stage reopened it
            raise RuntimeError("out of memory")
    assert client.get_run(parent.info.run_id).info.status == "FAILED"
    assert _stages(client, params)["pretrain_dictionary"].info.status == "FAILED"

    with stage_run("pretrain_dictionary", params):  # the rerun after the fix: the same parent, finished again
        pass
    assert client.get_run(parent.info.run_id).info.status == "FINISHED"
    parents = {run.data.tags["mlflow.parentRunId"] for run in client.search_runs(
        [client.get_experiment_by_name(params.mlflow.experiment).experiment_id]) if "stage" in run.data.tags}
    assert parents == {parent.info.run_id}


def test_a_flows_parent_is_left_to_the_flow(workspace, monkeypatch):
    params, client = workspace
    parent = start_parent_run(params, "pipeline")
    monkeypatch.setenv(PARENT_ENV, parent)
    with stage_run("prepare_data", params):
        pass
    assert _stages(client, params)["prepare_data"].info.status == "FINISHED"
    assert client.get_run(parent).info.status == "RUNNING"  # the flow ends it after its last stage


def test_the_experiment_opens_on_its_runs_table(workspace):
    params, client = workspace
    kind, value = EXPERIMENT_KIND
    ui = "".join(path.read_text(errors="replace") for path in UI_SCRIPTS)  # the installed MLflow's UI reads them
    reads_tag, knows_kind = f'"{kind}"' in ui, f'"{value}"' in ui  # string literals of its scripts
    assert reads_tag and knows_kind, f"MLflow's UI reads no tag {kind!r} or knows no kind {value!r}"
    uri = tracking_uri(params)
    made = experiment_id(client, "new", uri)
    assert client.get_experiment(made).tags[kind] == value

    older = client.create_experiment("older")  # made before the tag was set: tagged on next use
    assert experiment_id(client, "older", uri) == older
    assert client.get_experiment(older).tags[kind] == value

    chosen = client.create_experiment("chosen", tags={kind: "genai_development"})  # someone's choice stays
    experiment_id(client, "chosen", uri)
    assert client.get_experiment(chosen).tags[kind] == "genai_development"


def test_the_runs_table_opens_in_the_model_training_view_with_the_comparing_columns(workspace):
    """The experiment carries the runs table's state as MLflow's own "shared view" (an experiment tag the UI reads
    when the address names its key), and the address selects the UI's model-training view; the installed UI's
    scripts know the tag prefix, the query parameters and the value."""
    params, client = workspace
    ui = "".join(path.read_text(errors="replace") for path in UI_SCRIPTS)
    for literal in ('"mlflow.sharedViewState."', '"viewStateShareKey"', '"workflowType"', '"machine_learning"'):
        assert literal in ui, f"MLflow's UI has no {literal}"
    assert RUNS_VIEW_TAG == f"mlflow.sharedViewState.{RUNS_VIEW}"
    made = experiment_id(client, params.mlflow.experiment, tracking_uri(params))
    view = json.loads(client.get_experiment(made).tags[RUNS_VIEW_TAG])
    assert view["selectedColumns"] == list(RUNS_VIEW_COLUMNS) and "metrics.`test_psnr`" in view["selectedColumns"]
    assert runs_view_url("http://127.0.0.1:5000/", made) == (
        f"http://127.0.0.1:5000/#/experiments/{made}/runs?viewStateShareKey={RUNS_VIEW}&workflowType=machine_learning")
    client.set_experiment_tag(made, RUNS_VIEW_TAG, "{}")  # an older version's columns: replaced
    experiment_id(client, params.mlflow.experiment, tracking_uri(params))
    assert json.loads(client.get_experiment(made).tags[RUNS_VIEW_TAG]) == view
