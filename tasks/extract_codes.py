"""Stage 4: encode the train and test images with the trained model into LMDB code stores."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from sparse_vqvae.atomic import check_replaceable
from sparse_vqvae.code_store import extract_codes
from sparse_vqvae.data import ImageArray
from sparse_vqvae.devices import default_device
from sparse_vqvae.train import load_checkpoint

from .layout import TEST_CODES, TEST_IMAGES, TRAIN_CODES, TRAIN_IMAGES, VQVAE
from .params import PipelineParams
from .stage import run_stage
from .tracking import StageTracker

STAGE = "extract_codes"
# What an LMDB code store folder holds (and its ``<name>.tmp`` while written): extraction replaces
# such a folder, and refuses any other.
STORE_FILES = ("data.mdb", "lock.mdb", "manifest.json")


def check_stores(*stores: Path) -> None:
    """Fail before any work if a store path, or its scratch ``<name>.tmp``, holds anything but a code store."""
    for store in stores:
        for path in (store, store.with_name(store.name + ".tmp")):
            check_replaceable(path, "code store", files=STORE_FILES)


def run(params: PipelineParams, tracker: StageTracker) -> dict[str, Any]:
    check_stores(TRAIN_CODES, TEST_CODES)
    model = load_checkpoint(VQVAE, default_device()).model
    metrics: dict[str, Any] = {}
    for split, images, store in (("train", TRAIN_IMAGES, TRAIN_CODES), ("test", TEST_IMAGES, TEST_CODES)):
        stats = extract_codes(model, ImageArray(images), store, batch_size=params.extract.batch_size)
        metrics[f"{split}_images"] = stats["images"]
        tracker.timings[f"{split}_images_per_s"] = stats["images_per_s"]
    return metrics


def main() -> None:
    run_stage(STAGE, run)


if __name__ == "__main__":
    main()
