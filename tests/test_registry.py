"""The pipeline's model in MLflow's Model Registry, on a real SQLite store: the evaluate stage logs the VQ-VAE, its
frequency model and priors as one pyfunc model of the pipeline run and registers it (`sparse-vqvae-<dataset>`, a
version per run, the quantizer's alias moved to it); the run's datasets are logged inputs; `sparse-vqvae --model
models:/...` and `mlflow.pyfunc.load_model` compress and decompress with it."""

from __future__ import annotations

import io
import json
import shutil

import mlflow
import numpy as np
import pandas as pd
import pytest
from mlflow.tracking import MlflowClient
from PIL import Image

from sparse_vqvae import cli
from tasks.model_source import from_mlflow_run, logged_model_id
from tasks.params import parse_params
from tasks.tracking import PARENT_ENV, log_pipeline_model, registered_model_name, stage_run, start_parent_run

from .test_cli import trained_run  # noqa: F401 - the fixture: models/vqvae/model.pt, models/prior/*.pt, photo.png

pytestmark = pytest.mark.slow  # MLflow stores, pyfunc models and the CLI end to end

NAME = "sparse-vqvae-embedded"
SUMMARY = {"dataset": "embedded", "root": None, "train": {"count": 64, "height": 16, "width": 16, "sha256": "ab" * 32},
           "test": {"count": 16, "height": 16, "width": 16, "sha256": "cd" * 32}}


@pytest.fixture(scope="module")
def registry(trained_run, tmp_path_factory):  # noqa: F811
    """Three pipeline runs, each with an evaluate stage that registers its model as tasks/evaluate.py does: omp,
    vanilla, omp again. Returns the store's folder and, per run, its parent id and model version."""
    folder = tmp_path_factory.mktemp("registry")
    (folder / "data/prepared").mkdir(parents=True)
    (folder / "data/prepared/summary.json").write_text(json.dumps(SUMMARY))
    runs = []
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{folder / 'mlflow.db'}")
        patch.chdir(folder)
        for selection_fn in ("omp", "vanilla", "omp"):
            params = parse_params({"model": {"selection_fn": selection_fn}})
            parent = start_parent_run(params, f"pipeline {selection_fn}")
            patch.setenv(PARENT_ENV, parent)
            with stage_run("evaluate", params) as tracker:
                version = log_pipeline_model(params, tracker, trained_run / "models/vqvae/model.pt",
                                             trained_run / "models/prior/codec.pt",
                                             [trained_run / "models/prior/top.pt", trained_run / "models/prior/bottom.pt"],
                                             {"test_psnr": 20.5, "codec_bpp": 0.75, "selection_fn": selection_fn})
            runs.append({"parent": parent, "stage": tracker.run_id, "version": version})
    return folder, runs


@pytest.fixture
def tracked(registry, tmp_path, monkeypatch):
    folder, runs = registry
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{folder / 'mlflow.db'}")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    monkeypatch.chdir(tmp_path)
    return MlflowClient(f"sqlite:///{folder / 'mlflow.db'}"), runs


def test_each_pipeline_run_registers_a_version_and_moves_its_alias(tracked, registry):
    client, runs = tracked
    folder = registry[0]
    assert registered_model_name(parse_params({})) == NAME
    assert [str(run["version"].version) for run in runs] == ["1", "2", "3"]
    assert str(client.get_model_version_by_alias(NAME, "omp").version) == "3"
    assert str(client.get_model_version_by_alias(NAME, "vanilla").version) == "2"
    assert str(client.get_model_version_by_alias(NAME, "latest").version) == "3"  # MLflow's own: the newest
    for run in runs:
        version = client.get_model_version(NAME, str(run["version"].version))
        assert version.run_id == run["parent"] and version.tags["pipeline_run"] == run["parent"]
        assert version.tags["test_psnr"] == "20.5" and "0.75" in version.description
        logged = client.get_logged_model(logged_model_id(version))
        assert logged.source_run_id == run["parent"] and logged.name == "codec"  # the pipeline run's model
        outputs = client.get_run(run["parent"]).outputs.model_outputs
        assert [output.model_id for output in outputs] == [logged.model_id]
        assert logged.experiment_id == client.get_run(run["parent"]).info.experiment_id
        assert logged.artifact_location.startswith((folder / "mlartifacts").as_uri())  # beside the store
    assert not (folder / "mlruns").exists()


def test_the_pipeline_run_and_its_stages_log_their_datasets(tracked):
    client, runs = tracked
    for run_id in (runs[0]["parent"], runs[0]["stage"]):
        inputs = client.get_run(run_id).inputs.dataset_inputs
        found = {item.dataset.name: item for item in inputs}
        assert set(found) == {"embedded-train", "embedded-test"}
        assert found["embedded-train"].dataset.digest == "ab" * 8
        assert {tag.value for tag in found["embedded-test"].tags if tag.key == "mlflow.data.context"} == {"evaluation"}


@pytest.mark.parametrize("uri, run", [(f"models:/{NAME}@latest", 2), (f"models:/{NAME}@omp", 2),
                                      (f"models:/{NAME}@vanilla", 1), (f"models:/{NAME}/1", 0),
                                      (f"models:/{NAME}/latest", 2), ("model id", 1)])
def test_a_models_uri_gives_the_registered_files(tracked, trained_run, tmp_path, uri, run):  # noqa: F811
    client, runs = tracked
    model_id = logged_model_id(runs[run]["version"])
    uri = f"models:/{model_id}" if uri == "model id" else uri
    paths = from_mlflow_run(uri)
    assert set(paths) == {"model", "codec_model", "priors"}
    assert paths["model"].parent.parent == tmp_path / "cache/sparse-vqvae/mlflow/models" / model_id
    assert paths["model"].read_bytes() == (trained_run / "models/vqvae/model.pt").read_bytes()
    assert paths["codec_model"].read_bytes() == (trained_run / "models/prior/codec.pt").read_bytes()
    assert sorted(p.name for p in paths["priors"].iterdir()) == ["bottom.pt", "top.pt"]
    assert from_mlflow_run(uri) == paths  # the second time from the cache


def test_a_runs_uri_is_the_run(tracked):
    client, runs = tracked
    parent = runs[0]["parent"]
    with pytest.raises(FileNotFoundError, match=f"no finished train_vqvae stage run in pipeline run {parent}"):
        from_mlflow_run(f"runs:/{parent}/codec")  # as the run id: these runs have no stage that trained a model


@pytest.mark.parametrize("uri, message", [(f"models:/{NAME}@nobody", "no MLflow model models:/sparse-vqvae-embedded@nobody in sqlite:///"),
                                          ("models:/missing/1", "no MLflow model models:/missing/1 in sqlite:///")])
def test_unknown_models_are_clear_errors(tracked, uri, message):
    with pytest.raises(ValueError) as error:
        from_mlflow_run(uri)
    assert str(error.value).startswith(message) and "\n" not in str(error.value)


def test_the_cli_and_the_pyfunc_compress_and_decompress_with_the_registered_model(tracked, trained_run, tmp_path,
                                                                                  capsys):  # noqa: F811
    shutil.copy(trained_run / "photo.png", tmp_path)
    cli.main(["compress", "photo.png", "-o", "out", "--model", f"models:/{NAME}@latest"])
    cli.main(["decompress", "out/photo.svq", "-o", "back", "--model", f"models:/{NAME}/1"])
    capsys.readouterr()
    data = (tmp_path / "out/photo.svq").read_bytes()

    model = mlflow.pyfunc.load_model(f"models:/{NAME}@omp")
    coded = model.predict(pd.DataFrame({"image": [(tmp_path / "photo.png").read_bytes(), b"not an image"]}))
    assert coded["data"][0] == data and pd.isna(coded["error"][0])  # the CLI's file, byte for byte
    assert coded["data"][1] is None and coded["error"][1].startswith("not an image this model can read")
    decoded = model.predict(pd.DataFrame({"data": [data]}), params={"mode": "decompress"})
    pixels = np.array(Image.open(io.BytesIO(decoded["image"][0])))
    assert np.array_equal(pixels, np.array(Image.open(tmp_path / "back/photo.png")))
    small = io.BytesIO()  # the priors' size: they learned an embedding per position of the training maps
    Image.open(tmp_path / "photo.png").crop((0, 0, 16, 16)).save(small, format="PNG")
    factorised, prior = (model.predict(pd.DataFrame({"image": [small.getvalue()]}), params={"entropy": entropy})
                         for entropy in ("factorised", "prior"))
    assert prior["data"][0] is not None, prior["error"][0]
    back = model.predict(pd.DataFrame({"data": [factorised["data"][0], prior["data"][0]]}), params={"mode": "decompress"})
    assert back["image"][0] == back["image"][1]  # the same codes, coded by either entropy model
