"""Which model should ``make run`` default to? Chosen on validation data, never on a figure the project reports.

The candidates are the pipeline's current default (params.yaml's model) and the sweep's grid (``flows/sweep.py``,
the equal-rate study's families at one rate each), every one trained as the study trains a model (the
pipeline's pretraining and stage-1 steps, seed 0) on the embedded training photographs but one, and measured on
crops of that one (``VALIDATION_PHOTO``: a training photograph, so neither the study's nor the pipeline's test
photographs are looked at), by real file sizes with the factorised coder.

The rule: the highest validation PSNR among the candidates whose files are no more than ``RATE_SLACK`` larger
than vanilla's (vanilla itself a candidate): the best model at the rate of the codebook it generalises.

    python benchmarks/default_model.py [--cache DIR] [--threads 1]

Writes benchmarks/results/default_model.json. Each trained model is kept in the cache (a rerun resumes).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
from pathlib import Path
from typing import Any

import numpy as np
import torch
from _results import RESULTS, write_json
from rate_distortion_study import DEFAULT_CACHE, differing, measured, model_key
from torch.utils.data import Subset

from flows.sweep import DEFAULT_GRID, variant_name
from sparse_vqvae.config import DataConfig, ModelConfig
from sparse_vqvae.data import EMBEDDED_TRAIN, ImageArray, load_dataset, save_image_array
from sparse_vqvae.provenance import source_fingerprint
from tasks.params import load_params

PARAMS = Path(__file__).resolve().parents[1] / "params.yaml"
VALIDATION_PHOTO = "astronaut.png"  # a natural photograph, like the test photographs; its crops leave training
RATE_SLACK = 0.10  # a candidate may code up to 10% more bits than vanilla
PARAMS_DEFAULT = "params.yaml's model"


def splits(cache: Path, data: DataConfig) -> tuple[ImageArray, ImageArray]:
    """The embedded training crops of every photograph but ``VALIDATION_PHOTO``, and that photograph's crops."""
    folder = cache / "default_model"
    paths = folder / "train.npy", folder / "validation.npy"
    if not all(path.is_file() for path in paths):
        crops = load_dataset(data, "train")
        held_out = crops.source_of == EMBEDDED_TRAIN.index(VALIDATION_PHOTO)
        folder.mkdir(parents=True, exist_ok=True)
        for path, chosen in zip(paths, (~held_out, held_out)):
            save_image_array(Subset(crops, np.flatnonzero(chosen).tolist()), path)
    return ImageArray(paths[0]), ImageArray(paths[1])


def candidates() -> dict[str, ModelConfig]:
    """The pipeline's default model and the sweep's grid, each grid entry applied to the default (an entry that is
    the default itself once only)."""
    default = load_params(PARAMS).model
    grid = {variant_name(v): dataclasses.replace(default, **{k.removeprefix("model."): x for k, x in v.items()})
            for v in DEFAULT_GRID}
    return {PARAMS_DEFAULT: default, **{name: config for name, config in grid.items() if config != default}}


def chosen(rows: dict[str, dict[str, Any]]) -> str:
    """The rule: the best validation PSNR at no more than vanilla's bits plus ``RATE_SLACK``."""
    vanilla = next(row for name, row in rows.items() if row["settings"]["selection_fn"] == "vanilla")
    within = {name: row for name, row in rows.items() if row["bpp"] <= vanilla["bpp"] * (1 + RATE_SLACK)}
    return max(within, key=lambda name: within[name]["psnr"])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--cache", type=Path, default=DEFAULT_CACHE, help="where trained models are kept")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--output", type=Path, default=RESULTS / "default_model.json")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    params = load_params(PARAMS)
    if params.data.name != "embedded":
        raise SystemExit(f"params.yaml's data.name is {params.data.name!r}: the default is chosen on the embedded set")
    train_set, validation = splits(args.cache, params.data)
    budget = {"pretrain_steps": params.pretrain.steps, "steps": params.train.steps, "prior_steps": 0,
              "images": len(validation), "prior_images": 0}
    rows: dict[str, dict[str, Any]] = {}
    for name, config in candidates().items():
        folder = args.cache / "default_model" / model_key("embedded-validation", params.data, config, budget, 0)
        result = folder / "result.json"
        folder.mkdir(parents=True, exist_ok=True)
        point = (json.loads(result.read_text()) if result.is_file()
                 else measured(folder, config, budget, 0, train_set, validation))[-1]  # its top quality
        rows[name] = {key: point[key] for key in ("bpp", "payload_bpp", "psnr", "ms_ssim")}
        rows[name]["settings"] = dataclasses.asdict(config)
        print(f"{name} {differing(rows[name]['settings'])}: {point['bpp']:.3f} bpp, {point['psnr']:.2f} dB", flush=True)
    choice = chosen(rows)
    print(f"\n{'candidate':<40} {'bpp':>7} {'PSNR':>7} {'MS-SSIM':>8}")
    for name, row in rows.items():
        print(f"{name:<40} {row['bpp']:7.3f} {row['psnr']:7.2f} {row['ms_ssim']:8.4f}{'  <- chosen' * (name == choice)}")
    write_json(args.output, {
        "validation": {"photograph": VALIDATION_PHOTO, "crops": len(validation), "training_crops": len(train_set)},
        "budget": budget, "rate_slack": RATE_SLACK, "source": source_fingerprint(), "candidates": rows,
        "chosen": choice, "params_default": PARAMS_DEFAULT, "keeps_the_default": choice == PARAMS_DEFAULT})


if __name__ == "__main__":
    main()
