"""Residual VQ goes everywhere the other quantizers go: the whole tiny pipeline (pretraining, Ray
Train over two DDP workers, the LMDB store, PixelSNAIL priors, the codec, evaluation) with rvq."""

from __future__ import annotations

import json

import pytest

from flows.workspace import make_workspace
from sparse_vqvae.code_store import CodeStore
from sparse_vqvae.train import load_checkpoint

from .pipeline_workspace import TINY, dvc


@pytest.mark.slow
def test_the_pipeline_trains_codes_and_compresses_with_residual_vq(tmp_path):
    overrides = {**TINY, "model": {**TINY["model"], "selection_fn": "rvq", "n_nonzero": 3}}
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
