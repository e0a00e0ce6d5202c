"""What caps quantised matching pursuit's autoencoder (issue 26).

In the equal-rate study, qmp's codes reach the PSNR its decoder gets from the UNquantised latent - about 27.2 dB
whatever K (``docs/study.md``, ``results/qmp_v3_embedded.json``) - while residual VQ's decoder reaches 28.0 dB there
at K=3: the quantiser is not what stops qmp, the autoencoder trained through it is. This script trains variants
at the study's budget (``--pretrain-steps``, ``--steps``; seed 0) and measures each on a VALIDATION split of the
embedded training crops (the last ``--validation`` of them; training sees the rest, never the study's test
images): the PSNR of the codes (the model as trained) and of the bypassed quantizer (the decoder's ceiling), and
the latents' effective dimension (participation ratio of their covariance spectrum). Variants change one thing
of the study's qmp K=2 at a time; rvq K=2 is the reference.

    python benchmarks/qmp_ceiling.py            # ~15 min a variant on one core
"""

from __future__ import annotations

import argparse
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch
from _results import RESULTS, write_json
from sparse_diagnosis import participation_ratio
from torch.utils.data import DataLoader, Subset

from sparse_vqvae.config import DataConfig, ModelConfig, PretrainConfig, TrainConfig
from sparse_vqvae.data import load_dataset
from sparse_vqvae.metrics import psnr, squared_error_255
from sparse_vqvae.pretrain import pretrain
from sparse_vqvae.train import make_optimizer, run_training

QMP = dict(selection_fn="qmp", n_nonzero=2, num_atoms=256, coef_levels=8)
VARIANTS: dict[str, dict[str, Any]] = {
    "rvq K=2": dict(selection_fn="rvq", num_atoms=256, stages=2),
    "qmp K=2": QMP,
    "qmp K=2 commitment 0": {**QMP, "commitment": 0.0},
    "qmp K=2 no dictionary loss": {**QMP, "dictionary_loss_weight": 0.0},
}


@torch.no_grad()
def measured(model, images) -> dict[str, float]:
    """Validation PSNR of the codes and of the bypassed quantizer (whole-set MSE, [0, 255]); each map's latent
    participation ratio."""
    model.eval()
    coded = bypassed = pixels = 0.0
    latents: list[list[torch.Tensor]] = []
    for batch in DataLoader(images, batch_size=256):
        coded += float(squared_error_255(batch, model(batch).reconstruction))
        reconstruction, zs = model.autoencode(batch)
        bypassed += float(squared_error_255(batch, reconstruction))
        pixels += batch.numel()
        latents.append([z.permute(0, 2, 3, 1).reshape(-1, z.shape[1]) for z in zs])
    ratios = [round(participation_ratio(torch.cat([row[index] for row in latents])), 2)
              for index in range(len(latents[0]))]
    return {"psnr_codes": round(psnr(coded / pixels), 3), "psnr_unquantised": round(psnr(bypassed / pixels), 3),
            "participation_ratio_top_bottom": ratios}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--variants", default=",".join(VARIANTS), help="comma-separated names of VARIANTS")
    parser.add_argument("--pretrain-steps", type=int, default=PretrainConfig().steps)
    parser.add_argument("--steps", type=int, default=TrainConfig().steps)
    parser.add_argument("--validation", type=int, default=512, help="training crops held out for validation")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--output", type=Path, default=RESULTS / "qmp_ceiling.json")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    names = args.variants.split(",")
    unknown = [name for name in names if name not in VARIANTS]
    if unknown:
        raise SystemExit(f"--variants: unknown {unknown}; the variants are {list(VARIANTS)}")
    data = load_dataset(DataConfig(), "train")
    fit = Subset(data, range(len(data) - args.validation))
    held = torch.stack([data[i] for i in range(len(data) - args.validation, len(data))])
    rows = []
    for name in names:
        start = time.perf_counter()
        config = ModelConfig(**VARIANTS[name])
        model = pretrain(config, PretrainConfig(steps=args.pretrain_steps, seed=0), fit)
        train_config = TrainConfig(steps=args.steps, seed=0)
        torch.manual_seed(train_config.seed)
        run_training(model, make_optimizer(model, train_config.lr), fit, train_config)
        row = {"variant": name, **measured(model, held), "settings": asdict(config),
               "seconds": round(time.perf_counter() - start, 1)}
        rows.append(row)
        print(f"{name:32s} codes {row['psnr_codes']:.2f} dB, unquantised {row['psnr_unquantised']:.2f} dB, "
              f"participation ratio {row['participation_ratio_top_bottom']}", flush=True)
    write_json(args.output, {"budget": {"pretrain_steps": args.pretrain_steps, "steps": args.steps, "seed": 0},
                             "validation_images": args.validation, "threads": args.threads, "variants": rows})


if __name__ == "__main__":
    main()
