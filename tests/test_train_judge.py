"""The judge stage and the evaluate stage's synthesis figures (issue 30): trained only where the data is CIFAR-10,
measured wherever a judge is."""

from __future__ import annotations

import json
from dataclasses import replace

import numpy as np
import pytest
import torch
from PIL import Image

from sparse_vqvae.config import DataConfig, EvaluateConfig, JudgeParams
from sparse_vqvae.entropy_coding import FrequencyModel
from sparse_vqvae.judge import CIFAR10_CLASSES, Judge
from sparse_vqvae.pixelsnail import PixelSNAIL
from sparse_vqvae.prior_train import prior_configs
from sparse_vqvae.code_store import StoreMetadata
from sparse_vqvae.vqvae import VQVAE2, encode_all
from tasks import evaluate, train_judge
from tasks.layout import FREQUENCY_MODEL, JUDGE, JUDGE_SUMMARY
from tasks.params import parse_params

from .tiny import tiny_config


def cifar_like_folder(root, per_class: int = 6, seed: int = 0):
    """An ImageFolder tree with CIFAR-10's ten class folders of 32x32 PNGs, each class its own colour."""
    rng = np.random.default_rng(seed)
    for label, name in enumerate(CIFAR10_CLASSES):
        (root / name).mkdir(parents=True)
        for i in range(per_class):
            pixels = np.clip(rng.normal(25 * label, 30, (32, 32, 3)), 0, 255).astype(np.uint8)
            Image.fromarray(pixels).save(root / name / f"{i:03d}.png")
    return root


def test_the_judge_stage_says_why_there_is_no_judge_for_other_data(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    params = parse_params({})  # the embedded photographs: no labels
    assert train_judge.run(params, None) == {"judge_trained": False}
    assert not JUDGE.exists()
    assert "CIFAR-10's labels" in json.loads(JUDGE_SUMMARY.read_text())["why"]
    other = tmp_path / "not-cifar"
    (other / "cats").mkdir(parents=True)
    assert train_judge.labelled_cifar10(DataConfig(name="imagefolder", root=str(other))) is None


@pytest.mark.slow  # trains a judge for an epoch and samples a tiny model's priors (seconds)
def test_on_cifar10_data_the_judge_trains_and_evaluate_measures_every_source(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    root = cifar_like_folder(tmp_path / "cifar")
    params = parse_params({"data": {"name": "imagefolder", "root": str(root), "test_fraction": 0.2},
                           "judge": {"epochs": 1, "width": 4, "held_out": 20, "bf16": False},
                           "evaluate": {"synthesis_images": 12, "samples": 4}})
    metrics = train_judge.run(params, None)
    assert metrics["judge_trained"] and metrics["train_images"] == 40 and metrics["held_out_images"] == 20
    assert 0 <= metrics["held_out_accuracy"] <= 1
    assert Judge.load(JUDGE).feature_dim == 32

    torch.manual_seed(0)
    model = VQVAE2(tiny_config("vanilla", num_atoms=16)).eval()
    images = torch.stack([torch.from_numpy(np.asarray(Image.open(p))).permute(2, 0, 1).float() / 127.5 - 1
                          for p in sorted(root.rglob("*.png"))[:12]])
    maps = encode_all(model, images)
    meta = StoreMetadata.for_model(model, [list(m.atoms.shape[1:3]) for m in maps])
    FREQUENCY_MODEL.parent.mkdir(parents=True)
    FrequencyModel.fit(maps, meta).save(FREQUENCY_MODEL)
    priors = [PixelSNAIL(config).eval() for config in prior_configs(meta, channels=8, blocks=1, res_per_block=1)]
    pictures: list = []
    figures = evaluate._synthesis(model, list(images), priors, pictures, params)
    sources = ["real", "reconstruction", "factorised", "pixelsnail_t0.7", "pixelsnail_t0.85", "pixelsnail_t1"]
    assert set(figures) == {f"{key}_{source}" for source in sources for key in ("fd", "precision", "recall")}
    assert all(np.isfinite(value) and value >= 0 for value in figures.values())
    assert [p.name for p in pictures] == [f"synthesis_{source}.png" for source in sources[1:]]
    assert all(p.read_bytes()[:4] == b"\x89PNG" for p in pictures)

    JUDGE.unlink()  # no judge (other data): no synthesis figures, no error
    assert evaluate._synthesis(model, list(images), priors, [], params) == {}


def test_judge_params_name_the_key_and_the_allowed_values():
    with pytest.raises(ValueError, match="judge.extractor_range.*minus_one_one"):
        parse_params({"judge": {"extractor_range": "0-255"}})
    with pytest.raises(ValueError, match="judge.epochs"):
        parse_params({"judge": {"epochs": 0}})
    assert parse_params({}).judge == JudgeParams() and parse_params({}).evaluate == EvaluateConfig()
    assert replace(JudgeParams(), extractor="inception.pt").extractor == "inception.pt"
