"""The pipeline end to end with the real tools: DVC, Prefect (ephemeral local server), MLflow on
SQLite, Ray (local), LMDB - on tiny parameters, in a temporary workspace."""

from __future__ import annotations

import csv
import json
import logging
import os
import shutil
import sqlite3
import sys
import threading

import psutil
import pytest
import torch
import yaml
from mlflow.tracking import MlflowClient
from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import (ArtifactFilter, ArtifactFilterFlowRunId, FlowRunFilter, FlowRunFilterId,
                                            LogFilter, LogFilterFlowRunId)
from prefect.logging.handlers import APILogWorker

from flows.pipeline import dvc_stages, pipeline
from flows.sweep import sweep, variant_name
from flows.workspace import make_workspace
from sparse_vqvae.config import ModelConfig
from sparse_vqvae.train import load_checkpoint
from tasks import compare_variants
from tasks.layout import CHECKPOINTS, PRETRAINED, VQVAE
from tasks.model_source import logged_model_id
from tasks.tracking import StageTracker

from . import processes
from .pipeline_workspace import REPO, TINY, dvc, environment, ran_stages, run

STAGES = ["prepare_data", "train_judge", "pretrain_dictionary", "train_vqvae", "extract_codes", "train_prior", "evaluate"]


@pytest.fixture(scope="module")
def workspace(tmp_path_factory):
    """A tiny workspace after one `dvc repro` (about two minutes: Ray dominates)."""
    root = make_workspace(tmp_path_factory.mktemp("pipeline") / "ws", TINY, git=True)
    done = dvc("repro", cwd=root)
    assert ran_stages(done.stdout) == STAGES
    return root


def set_param(root, section: str, key: str, value) -> None:
    params = yaml.safe_load((root / "params.yaml").read_text())
    params[section][key] = value
    (root / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))


def parent_runs(root, name: str) -> list:
    """The MLflow parent runs called ``name`` in ``root``'s store, oldest first."""
    client = MlflowClient(f"sqlite:///{root / 'mlflow.db'}")
    experiment = client.get_experiment_by_name("sparse-vqvae")
    return client.search_runs([experiment.experiment_id], f"attributes.run_name = '{name}'",
                              order_by=["attributes.start_time ASC"])


def workspace_processes(root) -> list[psutil.Process]:
    """Processes (of this user, other than this test's) whose working directory is in ``root``."""
    found = []
    for process in psutil.process_iter():
        try:
            if process.pid != os.getpid() and process.cwd().startswith(str(root)):
                found.append(process)
        except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
            continue
    return found


def test_every_stage_is_a_task_module_and_the_flow_runs_dvc_yamls_stages():
    assert dvc_stages(REPO) == STAGES
    spec = yaml.safe_load((REPO / "dvc.yaml").read_text())["stages"]
    for stage in STAGES:
        assert spec[stage]["cmd"] == f"python -m tasks.{stage}"
        assert (REPO / "tasks" / f"{stage}.py").is_file()


@pytest.mark.slow  # DVC, Prefect, Ray, MLflow end to end
def test_repro_produces_every_out_metric_and_plot(workspace):
    spec = yaml.safe_load((workspace / "dvc.yaml").read_text())
    for stage in spec["stages"].values():
        for entry in stage.get("outs", []) + stage.get("metrics", []) + stage.get("plots", []):
            path = entry if isinstance(entry, str) else next(iter(entry))
            assert (workspace / path).exists(), path
    metrics = json.loads((workspace / "eval/metrics.json").read_text())
    for key in ("test_mse", "test_psnr", "test_ssim", "baseline_psnr", "prior_bits_per_image",
                "factorized_bits_per_image", "top_atoms_used_share", "bottom_atom_perplexity", "codec_bpp",
                "codec_psnr", "codec_ms_ssim", "prior_codec_bpp", "jpeg_min_bpp"):
        assert isinstance(metrics[key], float), key
    assert 0 < metrics["test_ssim"] <= 1 and metrics["prior_bits_per_image"] > 0
    for picture in ("eval/pictures/reconstructions.png", "eval/pictures/samples.png",
                    "models/vqvae/dictionary_top.png", "models/vqvae/training_loss.png"):
        assert (workspace / picture).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", picture
    assert json.loads((workspace / "metrics/train_vqvae.json").read_text())["steps"] == TINY["train"]["steps"]
    for stage in STAGES:  # wall times beside the DVC metrics, not in them: they differ on every run
        assert json.loads((workspace / f"metrics/timings/{stage}.json").read_text())["seconds"] > 0
        assert "seconds" not in json.loads((workspace / f"metrics/{stage}.json").read_text())
    shown = dvc("plots", "show", "--json", cwd=workspace)
    assert "stage1_loss" in shown.stdout and "atom_usage" in shown.stdout
    assert "eval/pictures/samples.png" in shown.stdout  # the grids beside the curves


@pytest.mark.slow  # DVC, Prefect, Ray, MLflow end to end
def test_rate_distortion_has_both_entropy_models_and_the_references(workspace):
    with open(workspace / "eval/rate_distortion.csv") as handle:
        rows = {(row["codec"], row["setting"]): row for row in csv.DictReader(handle)}
    quality = str(ModelConfig().n_nonzero)  # our setting is the quality: all K slots of the workspace's OMP model
    factorised, prior = rows[("sparse-vqvae omp (factorised)", quality)], rows[("sparse-vqvae omp (prior)", quality)]
    assert int(factorised["images"]) == TINY["evaluate"]["rate_distortion_images"]
    assert int(prior["images"]) == TINY["evaluate"]["prior_coding_images"]
    assert ("JPEG", "50") in rows and 0 < float(rows[("JPEG", "50")]["ms_ssim"]) <= 1
    assert (workspace / "eval/pictures/rate_distortion.png").read_bytes()[:4] == b"\x89PNG"


@pytest.mark.slow  # DVC, Prefect, Ray, MLflow end to end
def test_the_sweep_comparison_puts_every_model_beside_the_references(workspace, tmp_path):
    client = MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    experiment = client.create_experiment("compare", artifact_location=(tmp_path / "artifacts").as_uri())
    run_id = client.create_run(experiment).info.run_id
    tracker = StageTracker(f"sqlite:///{tmp_path / 'mlflow.db'}", run_id)
    figures = compare_variants.run({"a": workspace, "b": workspace}, tmp_path / "out", tracker)
    assert set(figures) == {"a (factorised)", "a (prior)", "b (factorised)", "b (prior)"}
    assert figures["a (prior)"]["psnr"] > 0 and figures["a (factorised)"]["bpp"] > 0
    with open(tmp_path / "out/rate_distortion.csv") as handle:
        codecs = [row["codec"] for row in csv.DictReader(handle)]
    assert codecs.count("JPEG") == 7 and "b (prior)" in codecs  # the references once, every model's points
    for name in ("reconstructions.png", "samples.png", "rate_distortion.png"):
        assert (tmp_path / "out" / name).read_bytes()[:4] == b"\x89PNG"
    logged = {a.path for a in client.list_artifacts(run_id, "pictures")}
    assert logged == {"pictures/reconstructions.png", "pictures/samples.png", "pictures/rate_distortion.png"}
    assert "a_factorised_bpp" in client.get_run(run_id).data.metrics


@pytest.mark.slow  # DVC, Prefect, Ray, MLflow end to end
def test_a_second_repro_runs_nothing(workspace):
    done = dvc("repro", cwd=workspace)
    assert ran_stages(done.stdout) == []
    assert "Data and pipelines are up to date" in dvc("status", cwd=workspace).stdout


@pytest.mark.slow  # DVC, Prefect, MLflow end to end
def test_the_sweep_runs_its_variants_at_once(workspace, tmp_path, monkeypatch):
    """Two variants, concurrency 2: their pipeline flow runs overlap in time. (Their workspaces start as copies of
    the reproduced one; each variant changes an evaluate setting only, so its flow reruns that stage alone. With
    every stage up to date a flow run took about 2 s, and one once started 1.7 s after the other had ended.)"""
    grid = [{"evaluate.samples": 2}, {"evaluate.samples": 3}]
    root = tmp_path / "sweeps"
    for variant in grid:
        shutil.copytree(workspace, root / variant_name(variant), ignore=shutil.ignore_patterns("mlflow.db", "mlartifacts"))
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlflow.db'}")
    overrides = {f"{section}.{key}": value for section, values in TINY.items() for key, value in values.items()}
    rows = sweep(grid=grid, overrides=overrides, root=str(root), concurrency=2)
    assert [row["variant"] for row in rows] == [variant_name(variant) for variant in grid]
    client = MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    experiment = client.get_experiment_by_name("sparse-vqvae")
    runs = [client.search_runs([experiment.experiment_id], f"attributes.run_name = 'sweep {variant_name(v)}'")[0]
            for v in grid]
    assert all(run.info.status == "FINISHED" for run in runs)
    assert max(run.info.start_time for run in runs) < min(run.info.end_time for run in runs)  # at once
    assert (root / "summary.csv").is_file() and (root / "comparison/rate_distortion.png").is_file()


@pytest.mark.slow  # DVC, Prefect, Ray, MLflow end to end
def test_mlflow_holds_a_parent_with_a_nested_run_per_stage(workspace):
    client = MlflowClient(f"sqlite:///{workspace / 'mlflow.db'}")
    experiment = client.get_experiment_by_name("sparse-vqvae")
    runs = client.search_runs([experiment.experiment_id])
    stages = {run.data.tags.get("stage"): run for run in runs if "stage" in run.data.tags}
    assert set(stages) == set(STAGES)
    parents = {run.data.tags["mlflow.parentRunId"] for run in stages.values()}
    assert len(parents) == 1
    parent = client.get_run(parents.pop())
    assert parent.info.status == "FINISHED"  # ended with the last stage: nobody else is there to end it
    assert experiment.tags["mlflow.experimentKind"] == "custom_model_development"
    assert parent.data.params["model.selection_fn"] == '"omp"' or parent.data.params["model.selection_fn"] == "omp"
    assert "git_commit" in parent.data.params
    train = stages["train_vqvae"]
    assert train.info.status == "FINISHED" and train.data.tags["selection_fn"] == "omp"
    assert len(train.data.params["data_hash"]) == 16
    history = client.get_metric_history(train.info.run_id, "loss")
    assert [m.step for m in history] == list(range(1, TINY["train"]["steps"] + 1))  # every step (log_every 1), rank 0 only
    tested = {m.step for m in client.get_metric_history(train.info.run_id, "test_psnr")}
    assert tested - {0} == {3, 6}  # every eval_every steps (step 0: the stage's summary)
    artifacts = [a.path for a in client.list_artifacts(train.info.run_id, "pictures")]
    assert "pictures/dictionary_top.png" in artifacts and "pictures/training_loss.png" in artifacts
    assert [a.path for a in client.list_artifacts(train.info.run_id, "checkpoints")] == ["checkpoints/model.pt"]
    evaluate = [a.path for a in client.list_artifacts(stages["evaluate"].info.run_id)]
    assert "metrics.json" in evaluate
    assert client.get_run(stages["evaluate"].info.run_id).data.metrics["test_psnr"] > 0
    assert client.get_metric_history(stages["train_prior"].info.run_id, "top_bits_per_image")
    # The pipeline run's model, registered; its datasets; its headline figures, for the runs table.
    version = client.get_model_version_by_alias("sparse-vqvae-embedded", "omp")
    assert version.run_id == parent.info.run_id and version.tags["selection_fn"] == "omp"
    logged = client.get_logged_model(logged_model_id(version))
    assert logged.experiment_id == experiment.experiment_id and logged.source_run_id == parent.info.run_id
    assert {d.dataset.name for d in parent.inputs.dataset_inputs} == {"embedded-train", "embedded-test"}
    assert {d.dataset.name for d in train.inputs.dataset_inputs} == {"embedded-train", "embedded-test"}
    assert parent.data.metrics["test_psnr"] == json.loads((workspace / "eval/metrics.json").read_text())["test_psnr"]


@pytest.mark.slow  # DVC end to end
def test_where_stage_1_runs_is_no_parameter(workspace):
    """A params file of before, with the cluster's address and the workers' resources (settings now), reruns
    nothing; the worker count (a parameter: the results depend on it) reruns stage 1."""
    before = (workspace / "params.yaml").read_text()
    try:
        params = yaml.safe_load(before)
        params["ray"] |= {"cpus_per_worker": 2, "max_failures": 3, "use_gpu": False}
        (workspace / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
        assert "Data and pipelines are up to date" in dvc("status", cwd=workspace).stdout
        set_param(workspace, "ray", "num_workers", 1)
        assert "train_vqvae:" in dvc("status", cwd=workspace).stdout
    finally:
        (workspace / "params.yaml").write_text(before)


@pytest.mark.slow  # DVC, Prefect, Ray, MLflow end to end
def test_a_prior_only_change_reruns_only_the_prior_and_evaluation(workspace):
    set_param(workspace, "prior", "lr", 0.002)
    done = dvc("repro", cwd=workspace)
    assert ran_stages(done.stdout) == ["train_prior", "evaluate"]


@pytest.mark.slow  # DVC end to end
def test_init_from_starts_stage_1_from_a_trained_model_and_only_its_setting_reruns_the_stage(workspace):
    """pretrain.init_from: the stage 1 start is the trained model's weights (no warm-up); setting it back, DVC's run
    cache restores the warmed-up start and nothing downstream reruns."""
    before = (workspace / "params.yaml").read_text()
    shutil.copy(workspace / VQVAE, workspace / "trained.pt")
    try:
        set_param(workspace, "pretrain", "init_from", "trained.pt")
        assert ran_stages(dvc("repro", "pretrain_dictionary", cwd=workspace).stdout) == ["pretrain_dictionary"]
        start, trained = (load_checkpoint(workspace / path).model.state_dict() for path in (PRETRAINED, "trained.pt"))
        assert all(torch.equal(start[key], trained[key]) for key in trained)
        assert json.loads((workspace / "metrics/pretrain_dictionary.json").read_text())["steps_trained"] == 0
    finally:
        (workspace / "params.yaml").write_text(before)
        (workspace / "trained.pt").unlink()
    dvc("repro", "pretrain_dictionary", cwd=workspace)
    assert "Data and pipelines are up to date" in dvc("status", cwd=workspace).stdout


@pytest.mark.slow  # DVC, Prefect, Ray, MLflow end to end
def test_the_prefect_flow_completes_and_leaves_dvc_up_to_date(workspace, caplog):
    set_param(workspace, "evaluate", "samples", 6)
    caplog.set_level(logging.INFO, logger="prefect")  # the tests' Prefect logs warnings only (conftest)
    state = pipeline(workspace=str(workspace), return_state=True)
    assert state.is_completed()
    flow_run = state.state_details.flow_run_id
    APILogWorker.drain_all(timeout=60)  # the last lines may wait in its batch (sent every 2 s) when the flow returns
    with get_client(sync_client=True) as client:
        task_runs = {run.name: run for run in client.read_task_runs(flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[flow_run])))}
        logs = client.read_logs(log_filter=LogFilter(flow_run_id=LogFilterFlowRunId(any_=[flow_run])))
        artifacts = client.read_artifacts(artifact_filter=ArtifactFilter(flow_run_id=ArtifactFilterFlowRunId(any_=[flow_run])))
    lines = {}  # each stage's output, line by line, in its task run's log
    for log in logs:
        lines.setdefault(log.task_run_id, []).append(log.message)
    evaluate = lines[task_runs["evaluate"].id]
    assert "Running stage 'evaluate':" in evaluate and any(line.startswith("summary (omp on embedded)") for line in evaluate)
    assert any(line.startswith("registered: models:/sparse-vqvae-embedded/") for line in evaluate)
    assert "Stage 'prepare_data' didn't change, skipping" in lines[task_runs["prepare_data"].id]
    [artifact] = artifacts  # the run's summary, with its figures, its stages and links to its MLflow runs
    parent = parent_runs(workspace, "pipeline")[-1]
    assert artifact.type == "markdown" and artifact.key == f"sparse-vqvae-{workspace.name}"
    assert f"#/experiments/{parent.info.experiment_id}/runs/{parent.info.run_id}" in artifact.data
    assert "| test PSNR (dB) |" in artifact.data and "| evaluate | ran |" in artifact.data
    assert "| prepare_data | up to date (DVC) |" in artifact.data and "models:/sparse-vqvae-embedded/" in artifact.data
    metrics = state.result()
    assert metrics["test_psnr"] > 0
    assert "Data and pipelines are up to date" in dvc("status", cwd=workspace).stdout
    assert ran_stages(dvc("repro", cwd=workspace).stdout) == []
    with sqlite3.connect(workspace / "mlflow.db") as db:  # the flow's own parent run, with the evaluate stage under it
        names = {name for (name,) in db.execute("select name from runs")}
    assert "pipeline" in names


@pytest.mark.slow  # DVC, Prefect, MLflow end to end
def test_a_stage_past_its_timeout_is_stopped_with_what_it_started(workspace, monkeypatch):
    """SPARSE_VQVAE_FLOW_STAGE_TIMEOUT=4: the up-to-date stages pass (DVC checks one in about a second), evaluate,
    which has to run again, times out; its processes are gone, DVC's lock with them, and the flow run failed."""
    monkeypatch.setenv("SPARSE_VQVAE_FLOW_STAGE_TIMEOUT", "4")
    set_param(workspace, "evaluate", "samples", 5)
    state = pipeline(workspace=str(workspace), run_name="timed out", return_state=True)
    assert state.is_failed()
    with get_client(sync_client=True) as client:
        runs = client.read_task_runs(flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[state.state_details.flow_run_id])))
    states = {run.name: run.state.name for run in runs}
    assert states == {**{stage: "Completed" for stage in STAGES[:-1]}, "evaluate": "TimedOut"}, states
    assert workspace_processes(workspace) == []
    assert parent_runs(workspace, "timed out")[-1].info.status == "FAILED"
    monkeypatch.delenv("SPARSE_VQVAE_FLOW_STAGE_TIMEOUT")
    assert ran_stages(dvc("repro", cwd=workspace).stdout) == ["evaluate"]  # no lock left behind: DVC runs it again


@pytest.mark.slow  # DVC, Prefect, MLflow end to end
def test_two_flow_runs_in_one_workspace_take_turns(workspace):
    """Started together in one workspace, two flow runs both complete, one after the other: their pipeline runs do
    not overlap. (Without the lock their stages interleave, and a `dvc repro` that waits too long for DVC's own lock
    fails.)"""
    states = {}

    def run_flow(name: str) -> None:
        states[name] = pipeline(workspace=str(workspace), run_name=name, return_state=True)

    threads = [threading.Thread(target=run_flow, args=(name,)) for name in ("turn a", "turn b")]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert all(state.is_completed() for state in states.values()), states
    first, second = sorted((parent_runs(workspace, name)[-1] for name in states), key=lambda r: r.info.start_time)
    assert first.info.end_time <= second.info.start_time


@pytest.mark.slow  # DVC, Prefect, Ray, MLflow end to end
def test_an_experiment_with_a_changed_prior_parameter_reruns_the_prior_only(workspace):
    git = ["git", "-c", "user.name=test", "-c", "user.email=test@localhost"]
    run([*git, "add", "-A"], workspace)
    run([*git, "commit", "-q", "-m", "pipeline at tiny settings"], workspace)
    done = dvc("exp", "run", "-S", "prior.lr=0.005", cwd=workspace)
    assert ran_stages(done.stdout) == ["train_prior", "evaluate"]
    shown = json.loads(dvc("exp", "show", "--json", cwd=workspace).stdout)
    assert "0.005" in json.dumps(shown)


@pytest.mark.slow  # DVC queue, MLflow end to end
def test_a_queued_experiment_keeps_its_runs_and_checkpoints_in_the_project(workspace):
    """`dvc exp run --queue` and `dvc queue start`: DVC runs the experiment in a copy under .dvc/tmp/exps/ and
    deletes the copy; the experiment's MLflow runs, its registered model and its checkpoints are the project's."""
    git = ["git", "-c", "user.name=test", "-c", "user.email=test@localhost"]
    run([*git, "add", "-A"], workspace)
    run([*git, "commit", "-q", "--allow-empty", "-m", "before the queued experiment"], workspace)
    checkpoints = set((workspace / CHECKPOINTS / "prior").iterdir())
    dvc("exp", "run", "--queue", "-S", "prior.lr=0.0042", cwd=workspace)
    leader = processes.start([sys.executable, "-m", "dvc", "queue", "start"], workspace, environment())
    output = leader.stdout.read()  # `dvc queue start` returns at once; its worker stays in its session
    os.waitid(os.P_PID, leader.pid, os.WEXITED | os.WNOWAIT)  # exited, not reaped: its session id stays ours
    workers = [p for p in processes.members(leader) if p.pid != leader.pid]
    assert workers, output
    _, alive = psutil.wait_procs(workers, timeout=1200)  # the worker exits when the queue is empty
    assert not alive and processes.kill_all(leader) <= 1
    status = dvc("queue", "status", cwd=workspace).stdout
    assert "Success" in status and "Failed" not in status, status
    assert not list((workspace / ".dvc/tmp/exps").glob("tmp*"))  # the copy is gone...
    client = MlflowClient(f"sqlite:///{workspace / 'mlflow.db'}")  # ...its runs are in the project's store
    experiment = client.get_experiment_by_name("sparse-vqvae")
    stages = {r.data.tags["stage"]: r for r in client.search_runs([experiment.experiment_id], "params.`prior.lr` = '0.0042'")
              if "stage" in r.data.tags}
    assert set(stages) == {"train_prior", "evaluate"} and all(r.info.status == "FINISHED" for r in stages.values())
    parent = stages["evaluate"].data.tags["mlflow.parentRunId"]
    assert client.get_run(parent).info.status == "FINISHED"
    assert client.search_model_versions(f"name = 'sparse-vqvae-embedded' and run_id = '{parent}'")
    assert len(set((workspace / CHECKPOINTS / "prior").iterdir()) - checkpoints) == 1  # its prior's, kept


@pytest.mark.slow  # DVC, Prefect, Ray, MLflow end to end
def test_invalid_params_fail_before_any_stage_works(tmp_path):
    root = make_workspace(tmp_path / "ws", {**TINY, "model": {**TINY["model"], "selection_fn": "omq"}})
    done = dvc("repro", cwd=root, check=False)
    assert done.returncode != 0
    assert "model.selection_fn must be one of vanilla, rvq, fsq, omp, qmp, lasso; got 'omq'" in done.stderr + done.stdout
    assert not (root / "data/prepared").exists()
    with pytest.raises(ValueError, match="model.selection_fn must be one of"):
        pipeline(workspace=str(root))
