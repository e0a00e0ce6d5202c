"""Stage 2: warm up the autoencoder without quantisation, then fit each map's dictionary (omp,
lasso: MOD) or codebook (vanilla: k-means) to its latents. Stage 1 starts from this model - or, with
``pretrain.init_from``, from a trained model's checkpoint, continued under new settings (DVC reruns the stage when
the setting changes, not when the file at that path does)."""

from __future__ import annotations

from typing import Any

from sparse_vqvae.data import ImageArray, training_images
from sparse_vqvae.devices import default_device
from sparse_vqvae.pretrain import continued, pretrain
from sparse_vqvae.train import evaluate, save_checkpoint

from .layout import PRETRAINED, PRETRAINED_DIR, TEST_IMAGES, TRAIN_IMAGES, project_root
from .params import PipelineParams
from .pictures import dictionary_pictures
from .stage import run_stage
from .tracking import StageTracker

STAGE = "pretrain_dictionary"


def run(params: PipelineParams, tracker: StageTracker) -> dict[str, Any]:
    every = params.mlflow.log_every

    def log(step: int, metrics: dict[str, float]) -> None:
        if step % every == 0 or step == params.pretrain.steps:
            tracker.log_metrics(metrics, step)

    if params.pretrain.init_from is not None:  # a trained model continued: no warm-up, no dictionary fit
        model = continued(params.model, project_root() / params.pretrain.init_from, default_device())
    else:
        model = pretrain(params.model, params.pretrain, training_images(TRAIN_IMAGES, params.data), default_device(),
                         on_metrics=log)
    save_checkpoint(PRETRAINED, model, None, 0, 0, {"pretrain": params.for_outputs()})
    for path in dictionary_pictures(model, PRETRAINED_DIR, "dictionary"):
        tracker.log_artifact(path, "pictures")
    # How well the fitted dictionary codes the warmed-up latents, before any stage-1 step.
    quality = evaluate(model, ImageArray(TEST_IMAGES), progress=True)
    # Pretraining never resumes: it always starts at step 0 and trains every step.
    return {"start_step": 0, "steps_trained": 0 if params.pretrain.init_from else params.pretrain.steps,
            **{f"pretrained_{key}": value for key, value in quality.items()}}


def main() -> None:
    run_stage(STAGE, run)


if __name__ == "__main__":
    main()
