"""Stage 1: materialise the configured dataset's train and test splits as uint8 arrays, and record
what they hold (counts, size, content hashes). The images stream through $SPARSE_VQVAE_DATA_WORKERS
decoding processes (a setting: the files are the same bytes for any number). Where the source has classes
(CIFAR, image folders, ImageNet), each split's labels too (``<split>_labels.npy``, the class names in the
summary): what class-conditional priors train on."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from sparse_vqvae.atomic import atomic_write, write_json
from sparse_vqvae.data import ImageArray, dataset_labels, load_dataset, save_image_array
from sparse_vqvae.pictures import save_grid

from .layout import DATA_SUMMARY, PREPARED, TEST_IMAGES, TRAIN_IMAGES, labels_path
from .params import PipelineParams, data_settings
from .stage import run_stage
from .tracking import StageTracker

STAGE = "prepare_data"


def run(params: PipelineParams, tracker: StageTracker) -> dict[str, Any]:
    summary: dict[str, Any] = {"dataset": params.data.name, "root": params.data.root}
    workers = data_settings().workers
    for split, path in (("train", TRAIN_IMAGES), ("test", TEST_IMAGES)):
        dataset = load_dataset(params.data, split)
        summary[split] = save_image_array(dataset, path, workers=workers)
        labelled = dataset_labels(dataset)
        if labelled is not None:  # for class-conditional priors (train_prior)
            labels, summary["classes"] = labelled
            with atomic_write(labels_path(split)) as handle:
                np.save(handle, labels)
    write_json(DATA_SUMMARY, summary)
    tracker.log_artifact(DATA_SUMMARY)
    train = ImageArray(TRAIN_IMAGES)
    examples = torch.stack([train[i] for i in range(min(64, len(train)))])
    tracker.log_artifact(save_grid(examples, PREPARED / "examples.png", scale=2))
    return {"train_images": summary["train"]["count"], "test_images": summary["test"]["count"],
            "image_size": summary["train"]["height"]}


def main() -> None:
    run_stage(STAGE, run)


if __name__ == "__main__":
    main()
