"""Stage 4: encode the train and test images with the trained model into LMDB code stores."""

from __future__ import annotations

from typing import Any

from sparse_vqvae.code_store import check_store_path, extract_codes
from sparse_vqvae.data import ImageArray
from sparse_vqvae.devices import default_device
from sparse_vqvae.train import load_checkpoint

from .layout import TEST_CODES, TEST_IMAGES, TRAIN_CODES, TRAIN_IMAGES, VQVAE
from .params import PipelineParams
from .stage import run_stage
from .tracking import StageTracker

STAGE = "extract_codes"


def run(params: PipelineParams, tracker: StageTracker) -> dict[str, Any]:
    for store in (TRAIN_CODES, TEST_CODES):  # both checked before any work
        check_store_path(store)
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
