"""`sparse-vqvae --model <MLflow run id>`: tasks.model_source on a real (SQLite) MLflow store whose runs
are made by tasks.tracking, as the pipeline makes them, with the tiny trained model of test_cli."""

from __future__ import annotations

import shutil
import subprocess

import pytest

from sparse_vqvae import cli
from sparse_vqvae.entropy_coding import FrequencyModel
from sparse_vqvae.maps import prior_files
from sparse_vqvae.prior_train import load_prior
from sparse_vqvae.train import load_checkpoint
from tasks.layout import PRIORS
from tasks.model_source import from_mlflow_run
from tasks.params import parse_params
from tasks.tracking import PARENT_ENV, start_parent_run, stage_run

from .test_cli import CLI, trained_run  # noqa: F401 - the fixture: models/vqvae/model.pt, models/prior/*.pt, photo.png

pytestmark = pytest.mark.slow  # MLflow stores and the console script end to end

UNKNOWN = "0123456789abcdef" * 2


@pytest.fixture(scope="module")
def store(trained_run, tmp_path_factory):  # noqa: F811
    """A tracking store with a pipeline run as the stages log it (train_vqvae twice: finished, then failed), a
    later one where DVC skipped train_vqvae (only a prior parameter changed) and one of other model parameters
    without stages. Returns the store's folder and the run ids."""
    folder = tmp_path_factory.mktemp("tracking")
    uri = f"sqlite:///{folder / 'mlflow.db'}"
    params = parse_params({})
    ids = {}
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("MLFLOW_TRACKING_URI", uri)
        ids["parent"] = start_parent_run(params)
        ids["empty"] = start_parent_run(parse_params({"model": {"num_atoms": 64}}), "no stages")
        patch.setenv(PARENT_ENV, ids["parent"])
        with stage_run("train_vqvae", params) as tracker:
            tracker.log_artifact(trained_run / "models/vqvae/model.pt", "checkpoints")
            ids["train_vqvae"] = tracker.run_id
        with pytest.raises(RuntimeError), stage_run("train_vqvae", params):
            raise RuntimeError("a later try that failed")
        with stage_run("train_prior", params) as tracker:  # the artifacts tasks/train_prior.py logs
            for name in ("top.pt", "bottom.pt", "codec.pt"):
                tracker.log_artifact(trained_run / "models/prior" / name, PRIORS.as_posix())
            ids["train_prior"] = tracker.run_id
        with stage_run("evaluate", params) as tracker:
            ids["evaluate"] = tracker.run_id
        prior_only = parse_params({"prior": {"lr": 0.002}})
        ids["prior_only"] = start_parent_run(prior_only)
        patch.setenv(PARENT_ENV, ids["prior_only"])
        with stage_run("train_prior", prior_only) as tracker:
            for name in ("top.pt", "bottom.pt", "codec.pt"):
                tracker.log_artifact(trained_run / "models/prior" / name, PRIORS.as_posix())
            ids["prior_only_prior"] = tracker.run_id
    return folder, ids


@pytest.fixture
def tracked(store, tmp_path, monkeypatch):
    """The store's runs and an empty current folder; $MLFLOW_TRACKING_URI names the store."""
    folder, ids = store
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{folder / 'mlflow.db'}")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    monkeypatch.chdir(tmp_path)
    return ids


@pytest.mark.parametrize("run", ["parent", "train_vqvae", "train_prior", "evaluate", "prior_only"])
def test_a_pipeline_run_or_any_of_its_stage_runs_gives_its_model_files(tracked, tmp_path, run):
    paths = from_mlflow_run(tracked[run])
    assert set(paths) == {"model", "codec_model", "priors"}
    assert all(path.is_relative_to(tmp_path / "cache/sparse-vqvae/mlflow") for path in paths.values())
    assert paths["model"].parent.parent.name == tracked["train_vqvae"]  # the finished try, not the failed one
    prior_run = tracked["prior_only_prior" if run == "prior_only" else "train_prior"]
    assert paths["priors"] == tmp_path / "cache/sparse-vqvae/mlflow" / prior_run / "models/prior"
    model = load_checkpoint(paths["model"]).model
    assert FrequencyModel.load(paths["codec_model"]).fingerprint == model.fingerprint()
    priors = prior_files(paths["priors"])
    assert [p.name for p in priors] == ["top.pt", "bottom.pt"]
    assert all(load_prior(p).fingerprint == model.fingerprint() for p in priors)
    assert from_mlflow_run(tracked[run]) == paths  # the second time from the cache


@pytest.mark.parametrize("form", ["runs:/{}", "runs:/{}/codec"])
def test_a_runs_uri_is_its_run(tracked, form):
    """MLflow's own spelling of a run (``runs:/<id>[/<path>]``) names the same pipeline run as its id."""
    assert from_mlflow_run(form.format(tracked["parent"])) == from_mlflow_run(tracked["parent"])


@pytest.mark.parametrize("reference", ["models/vqvae/model.pt", UNKNOWN.upper(), UNKNOWN[:-1], UNKNOWN + "0", "",
                                       f"runs:/{UNKNOWN[:-1]}"])
def test_what_is_no_run_id_is_left_to_other_sources(tracked, reference):
    assert from_mlflow_run(reference) is None


def test_unknown_runs_and_runs_without_a_model_are_clear_errors(tracked):
    with pytest.raises(ValueError, match=f"^no MLflow run {UNKNOWN} in sqlite:///"):
        from_mlflow_run(UNKNOWN)
    with pytest.raises(FileNotFoundError, match="no finished train_vqvae stage run .* nor one with the same param"):
        from_mlflow_run(tracked["empty"])


def test_the_tracking_uri_without_mlflow_tracking_uri(store, tmp_path, monkeypatch):
    """params.yaml's mlflow.tracking_uri, else mlflow.db in the current folder; never a new database."""
    folder, ids = store
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    monkeypatch.chdir(tmp_path)
    with pytest.raises(FileNotFoundError, match=f"no tracking database {tmp_path / 'mlflow.db'}"):
        from_mlflow_run(ids["parent"])
    assert not (tmp_path / "mlflow.db").exists()
    (tmp_path / "params.yaml").write_text(f"mlflow:\n  tracking_uri: sqlite:///{folder / 'mlflow.db'}\n")
    assert from_mlflow_run(ids["parent"])["model"].is_file()
    monkeypatch.chdir(folder)  # the pipeline's default: mlflow.db in the workspace
    assert from_mlflow_run(ids["parent"])["model"].is_file()


def test_the_cli_compresses_and_decompresses_with_a_run_id(tracked, trained_run, tmp_path, capsys):  # noqa: F811
    shutil.copy(trained_run / "photo.png", tmp_path)
    cli.main(["compress", "photo.png", "-o", "out", "--model", tracked["parent"]])
    cli.main(["decompress", "out/photo.svq", "-o", "back", "--model", tracked["train_prior"]])
    assert (tmp_path / "back/photo.png").is_file()
    capsys.readouterr()  # MLflow's download progress
    with pytest.raises(SystemExit) as exit_:
        cli.main(["compress", "photo.png", "-o", "out", "--model", UNKNOWN])
    assert exit_.value.code == 1
    error = capsys.readouterr().err.strip()
    assert error.startswith(f"sparse-vqvae compress: error: no MLflow run {UNKNOWN}") and "\n" not in error
    with pytest.raises(SystemExit):
        cli.main(["compress", "photo.png", "-o", "out", "--model", "missing.pt"])
    assert "no such checkpoint: missing.pt" in capsys.readouterr().err


def test_the_console_script_resolves_a_run_id_outside_the_repository(tracked, trained_run, tmp_path):  # noqa: F811
    """The installed console script, started in a folder that is not the repository's root, loads the pipeline's
    resolver: tasks/ is not installed, `make install` puts the repository on its venv's path."""
    shutil.copy(trained_run / "photo.png", tmp_path)
    done = subprocess.run([CLI, "compress", "photo.png", "-o", "out", "--model", tracked["parent"]], cwd=tmp_path,
                          capture_output=True, text=True)  # MLFLOW_TRACKING_URI and XDG_CACHE_HOME: tracked's
    assert done.returncode == 0, done.stderr
    assert (tmp_path / "out/photo.svq").is_file() and "note:" not in done.stderr
