import pytest
import yaml

from flows.sweep import DEFAULT_GRID, _assignments, sweep, variant_name
from flows.workspace import dotted, make_workspace, merge
from tasks.params import parse_params

from .pipeline_workspace import REPO


def test_overrides_merge_into_nested_params():
    assert dotted({"model.n_nonzero": 4, "train.steps": 3}) == {"model": {"n_nonzero": 4}, "train": {"steps": 3}}
    assert merge({"model": {"a": 1, "b": 2}, "x": 1}, {"model": {"b": 3}}) == {"model": {"a": 1, "b": 3}, "x": 1}
    with pytest.raises(ValueError, match="must be section.key"):
        dotted({"steps": 3})


def test_the_default_grid_is_one_valid_model_of_each_of_the_study_s_families():
    base = yaml.safe_load((REPO / "params.yaml").read_text())
    models = [parse_params(merge(base, dotted(variant))).model for variant in DEFAULT_GRID]
    assert {model.selection_fn for model in models} == {"vanilla", "rvq", "fsq", "qmp", "omp"}
    assert len({variant_name(variant) for variant in DEFAULT_GRID}) == len(DEFAULT_GRID)  # one workspace each


def test_command_line_assignments_parse_yaml_values():
    assert _assignments("model.selection_fn=omp,model.n_nonzero=4") == {"model.selection_fn": "omp",
                                                                       "model.n_nonzero": 4}
    assert variant_name({"model.selection_fn": "lasso", "model.alpha": 0.3}) == "selection_fn=lasso-alpha=0.3"


def test_a_workspace_is_a_dvc_repository_with_the_pipeline_and_its_params(tmp_path):
    root = make_workspace(tmp_path / "ws", {"model": {"n_nonzero": 3}})
    assert (root / ".dvc").is_dir() and (root / "dvc.yaml").read_text() == (REPO / "dvc.yaml").read_text()
    assert "n_nonzero: 3" in (root / "params.yaml").read_text()
    assert (root / "tasks" / "train_vqvae.py").is_file() and not list(root.rglob("__pycache__"))


@pytest.mark.slow  # starts a Prefect server
def test_a_sweep_refuses_an_invalid_variant_before_running_any(tmp_path):
    grid = [{"model.selection_fn": "omp"}, {"model.selection_fn": "omq"}]
    with pytest.raises(ValueError, match="model.selection_fn must be one of vanilla, rvq, fsq, omp, qmp, lasso; got 'omq'"):
        sweep(grid=grid, root=str(tmp_path / "sweeps"))
    assert not (tmp_path / "sweeps").exists()
