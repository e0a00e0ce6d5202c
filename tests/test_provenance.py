"""Checkpoints belong to the code that made them: a library change starts training afresh, an
unchanged rerun resumes (and says so in the stage's metrics)."""

from __future__ import annotations

import json
import shutil
import sys

import pytest

from flows.workspace import make_workspace
from sparse_vqvae.provenance import PACKAGE, source_fingerprint

from .pipeline_workspace import TINY, dvc, run


def test_the_source_fingerprint_follows_every_library_file(tmp_path):
    copy = tmp_path / "sparse_vqvae"
    shutil.copytree(PACKAGE, copy, ignore=shutil.ignore_patterns("__pycache__"))
    assert source_fingerprint(copy) == source_fingerprint()
    with (copy / "sparse_coding" / "omp.py").open("a") as handle:
        handle.write("\n# an edit\n")
    assert source_fingerprint(copy) != source_fingerprint()


def stage_metrics(root, stage: str) -> dict:
    return json.loads((root / "metrics" / f"{stage}.json").read_text())


@pytest.mark.slow
def test_a_library_change_trains_from_step_zero_and_an_unchanged_rerun_resumes(tmp_path):
    root = make_workspace(tmp_path / "ws", TINY)
    dvc("repro", "train_prior", cwd=root)
    steps, prior_steps = TINY["train"]["steps"], TINY["prior"]["steps"]
    assert stage_metrics(root, "train_vqvae")["start_step"] == 0
    assert stage_metrics(root, "train_vqvae")["steps_trained"] == steps
    assert stage_metrics(root, "train_prior")["top_steps_trained"] == prior_steps

    for stage in ("train_vqvae", "train_prior"):  # the same code and settings: both resume their finished runs
        run([sys.executable, "-m", f"tasks.{stage}"], root)
    assert stage_metrics(root, "train_vqvae")["start_step"] == steps
    assert stage_metrics(root, "train_vqvae")["steps_trained"] == 0
    assert stage_metrics(root, "train_prior")["bottom_start_step"] == prior_steps
    assert stage_metrics(root, "train_prior")["bottom_steps_trained"] == 0

    with (root / "sparse_vqvae" / "quantizers.py").open("a") as handle:
        handle.write("\n# a change to the quantizer source\n")
    for stage in ("train_vqvae", "train_prior"):
        run([sys.executable, "-m", f"tasks.{stage}"], root)
    assert stage_metrics(root, "train_vqvae")["start_step"] == 0
    assert stage_metrics(root, "train_vqvae")["steps_trained"] == steps
    assert stage_metrics(root, "train_prior")["top_start_step"] == 0
    assert stage_metrics(root, "train_prior")["top_steps_trained"] == prior_steps
