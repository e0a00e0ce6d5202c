"""Stage 5: the PixelSNAIL priors over the extracted codes - the top map's, then the bottom map's
conditioned on the top codes - and the compressed-file format's frequency model.

Each prior resumes from the project's ``checkpoints/prior/<run key>/`` (outside DVC's outs, so it survives a
rerun, and outside a ``dvc exp run --temp`` copy, so an experiment's survive it too) and is copied to
``models/prior/`` when trained.
"""

from __future__ import annotations

import csv
import hashlib
import json
from dataclasses import asdict
from typing import Any

import torch

from sparse_vqvae.atomic import atomic_write
from sparse_vqvae.code_store import CodeStore
from sparse_vqvae.devices import default_device
from sparse_vqvae.entropy_coding import FrequencyModel
from sparse_vqvae.pictures import line_plot
from sparse_vqvae.pixelsnail import PixelSNAIL
from sparse_vqvae.provenance import source_fingerprint
from sparse_vqvae.prior_train import bits_per_image, load_maps, prior_configs, train_prior
from sparse_vqvae.train import load_checkpoint

from sparse_vqvae.maps import prior_file

from .layout import FREQUENCY_MODEL, MAP_NAMES, PLOTS, PRIORS, TRAIN_CODES, VQVAE, checkpoints, prior_path
from .params import PipelineParams
from .stage import run_stage
from .tracking import StageTracker

STAGE = "train_prior"
CURVES = PLOTS / "prior.csv"


def run(params: PipelineParams, tracker: StageTracker) -> dict[str, Any]:
    config = params.prior
    device = default_device()
    fingerprint = load_checkpoint(VQVAE).model.fingerprint()
    store = CodeStore(TRAIN_CODES, expected_fingerprint=fingerprint)
    maps = load_maps(store)
    # A checkpoint of other settings, another VQ-VAE or other library code is not resumed.
    key = hashlib.sha256(json.dumps([asdict(config), fingerprint, source_fingerprint()], sort_keys=True)
                         .encode()).hexdigest()[:16]
    sizes = dict(channels=config.channels, blocks=config.blocks, res_per_block=config.res_per_block,
                 dropout=config.dropout, positions=config.positions)
    curves: dict[int, dict[str, float]] = {}
    metrics: dict[str, Any] = {}
    for level, prior_config in enumerate(prior_configs(store.meta, **sizes)):
        name = MAP_NAMES[level]
        torch.manual_seed(config.seed + level)
        prior = PixelSNAIL(prior_config).to(device)

        def log(step: int, values: dict[str, float], name: str = name) -> None:
            if step % params.mlflow.log_every == 0 or step == config.steps:
                curves.setdefault(step, {})[f"{name}_bits"] = values["bits_per_image"]
                tracker.log_metrics({f"{name}_bits_per_image": values["bits_per_image"]}, step)

        resume = prior_file(checkpoints() / "prior" / key, level)
        trained = train_prior(prior, maps, level, config.steps, batch_size=config.batch_size, lr=config.lr,
                              seed=config.seed + level, checkpoint_path=resume, fingerprint=fingerprint,
                              checkpoint_every=config.checkpoint_every, on_metrics=log)
        metrics[f"{name}_start_step"] = trained["start_step"]
        metrics[f"{name}_steps_trained"] = trained["steps_trained"]
        PRIORS.mkdir(parents=True, exist_ok=True)
        with atomic_write(prior_path(level)) as handle:
            handle.write(resume.read_bytes())
        metrics[f"{name}_train_bits_per_image"] = bits_per_image(prior, maps, level)  # also when resumed finished
    _publish(curves, tracker)
    # The codec's entropy model: atom / level / count frequencies of the training codes.
    FrequencyModel.fit(maps, store.meta).save(FREQUENCY_MODEL)
    for path in (*map(prior_path, range(len(maps))), FREQUENCY_MODEL):  # for `sparse-vqvae --model <run id>`
        tracker.log_artifact(path, PRIORS.as_posix())
    return metrics


def _publish(curves: dict[int, dict[str, float]], tracker: StageTracker) -> None:
    columns = [f"{name}_bits" for name in MAP_NAMES]
    with atomic_write(CURVES, "w") as handle:
        writer = csv.writer(handle)
        writer.writerow(["step"] + columns)
        writer.writerows([step] + [curves[step].get(c, "") for c in columns] for step in sorted(curves))
    series = {c: ([s for s in sorted(curves) if c in curves[s]], [curves[s][c] for s in sorted(curves) if c in curves[s]])
              for c in columns}
    picture = line_plot({c: xy for c, xy in series.items() if xy[0]}, PRIORS / "training_bits.png", "step",
                        "bits per image", "prior training")
    tracker.log_artifact(picture, "pictures")


def main() -> None:
    run_stage(STAGE, run)


if __name__ == "__main__":
    main()
