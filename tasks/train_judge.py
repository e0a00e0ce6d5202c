"""The sample-quality judge (issue 30): a CIFAR-10 classifier whose features measure how close the pipeline's
samples are to real images (``tasks.synthesis``; ``sparse_vqvae.judge``).

It needs CIFAR-10's labels, so it trains only where the data is CIFAR-10 (``data.name: cifar10``, or an
``imagefolder`` whose class folders are CIFAR-10's ten); anywhere else the stage writes a judge file that says
why there is none, at once. Its DVC deps are the data's identity and the ``judge`` params, not the model's: DVC
caches the judge and restores it for every experiment on the same data (``dvc exp run`` on CIFAR-10 trains it
once). The judge holds out ``judge.held_out`` images by the rule of the ``imagefolder`` test split with the same
``data.seed`` (``judge.held_out_split``), so the VQ-VAE's test images lie inside its held-out set. Training
resumes from ``checkpoints/judge/<key>.pt`` after an interruption.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np
import torch

from sparse_vqvae.atomic import write_json
from sparse_vqvae.checkpoint import save_payload
from sparse_vqvae.config import DataConfig
from sparse_vqvae.judge import (CIFAR10_CLASSES, JUDGE_FORMAT, JUDGE_VERSION, JudgeConfig, JudgeTrainConfig, accuracy,
                                held_out_split, read_image_folder, to_model_range, train_judge)

from .layout import JUDGE, JUDGE_SUMMARY, checkpoints
from .params import PipelineParams
from .stage import run_stage
from .tracking import StageTracker

STAGE = "train_judge"


def labelled_cifar10(data: DataConfig) -> tuple[np.ndarray, np.ndarray] | None:
    """CIFAR-10's training images (uint8 [N, 32, 32, 3]) and labels in the order the data's splits index them,
    or None where the configured data is not CIFAR-10."""
    if data.name == "cifar10":
        from torchvision.datasets import CIFAR10

        dataset = CIFAR10(str(Path(data.root).expanduser()), train=True, download=False)
        return np.asarray(dataset.data), np.asarray(dataset.targets, dtype=np.int64)
    if data.name == "imagefolder" and data.root:
        root = Path(data.root).expanduser()
        if tuple(sorted(p.name for p in root.iterdir() if p.is_dir())) == CIFAR10_CLASSES:
            images, labels, _ = read_image_folder(root)
            return images, labels
    return None


def run(params: PipelineParams, tracker: StageTracker) -> dict[str, Any]:
    labelled = labelled_cifar10(params.data)
    if labelled is None:
        write_json(JUDGE_SUMMARY, {"judge": None, "why": f"data.name {params.data.name}: the judge is a CIFAR-10 "
                                   "classifier and needs CIFAR-10's labels; no synthesis figures for this data"})
        return {"judge_trained": False}
    images, labels = labelled
    config = JudgeConfig(width=params.judge.width, num_classes=len(CIFAR10_CLASSES))
    train_config = JudgeTrainConfig(epochs=params.judge.epochs, seed=params.judge.seed,
                                    bf16=params.judge.bf16)
    train_index, held_index = held_out_split(len(images), params.judge.held_out, params.data.seed)
    key = hashlib.sha256(json.dumps([asdict(config), asdict(train_config), params.data.root, params.data.seed,
                                     params.judge.held_out], sort_keys=True).encode()).hexdigest()[:16]
    resume = checkpoints() / "judge" / f"{key}.pt"
    resume.parent.mkdir(parents=True, exist_ok=True)
    judge, summary = train_judge(images[train_index], labels[train_index], config, train_config, resume)
    held_accuracy = accuracy(judge, to_model_range(images[held_index]), torch.as_tensor(labels[held_index]))
    save_payload(JUDGE, {"format": JUDGE_FORMAT, "version": JUDGE_VERSION, "model_args": asdict(config),
                         "train_config": asdict(train_config), "model": judge.state_dict(),
                         "epoch": summary["epochs"], "classes": list(CIFAR10_CLASSES)})
    metrics = {"judge_trained": True, "held_out_accuracy": round(held_accuracy, 4), "epochs": summary["epochs"],
               "train_images": int(len(train_index)), "held_out_images": int(len(held_index))}
    write_json(JUDGE_SUMMARY, {"judge": JUDGE.as_posix(), **metrics})
    return metrics


def main() -> None:
    run_stage(STAGE, run)


if __name__ == "__main__":
    main()
