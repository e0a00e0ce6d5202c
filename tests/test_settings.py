"""Where the pipeline runs is a setting, not a parameter: the Ray cluster, the workers' CPUs and GPUs, their
restarts and shared storage, and the flows' timeouts and concurrency come from the environment; DVC reruns
nothing when they change, and the files a stage writes do not record them."""

from __future__ import annotations

import warnings

import pytest
import yaml

from tasks.layout import project_root
from tasks.params import FlowSettings, RaySettings, flow_settings, parse_params, ray_settings

from .pipeline_workspace import REPO


def test_the_defaults_run_on_this_machine(tmp_path):
    assert ray_settings({}, tmp_path / "params.yaml") == RaySettings()
    assert RaySettings().address is None and RaySettings().storage_path is None
    assert flow_settings({}) == FlowSettings() and FlowSettings().sweep_concurrency == 1


def test_settings_come_from_the_environment_as_yaml_values(tmp_path):
    env = {"SPARSE_VQVAE_RAY_ADDRESS": "head:6379", "SPARSE_VQVAE_RAY_CPUS_PER_WORKER": "4",
           "SPARSE_VQVAE_RAY_USE_GPU": "true", "SPARSE_VQVAE_RAY_STORAGE_PATH": "s3://bucket/svq",
           "SPARSE_VQVAE_FLOW_STAGE_TIMEOUT": "null", "SPARSE_VQVAE_FLOW_SWEEP_CONCURRENCY": "3"}
    assert ray_settings(env, tmp_path / "params.yaml") == RaySettings(
        address="head:6379", cpus_per_worker=4, use_gpu=True, storage_path="s3://bucket/svq")
    assert flow_settings(env) == FlowSettings(stage_timeout=None, sweep_concurrency=3)
    assert ray_settings({"RAY_ADDRESS": "other:1"}, tmp_path / "params.yaml").address == "other:1"  # Ray's own
    assert ray_settings({"RAY_ADDRESS": "other:1", "SPARSE_VQVAE_RAY_ADDRESS": "head:6379"},
                        tmp_path / "params.yaml").address == "head:6379"


@pytest.mark.parametrize("name, value, message", [
    ("SPARSE_VQVAE_RAY_CPUS_PER_WORKER", "two", "$SPARSE_VQVAE_RAY_CPUS_PER_WORKER: ray.cpus_per_worker must be an integer"),
    ("SPARSE_VQVAE_RAY_USE_GPU", "maybe", "$SPARSE_VQVAE_RAY_USE_GPU: ray.use_gpu must be one of auto, true, false"),
    ("SPARSE_VQVAE_RAY_MAX_FAILURES", "-1", "ray.max_failures must be an integer >= 0"),
    ("SPARSE_VQVAE_FLOW_SWEEP_CONCURRENCY", "0", "flow.sweep_concurrency must be an integer >= 1"),
    ("SPARSE_VQVAE_FLOW_STAGE_TIMEOUT", "[1", "$SPARSE_VQVAE_FLOW_STAGE_TIMEOUT is not a YAML value"),
])
def test_a_bad_setting_names_its_variable(tmp_path, name, value, message):
    with pytest.raises(ValueError) as error:
        ray_settings({name: value}, tmp_path / "params.yaml") if "_RAY_" in name else flow_settings({name: value})
    assert message in str(error.value)


def test_the_committed_params_hold_no_setting():
    params = yaml.safe_load((REPO / "params.yaml").read_text())
    assert params["ray"] == {"num_workers": 2}  # results depend on the worker count: a parameter
    stage = yaml.safe_load((REPO / "dvc.yaml").read_text())["stages"]["train_vqvae"]
    assert "ray" not in stage["params"] and "ray.num_workers" in stage["params"]


def test_old_ray_keys_in_params_yaml_warn_and_still_apply(tmp_path):
    """A params file of before (`ray.address`, `ray.cpus_per_worker`...) loads with a FutureWarning that names
    the variable to set instead; its values are the settings until the environment sets them."""
    raw = yaml.safe_load((REPO / "params.yaml").read_text())
    raw["ray"] |= {"address": "head:6379", "cpus_per_worker": 2}
    path = tmp_path / "params.yaml"
    path.write_text(yaml.safe_dump(raw))
    with pytest.warns(FutureWarning, match=r"ray.address \(SPARSE_VQVAE_RAY_ADDRESS\), ray.cpus_per_worker "
                                           r"\(SPARSE_VQVAE_RAY_CPUS_PER_WORKER\) are settings now"):
        params = parse_params(raw)
    assert params.ray.num_workers == 2 and "address" not in params.for_outputs()["ray"]
    assert ray_settings({}, path) == RaySettings(address="head:6379", cpus_per_worker=2)
    assert ray_settings({"SPARSE_VQVAE_RAY_CPUS_PER_WORKER": "3"}, path).cpus_per_worker == 3
    raw["ray"]["use_gpu"] = "maybe"
    with pytest.raises(ValueError, match="ray.use_gpu must be one of auto, true, false"), warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        parse_params(raw)


def test_the_project_root_of_an_experiment_copy_is_the_project(tmp_path, monkeypatch):
    """DVC runs `dvc exp run --temp`/`--queue` in <project>/.dvc/tmp/exps/<tmp>/ with $DVC_ROOT the project: what
    outlives the run (MLflow's store, checkpoints) goes to the project, not to the copy DVC deletes."""
    copy = tmp_path / "project/.dvc/tmp/exps/tmpabc"
    copy.mkdir(parents=True)
    monkeypatch.chdir(copy)
    monkeypatch.delenv("DVC_ROOT", raising=False)
    assert project_root() == copy  # no DVC: the working directory
    monkeypatch.setenv("DVC_ROOT", str(tmp_path / "project"))
    assert project_root() == tmp_path / "project"
    monkeypatch.chdir(tmp_path / "project")
    assert project_root() == tmp_path / "project"  # a plain `dvc repro`
    monkeypatch.setenv("DVC_ROOT", str(tmp_path / "elsewhere"))  # inherited from another repository's DVC
    assert project_root() == tmp_path / "project"
