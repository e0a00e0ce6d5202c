"""What caps the photo codec: the autoencoder, or the quantiser? Measured on photographs it never saw.

For a zoo model with a residual VQ (default ``photo``), on the held-out photographs at full size:
- the unquantised autoencoder's PSNR (the encoder's latents decoded as they are: the ceiling no quantiser
  can pass), beside the PSNR with the first q stages, q = 1..K (the codec's qualities, before any file);
- the share of the latents' energy each stage leaves (||z - z_q||^2 / ||z||^2) and what each stage removes;
- each stage's codebook on these photographs: entries used, perplexity, the share never used;
- the same ceiling on a few training photographs: a large train/test gap would point at overfitting.
PSNR here is of the model's output before files (no rounding to 8 bits, no colour offsets); the codec's
own curve (real files) is benchmarks/photo_codec.py's.

    python benchmarks/photo_codec_cap.py [--model photo] [--threads 2] [--limit N]

Writes benchmarks/results/photo_codec_cap.json and prints a table.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from _results import RESULTS, write_json
from photo_codec import PHOTOS, read

from sparse_vqvae.cli import resolve_model
from sparse_vqvae.codes import Codes
from sparse_vqvae.config import DataConfig
from sparse_vqvae.data import photo_files
from sparse_vqvae.metrics import psnr, squared_error_255
from sparse_vqvae.quantizers import ResidualVQ
from sparse_vqvae.train import load_checkpoint

TRAINING_PHOTOS = 3  # the first photographs by name: seen in training


@torch.no_grad()
def measure(model, images: list[torch.Tensor]) -> dict:
    """Ceiling, per-quality PSNR, latent energy left per stage, and codebook usage over ``images``."""
    quantizer = model.quantizers[0]
    stages = quantizer.slots
    stride = model.config.stride
    errors = torch.zeros(stages + 1, dtype=torch.float64)  # [0]: unquantised; [q]: the first q stages
    left = torch.zeros(stages + 1, dtype=torch.float64)  # latent energy left after q stages ([0]: all of it)
    counts = torch.zeros(stages, quantizer.num_atoms, dtype=torch.float64)
    pixels = 0
    for image in images:
        _, height, width = image.shape
        padded = F.pad(image[None], (0, -width % stride, 0, -height % stride), mode="replicate")
        z = model.quantize_conv(model.enc(padded))
        codes = quantizer(z).codes
        errors[0] += squared_error_255(image, model.decode([z])[0, :, :height, :width])
        left[0] += z.double().square().sum()
        for q in range(1, stages + 1):
            prefix = Codes(codes.atoms[..., :q], codes.levels[..., :q])
            z_q = quantizer.decode_codes(prefix)
            errors[q] += squared_error_255(image, model.decode([z_q])[0, :, :height, :width])
            left[q] += (z - z_q).double().square().sum()
        for stage in range(stages):
            counts[stage] += torch.bincount(codes.atoms[..., stage].reshape(-1) - stage * quantizer.num_atoms,
                                            minlength=quantizer.num_atoms).double()
        pixels += 3 * height * width
    usage = []
    for row in counts:
        p = row / row.sum()
        nonzero = p[p > 0]
        usage.append({"used_share": float((row > 0).double().mean()),
                      "perplexity": float(torch.exp(-(nonzero * nonzero.log()).sum()))})
    shares = (left / left[0]).tolist()
    return {"images": len(images),
            "unquantised_psnr": psnr(float(errors[0]) / pixels),
            "psnr_by_quality": [psnr(float(e) / pixels) for e in errors[1:]],
            "latent_energy_left": shares[1:],
            "latent_energy_removed_by_stage": [a - b for a, b in zip(shares, shares[1:])],
            "stage_usage": usage}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="photo", help="a zoo name or a checkpoint (default: photo)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--limit", type=int, default=0, help="at most this many held-out photographs (0: all)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    if not PHOTOS.is_dir():
        raise SystemExit(f"no photographs at {PHOTOS}: this benchmark needs ../shared/data/photos")
    model = load_checkpoint(resolve_model(args.model)["model"]).model.eval()
    if not isinstance(model.quantizers[0], ResidualVQ) or len(model.quantizers) != 1:
        raise SystemExit("this diagnosis reads a one-map residual VQ's stages (the photo codec's model)")
    files = photo_files(PHOTOS)
    held_out = files[-DataConfig().test_photos :]
    if args.limit:
        held_out = held_out[: args.limit]
    start = time.perf_counter()
    result = {"model": args.model, "held_out": measure(model, [read(p) for p in held_out]),
              "training": measure(model, [read(p) for p in files[:TRAINING_PHOTOS]])}
    result["seconds"] = round(time.perf_counter() - start, 1)
    test = result["held_out"]
    print(f"unquantised autoencoder: {test['unquantised_psnr']:.2f} dB held out, "
          f"{result['training']['unquantised_psnr']:.2f} dB on {TRAINING_PHOTOS} training photographs")
    print(f"{'q':>3} {'PSNR dB':>8} {'energy left':>12} {'removed':>8} {'used':>6} {'perplexity':>10}")
    for q, (value, left, removed, usage) in enumerate(zip(test["psnr_by_quality"], test["latent_energy_left"],
                                                          test["latent_energy_removed_by_stage"],
                                                          test["stage_usage"]), start=1):
        print(f"{q:>3} {value:8.2f} {left:12.4f} {removed:8.4f} {usage['used_share']:6.2f} "
              f"{usage['perplexity']:10.1f}")
    write_json(RESULTS / "photo_codec_cap.json", result)


if __name__ == "__main__":
    main()
