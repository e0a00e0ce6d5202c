"""Two clones of the same pipeline give the same outputs: every DVC out has the same hash, and after
``dvc repro`` in a fresh clone ``git status`` is clean (dvc.lock, the metrics, the plots unchanged).
Nothing that differs between two runs (a wall time, an absolute path, a run id, a date) may sit in
a tracked file."""

from __future__ import annotations

import shutil

import pytest
import yaml

from flows.workspace import make_workspace
from tasks.params import parse_params

from .pipeline_workspace import TINY, dvc, ran_stages, run

GIT = ["git", "-c", "user.name=test", "-c", "user.email=test@localhost"]


def out_hashes(root) -> dict[str, str]:
    """Every out, metric and plot of dvc.lock: path -> md5."""
    lock = yaml.safe_load((root / "dvc.lock").read_text())
    return {out["path"]: out["md5"] for stage in lock["stages"].values() for out in stage.get("outs", [])}


def test_checkpoints_record_the_parameters_but_not_where_runs_are_recorded_or_run():
    params = parse_params({**TINY, "mlflow": {"tracking_uri": "sqlite:////home/someone/repo/mlflow.db"},
                           "ray": {"address": "10.0.0.7:6379"}})
    recorded = params.for_outputs()
    assert recorded["model"]["num_atoms"] == TINY["model"]["num_atoms"] and recorded["ray"]["num_workers"] == 2
    assert "mlflow" not in recorded and "address" not in recorded["ray"]
    assert "/home/someone" not in repr(recorded) and "10.0.0.7" not in repr(recorded)


@pytest.mark.slow
def test_a_fresh_clone_reproduces_every_out_and_leaves_git_clean(tmp_path):
    # The MLflow store outside both clones, by absolute path (as a sweep sets it): where runs are
    # recorded must not reach the models.
    store = tmp_path / "store" / "mlflow.db"
    first = make_workspace(tmp_path / "first", {**TINY, "mlflow": {**TINY["mlflow"],
                                                                   "tracking_uri": f"sqlite:///{store}"}}, git=True)
    run([*GIT, "add", "-A"], first)
    run([*GIT, "commit", "-q", "-m", "the pipeline"], first)
    dvc("repro", cwd=first)
    run([*GIT, "add", "-A"], first)
    run([*GIT, "commit", "-q", "-m", "its results: dvc.lock, metrics, plots"], first)

    second = tmp_path / "second"
    run(["git", "clone", "-q", str(first), str(second)], tmp_path)
    for kernel in (first / "sparse_vqvae").rglob("*.so"):  # git holds its source; `pip install` builds it
        shutil.copy2(kernel, second / kernel.relative_to(first))
    done = dvc("repro", cwd=second)
    stages = list(yaml.safe_load((second / "dvc.yaml").read_text())["stages"])
    assert sorted(ran_stages(done.stdout)) == sorted(stages)  # no DVC cache in a clone: every stage runs again

    hashes = out_hashes(first)
    assert len(hashes) >= 10 and out_hashes(second) == hashes
    assert run(["git", "status", "--porcelain"], second).stdout == ""
    for path in hashes:  # the stages saw the store's path; no out keeps it
        files = [second / path] if (second / path).is_file() else sorted((second / path).rglob("*"))
        for file in (f for f in files if f.is_file()):
            assert str(store.parent).encode() not in file.read_bytes(), file
