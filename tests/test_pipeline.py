"""The pipeline end to end with the real tools: DVC, Prefect (ephemeral local server), MLflow on
SQLite, Ray (local), LMDB - on tiny parameters, in a temporary workspace."""

from __future__ import annotations

import csv
import json
import sqlite3

import pytest
import yaml
from mlflow.tracking import MlflowClient

from flows.pipeline import dvc_stages, pipeline
from flows.workspace import make_workspace
from sparse_vqvae.config import ModelConfig
from tasks import compare_variants
from tasks.tracking import StageTracker

from .pipeline_workspace import REPO, TINY, dvc, ran_stages, run

STAGES = ["prepare_data", "pretrain_dictionary", "train_vqvae", "extract_codes", "train_prior", "evaluate"]


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


@pytest.mark.slow  # DVC, Prefect, Ray, MLflow end to end
def test_rate_distortion_has_both_entropy_models_and_the_references(workspace):
    with open(workspace / "eval/rate_distortion.csv") as handle:
        rows = {(row["codec"], row["setting"]): row for row in csv.DictReader(handle)}
    quality = str(ModelConfig().n_nonzero)  # our setting is the quality: all K slots of the default OMP model
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


@pytest.mark.slow  # DVC, Prefect, Ray, MLflow end to end
def test_a_prior_only_change_reruns_only_the_prior_and_evaluation(workspace):
    set_param(workspace, "prior", "lr", 0.002)
    done = dvc("repro", cwd=workspace)
    assert ran_stages(done.stdout) == ["train_prior", "evaluate"]


@pytest.mark.slow  # DVC, Prefect, Ray, MLflow end to end
def test_the_prefect_flow_completes_and_leaves_dvc_up_to_date(workspace):
    set_param(workspace, "evaluate", "samples", 6)
    state = pipeline(workspace=str(workspace), return_state=True)
    assert state.is_completed()
    metrics = state.result()
    assert metrics["test_psnr"] > 0
    assert "Data and pipelines are up to date" in dvc("status", cwd=workspace).stdout
    assert ran_stages(dvc("repro", cwd=workspace).stdout) == []
    with sqlite3.connect(workspace / "mlflow.db") as db:  # the flow's own parent run, with the evaluate stage under it
        names = {name for (name,) in db.execute("select name from runs")}
    assert "pipeline" in names


@pytest.mark.slow  # DVC, Prefect, Ray, MLflow end to end
def test_an_experiment_with_a_changed_prior_parameter_reruns_the_prior_only(workspace):
    git = ["git", "-c", "user.name=test", "-c", "user.email=test@localhost"]
    run([*git, "add", "-A"], workspace)
    run([*git, "commit", "-q", "-m", "pipeline at tiny settings"], workspace)
    done = dvc("exp", "run", "-S", "prior.lr=0.005", cwd=workspace)
    assert ran_stages(done.stdout) == ["train_prior", "evaluate"]
    shown = json.loads(dvc("exp", "show", "--json", cwd=workspace).stdout)
    assert "0.005" in json.dumps(shown)


@pytest.mark.slow  # DVC, Prefect, Ray, MLflow end to end
def test_invalid_params_fail_before_any_stage_works(tmp_path):
    root = make_workspace(tmp_path / "ws", {**TINY, "model": {**TINY["model"], "selection_fn": "omq"}})
    done = dvc("repro", cwd=root, check=False)
    assert done.returncode != 0
    assert "model.selection_fn must be one of vanilla, rvq, fsq, omp, qmp, lasso; got 'omq'" in done.stderr + done.stdout
    assert not (root / "data/prepared").exists()
    with pytest.raises(ValueError, match="model.selection_fn must be one of"):
        pipeline(workspace=str(root))
