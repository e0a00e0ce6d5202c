"""Residual VQ goes everywhere the other quantizers go: the whole tiny pipeline (pretraining, Ray
Train over two DDP workers, the LMDB store, PixelSNAIL priors, the codec, evaluation) with rvq.
Then checkpoints belong to the code that made them: an unchanged rerun of the training stages
resumes their finished runs, and after a change to the library they train from step 0."""

from __future__ import annotations

import json
import sys

import pytest

from flows.workspace import make_workspace
from sparse_vqvae.code_store import CodeStore
from sparse_vqvae.provenance import source_fingerprint
from sparse_vqvae.train import load_checkpoint

from .pipeline_workspace import TINY, dvc, run


def stage_metrics(root, stage: str) -> dict:
    return json.loads((root / "metrics" / f"{stage}.json").read_text())


def rerun(root, *stages: str) -> None:
    for stage in stages:
        run([sys.executable, "-m", f"tasks.{stage}"], root)


@pytest.mark.slow
def test_residual_vq_through_the_pipeline_and_checkpoints_of_other_code_are_not_resumed(tmp_path):
    overrides = {**TINY, "model": {**TINY["model"], "selection_fn": "rvq", "stages": 3}}
    root = make_workspace(tmp_path / "ws", overrides)
    dvc("repro", cwd=root)
    model = load_checkpoint(root / "models/vqvae/model.pt").model
    store = CodeStore(root / "codes/test", model.fingerprint())
    assert (store.meta.selection_fn, store.meta.slots, store.meta.num_atoms) == ("rvq", 3, 3 * 32)
    _, maps = store[0]
    for codes in maps:  # stage k's atom from stage k's codebook, every slot filled
        for k in range(3):
            assert ((codes.atoms[..., k] >= 32 * k) & (codes.atoms[..., k] < 32 * (k + 1))).all()
    metrics = json.loads((root / "eval/metrics.json").read_text())
    assert metrics["selection_fn"] == "rvq" and metrics["test_psnr"] > 0
    rows = (root / "eval/rate_distortion.csv").read_text()
    assert "(factorised)" in rows and "(prior)" in rows

    # The run shipped as a zoo model: the files the CLI needs, a card, and files that decode.
    run([sys.executable, "-m", "tasks.export_zoo", "tiny", "--output", str(tmp_path / "zoo")], root)
    zoo = tmp_path / "zoo" / "tiny"
    assert sorted(p.name for p in zoo.iterdir()) == ["MODEL_CARD.md", "bottom.pt", "codec.pt", "model.pt", "top.pt"]
    card = (zoo / "MODEL_CARD.md").read_text()
    assert '"selection_fn": "rvq"' in card and f"stage-1 steps: {TINY['train']['steps']}" in card
    assert f"trained by: library source `{source_fingerprint()}`" in card  # the code that trained it
    assert load_checkpoint(zoo / "model.pt").model.fingerprint() == model.fingerprint()
    shipped = ["--model", str(zoo / "model.pt"), "--codec-model", str(zoo / "codec.pt")]
    run(["sparse-vqvae", "compress", "data/prepared/examples.png", "-o", "out", "--quality", "2", *shipped], root)
    run(["sparse-vqvae", "decompress", "out/examples.svq", "-o", "back", *shipped], root)

    steps, prior_steps = TINY["train"]["steps"], TINY["prior"]["steps"]
    assert (stage_metrics(root, "train_vqvae")["start_step"], stage_metrics(root, "train_vqvae")["steps_trained"]) \
        == (0, steps)
    rerun(root, "train_vqvae", "train_prior")  # the same code and settings: both resume their finished runs
    assert (stage_metrics(root, "train_vqvae")["start_step"], stage_metrics(root, "train_vqvae")["steps_trained"]) \
        == (steps, 0)
    prior = stage_metrics(root, "train_prior")
    assert (prior["bottom_start_step"], prior["bottom_steps_trained"]) == (prior_steps, 0)

    with (root / "sparse_vqvae" / "quantizers.py").open("a") as handle:
        handle.write("\n# a change to the quantizer source\n")
    rerun(root, "train_vqvae", "train_prior")
    assert (stage_metrics(root, "train_vqvae")["start_step"], stage_metrics(root, "train_vqvae")["steps_trained"]) \
        == (0, steps)
    prior = stage_metrics(root, "train_prior")
    assert (prior["top_start_step"], prior["top_steps_trained"]) == (0, prior_steps)
