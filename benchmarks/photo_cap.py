"""What caps the shipped photo codec: a diagnosis of the zoo model on the held-out photographs, full size.

The codec's quality stops rising at about 29.9 dB while its rate keeps growing (issue 27). This script
takes the model apart on the 9 held-out photographs of ../shared/data/photos (photo_codec.py's split and
loading) and says where the error comes from:

- the unquantised autoencoder: the encoder's latents decoded as they are - the ceiling no quantiser passes;
- every prefix of the residual code (quality q = the first q stages): PSNR in pixels, the latents' energy
  the prefix leaves (||z - z_q||^2 / ||z||^2), what each stage removes, and how far the decoded image is
  from the unquantised one (PSNR of decode(z_q) against decode(z));
- each stage's codebook: entries used on these photographs, perplexity, dead entries (never picked here;
  and below the training's dead-entry threshold by its usage EMA), entry norms beside the norm of the
  residual the stage is given;
- the latent itself: channels per position against pixel values per position, the principal components
  that carry 90 / 99 / 99.9% of its energy (is a wider latent used?);
- the error by spatial frequency (radial bands of cycles a pixel, FFT) beside the photographs' own
  energy there, and what an ideal low-pass at each band edge would score (is detail below the /8 grid lost?);
- the decoder with better latents: each photograph's 128x128 centre crop (the training crop size), its
  latent optimised by Adam through the frozen decoder - how much an encoder could still gain - and that
  latent quantised by all stages (does the gain survive the codebooks?);
- stage dropout: what the uniform draw of qualities gives the top quality (its share of the training
  images and, from the measured per-quality errors, of the training objective), and the card's figures;
- the colour offsets the codec's files carry (their gain in dB) and 3 training photographs (train/test gap).

PSNR is from the whole set's squared error on [0, 255] (clamped, not rounded); "with offsets" adds the
files' colour offsets (quarter levels) as the codec does, so that column is the codec's own curve.

    nice -n 5 python benchmarks/photo_cap.py [--model photo] [--threads 1] [--limit N] [--crop-steps 200]

Writes benchmarks/results/photo_cap.json and photo_cap.png; docs/photo_codec.md shows the tables
(python benchmarks/tables.py).
"""

from __future__ import annotations

import argparse
import math
import re
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from _results import RESULTS, write_json
from photo_codec import PHOTOS, image_sets, read

from sparse_vqvae.cli import resolve_model
from sparse_vqvae.codec import COLOUR_STEP
from sparse_vqvae.codes import Codes
from sparse_vqvae.data import photo_files
from sparse_vqvae.metrics import psnr, squared_error_255
from sparse_vqvae.quantizers import DEAD_BELOW, ResidualVQ
from sparse_vqvae.train import load_checkpoint

TRAINING_PHOTOS = 3  # the first photographs by name (seen in training): the train/test gap
BAND_EDGES = (0.0, 1 / 32, 1 / 16, 1 / 8, 1 / 4, 1.0)  # cycles a pixel; 1/16: the /8 map's Nyquist, 1/8: a /4 map's
CROP = 128  # the latent optimisation's crops: the size the model trained on
CROP_LR = 0.1
CROP_REPORT = (0, 25, 50, 100, 200, 300, 400, 600, 800)
ENERGY_SHARES = (0.9, 0.99, 0.999)
PRINCIPAL_COMPONENTS = (1, 2, 4, 8, 16, 24, 32, 48, 64)
CUT = 16  # the optimised latents cut to the encoder's first CUT components: do they leave its subspace?


def latent(model, image: torch.Tensor) -> torch.Tensor:
    """The encoder's latent [1, C, h, w] of one image padded (edges repeated) to the stride, as the codec does."""
    _, height, width = image.shape
    stride = model.config.stride
    padded = F.pad(image[None], (0, -width % stride, 0, -height % stride), mode="replicate")
    return model.quantize_conv(model.enc(padded))


def decoded(model, z: torch.Tensor, height: int, width: int) -> torch.Tensor:
    return model.dec(z)[0, :, :height, :width].clamp(-1, 1)


def with_offsets(image: torch.Tensor, output: torch.Tensor) -> torch.Tensor:
    """``output`` shifted by the colour offsets a file would carry (quarter levels, as codec.Codec._codes)."""
    shift = ((image.mean(dim=(1, 2)) - output.mean(dim=(1, 2))) * (127.5 / COLOUR_STEP)).round().clamp(-127, 127)
    return (output + shift[:, None, None] * (COLOUR_STEP / 127.5)).clamp(-1, 1)


def band_energy(signal: torch.Tensor) -> np.ndarray:
    """Energy (sum of squares, Parseval) of a [3, H, W] signal in each radial band of BAND_EDGES."""
    spectrum = torch.fft.fft2(signal.double()).abs().square().sum(dim=0) / (signal.shape[1] * signal.shape[2])
    fy = torch.fft.fftfreq(signal.shape[1], dtype=torch.float64)[:, None]
    fx = torch.fft.fftfreq(signal.shape[2], dtype=torch.float64)[None, :]
    radius = (fy.square() + fx.square()).sqrt()
    band = torch.bucketize(radius, torch.tensor(BAND_EDGES[1:-1], dtype=torch.float64), right=True)
    return torch.bincount(band.reshape(-1), weights=spectrum.reshape(-1), minlength=len(BAND_EDGES) - 1).numpy()


@torch.no_grad()
def held_out(model, images: list[tuple[str, torch.Tensor]]) -> tuple[tuple[torch.Tensor, torch.Tensor], dict]:
    """Every measurement that runs on the full-size photographs, in one pass over them; and the latents' mean
    and principal axes (columns, by falling variance)."""
    quantizer = model.quantizers[0]
    stages, entries = quantizer.slots, quantizer.num_atoms
    error = np.zeros(stages + 1)  # [0]: unquantised, [q]: the first q stages (squared error, 255 scale)
    error_offsets = np.zeros(stages + 1)
    distance = np.zeros(stages + 1)  # decode(z_q) against decode(z)
    left = np.zeros(stages + 1)  # ||z - z_q||^2 ([0]: ||z||^2)
    residual_norm = np.zeros(stages)  # sum over positions of the norm of the residual stage k is given
    counts = torch.zeros(stages, entries, dtype=torch.float64)
    image_band, error_band = np.zeros(len(BAND_EDGES) - 1), {}
    covariance, mean, vectors = torch.zeros(quantizer.dim, quantizer.dim, dtype=torch.float64), 0, 0
    per_image, values = [], 0
    for name, image in images:
        start = time.perf_counter()
        _, height, width = image.shape
        z = latent(model, image)
        codes = quantizer(z).codes
        flat = z[0].permute(1, 2, 0).reshape(-1, quantizer.dim).double()
        covariance += flat.T @ flat
        mean, vectors = mean + flat.sum(dim=0), vectors + flat.shape[0]
        residual = flat.clone()
        for stage in range(stages):
            residual_norm[stage] += float(residual.norm(dim=1).sum())
            atoms = codes.atoms[0, ..., stage].reshape(-1) - stage * entries
            residual -= quantizer.stages[stage].entries().double()[atoms]
            counts[stage] += torch.bincount(atoms, minlength=entries).double()
        outputs = [decoded(model, z, height, width)]
        for q in range(1, stages + 1):
            prefix = quantizer.decode_codes(Codes(codes.atoms[..., :q], codes.levels[..., :q]))
            outputs.append(decoded(model, prefix, height, width))
            left[q] += float((z - prefix).double().square().sum())
        left[0] += float(z.double().square().sum())
        row = {"name": name, "megapixels": height * width / 1e6}
        for q, output in enumerate(outputs):
            error[q] += float(squared_error_255(image, output))
            error_offsets[q] += float(squared_error_255(image, with_offsets(image, output)))
            distance[q] += float(squared_error_255(outputs[0], output))
        row["unquantised_psnr"] = psnr(float(squared_error_255(image, outputs[0])) / image.numel())
        row["top_psnr"] = psnr(float(squared_error_255(image, outputs[-1])) / image.numel())
        row["q1_psnr"] = psnr(float(squared_error_255(image, outputs[1])) / image.numel())
        # The mean colour the top quality misses (levels of 255), before the files' offsets.
        row["colour_bias_levels"] = ((image.mean(dim=(1, 2)) - outputs[-1].mean(dim=(1, 2))) * 127.5).tolist()
        image_band += band_energy(image - image.mean(dim=(1, 2), keepdim=True))
        for q in (0, 1, stages):  # the codec's output: its offsets take the error's mean (DC) away
            error_band[q] = error_band.get(q, 0) + band_energy(image - with_offsets(image, outputs[q]))
        values += image.numel()
        per_image.append(row)
        print(f"  {name}: unquantised {row['unquantised_psnr']:.2f} dB, q1 {row['q1_psnr']:.2f}, "
              f"q{stages} {row['top_psnr']:.2f} ({time.perf_counter() - start:.0f} s)", flush=True)

    mean = mean / vectors
    centred = covariance / vectors - torch.outer(mean, mean)
    eigen, basis = torch.linalg.eigh(centred)
    eigen, basis = eigen.flip(0).clamp_min(0), basis.flip(1)
    cumulative = (eigen.cumsum(0) / eigen.sum()).numpy()
    usage_ema = [stage.usage for stage in quantizer.stages]
    codebooks = []
    for stage in range(stages):
        row = counts[stage]
        p = row[row > 0] / row.sum()
        norms = quantizer.stages[stage].entries().double().norm(dim=1)
        codebooks.append({
            "used": int((row > 0).sum()), "perplexity": float(torch.exp(-(p * p.log()).sum())),
            "dead_held_out": int((row == 0).sum()),
            "dead_training": int((usage_ema[stage] < DEAD_BELOW / entries).sum()),
            "entry_norm_mean": float(norms.mean()), "entry_norm_median": float(norms.median()),
            "entry_norm_min": float(norms.min()), "entry_norm_max": float(norms.max()),
            "entry_norm_used_mean": float((norms * row).sum() / row.sum()),
            "residual_norm_mean": residual_norm[stage] / vectors})
    shares = left / left[0]
    total_signal = image_band.sum()
    return (mean, basis), {
        "images": [row["name"] for row in per_image],
        "megapixels_mean": float(np.mean([row["megapixels"] for row in per_image])),
        "unquantised": {"psnr": psnr(error[0] / values), "psnr_with_offsets": psnr(error_offsets[0] / values)},
        "qualities": [{"quality": q, "psnr": psnr(error[q] / values),
                       "psnr_with_offsets": psnr(error_offsets[q] / values),
                       "gain_db": psnr(error[q] / values) - (psnr(error[q - 1] / values) if q > 1 else float("nan")),
                       "latent_error": float(shares[q]), "latent_error_removed": float(shares[q - 1] - shares[q]),
                       "psnr_vs_unquantised_output": psnr(distance[q] / values), "codebook": codebooks[q - 1]}
                      for q in range(1, stages + 1)],
        "mse_by_quality": (error[1:] / values).tolist(),
        "per_image": per_image,
        "colour_bias_levels_mean": np.mean([row["colour_bias_levels"] for row in per_image], axis=0).tolist(),
        "latent": {"channels": quantizer.dim, "stride": model.config.stride,
                   "pixel_values_per_position": 3 * model.config.stride**2,
                   "top_quality_raw_bits_per_pixel": stages * math.log2(entries) / model.config.stride**2,
                   "components_for_energy": {str(s): int(np.searchsorted(cumulative, s) + 1) for s in ENERGY_SHARES},
                   "eigenvalue_share": (eigen / eigen.sum()).tolist()},
        "spectrum": {
            "band_edges_cycles_per_pixel": list(BAND_EDGES[:-1]) + [math.sqrt(0.5)],
            "image_energy_share": (image_band / total_signal).tolist(),
            "error_share": {str(q): (e / e.sum()).tolist() for q, e in error_band.items()},
            "error_over_image": {str(q): (e / image_band).tolist() for q, e in error_band.items()},
            # An ideal low-pass keeping every frequency below an edge exactly and nothing above it.
            "lowpass_psnr": {f"{edge:.6g}": psnr(float(image_band[i:].sum()) * 127.5**2 / values)
                             for i, edge in enumerate(BAND_EDGES[1:-1], start=1)}},
    }


@torch.no_grad()
def training_gap(model, paths: list[Path]) -> dict:
    """Unquantised and top-quality PSNR on photographs the model trained on."""
    quantizer, error, top, values = model.quantizers[0], 0.0, 0.0, 0
    for path in paths:
        image = read(path)
        z = latent(model, image)
        error += float(squared_error_255(image, decoded(model, z, *image.shape[1:])))
        top += float(squared_error_255(image, decoded(model, quantizer(z).z_q, *image.shape[1:])))
        values += image.numel()
    return {"images": [p.name for p in paths], "unquantised_psnr": psnr(error / values), "top_psnr": psnr(top / values)}


def on_crops(model, images: list[tuple[str, torch.Tensor]], pca: tuple[torch.Tensor, torch.Tensor],
             steps: int) -> dict:
    """Each photograph's centre crop (the training crop size), batched: the decoder given the encoder's latents
    cut to their first k principal components (does the decoder use the latent's low-energy channels?), and
    given latents optimised by ``steps`` of Adam on the pixel error through the frozen decoder (what an
    encoder could still gain), with both latents quantised by every stage."""
    crops = []
    for _, image in images:
        top, left = (image.shape[1] - CROP) // 2, (image.shape[2] - CROP) // 2
        crops.append(image[:, top : top + CROP, left : left + CROP])
    x = torch.stack(crops)
    quantizer = model.quantizers[0]

    def score(z: torch.Tensor) -> float:
        with torch.no_grad():
            return psnr(float(squared_error_255(x, model.dec(z))) / x.numel())

    for parameter in model.parameters():
        parameter.requires_grad_(False)
    with torch.no_grad():
        start_z = model.quantize_conv(model.enc(x))
        mean, basis = (t.to(start_z.dtype) for t in pca)
        flat = start_z.permute(0, 2, 3, 1) - mean
        truncated = {}
        for k in PRINCIPAL_COMPONENTS:
            kept = (flat @ basis[:, :k]) @ basis[:, :k].T + mean
            truncated[str(k)] = score(kept.permute(0, 3, 1, 2))
    print("  the crops' latents cut to k principal components: "
          + ", ".join(f"k={k} {v:.2f} dB" for k, v in truncated.items()), flush=True)
    result = {"crop": CROP, "images": len(crops), "psnr_by_principal_components": truncated}
    if not steps:
        return result
    z = start_z.clone().requires_grad_()
    optimiser = torch.optim.Adam([z], lr=CROP_LR)
    curve = {0: score(z)}
    for step in range(1, steps + 1):
        optimiser.zero_grad()
        (model.dec(z) - x).square().mean().backward()
        optimiser.step()
        if step in CROP_REPORT or step == steps:
            curve[step] = score(z)
            print(f"  optimised latents, step {step}: {curve[step]:.2f} dB", flush=True)
    with torch.no_grad():
        z = z.detach()
        cut = ((z.permute(0, 2, 3, 1) - mean) @ basis[:, :CUT]) @ basis[:, :CUT].T + mean
        result["optimised"] = {
            "psnr_first_components": score(cut.permute(0, 3, 1, 2)), "first_components": CUT,
            "steps": steps, "lr": CROP_LR, "psnr_by_step": {str(k): v for k, v in curve.items()},
            "encoder_top_quality_psnr": score(quantizer(start_z).z_q),
            "optimised_top_quality_psnr": score(quantizer(z).z_q),
            "encoder_latent_error": float((start_z - quantizer(start_z).z_q).square().sum() / start_z.square().sum()),
            "optimised_latent_error": float((z - quantizer(z).z_q).square().sum() / z.square().sum()),
            "latent_change": float((z - start_z).norm() / start_z.norm())}
    return result


def stage_dropout(model, checkpoint, card: Path, mse_by_quality: list[float]) -> dict:
    """What stage dropout's draw of the quality (uniform, or weighted toward the top by
    ``stage_dropout_top_share``) gives the top quality in the run that trained this checkpoint; the card's figure."""
    stages, top = model.quantizers[0].slots, model.config.stage_dropout_top_share
    train = (checkpoint.config or {}).get("params", {}).get("train", {})
    steps, batch = train.get("steps", checkpoint.step), train.get("batch_size")
    found = re.search(r"test split: PSNR ([\d.]+) dB", card.read_text()) if card.exists() else None
    drawn = ([(1 - top) / stages] * (stages - 1) + [top + (1 - top) / stages] if model.config.stage_dropout
             else [0.0] * (stages - 1) + [1.0])  # each quality's share of the training images
    # The objective is the drawn qualities' mean error: the top quality's share of it, from the errors the held-out
    # photographs measure.
    weighted = [share * mse for share, mse in zip(drawn, mse_by_quality)]
    return {"enabled": bool(model.config.stage_dropout), "top_share_setting": top, "steps": steps, "batch_size": batch,
            "top_quality_share_of_images": drawn[-1],
            "crops_with_every_stage": round(steps * batch * drawn[-1]) if batch else None,
            "top_quality_share_of_objective": weighted[-1] / sum(weighted),
            "card_test_split_top_psnr": float(found[1]) if found else None}


def plot(result: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    h = result["held_out"]
    qualities = [row["quality"] for row in h["qualities"]]
    figure, (a, b, c) = plt.subplots(1, 3, figsize=(13, 3.8), dpi=100)
    a.plot(qualities, [row["psnr_with_offsets"] for row in h["qualities"]], "o-", label="first q stages")
    a.axhline(h["unquantised"]["psnr_with_offsets"], color="k", ls="--", label="unquantised autoencoder")
    a.set(xlabel="quality q (stages)", ylabel="PSNR (dB), with colour offsets", title="pixels")
    a.legend(fontsize=8)
    b.semilogy(qualities, [row["latent_error"] for row in h["qualities"]], "o-")
    b.set(xlabel="quality q (stages)", ylabel="||z - z_q||^2 / ||z||^2", title="latent error left")
    centres = np.arange(len(h["spectrum"]["image_energy_share"]))
    width = 0.27
    edges = h["spectrum"]["band_edges_cycles_per_pixel"]
    c.bar(centres - width, h["spectrum"]["image_energy_share"], width, label="photographs' energy")
    for shift, (key, label) in zip((0, width), (("1", "error, q1"), (str(qualities[-1]), f"error, q{qualities[-1]}"))):
        c.bar(centres + shift, h["spectrum"]["error_share"][key], width, label=label)
    c.set_xticks(centres, [f"{lo:.3g}-{hi:.3g}" for lo, hi in zip(edges, edges[1:])], fontsize=7)
    c.set(xlabel="cycles a pixel", ylabel="share of energy", title="by spatial frequency", yscale="log")
    c.legend(fontsize=8)
    figure.suptitle(f"zoo model {result['model']}: {len(h['images'])} held-out photographs, full size", fontsize=10)
    figure.tight_layout()
    figure.savefig(path)
    plt.close(figure)
    print(f"wrote {path}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="photo", help="a zoo name or checkpoint (default: %(default)s)")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--limit", type=int, default=0, help="at most this many held-out photographs (0: all)")
    parser.add_argument("--crop-steps", type=int, default=200,
                        help="Adam steps on the crops' latents (default: %(default)s; 0: none)")
    parser.add_argument("--output", type=Path, default=RESULTS / "photo_cap.json")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    if not PHOTOS.is_dir():
        raise SystemExit(f"no photographs at {PHOTOS}: this diagnosis needs ../shared/data/photos")
    found = resolve_model(args.model)
    checkpoint = load_checkpoint(found["model"])
    model = checkpoint.model.eval()
    if len(model.quantizers) != 1 or not isinstance(model.quantizers[0], ResidualVQ):
        raise SystemExit("this diagnosis reads the stages of a one-map residual VQ (the photo codec's model)")
    images = image_sets(args.limit)["photos"]
    start = time.perf_counter()
    pca, measured = held_out(model, images)
    result = {"model": args.model, "fingerprint": model.fingerprint(), "threads": args.threads,
              "model_arguments": model.arguments, "held_out": measured}
    result["training_photos"] = training_gap(model, photo_files(PHOTOS)[:TRAINING_PHOTOS])
    result["stage_dropout"] = stage_dropout(model, checkpoint, Path(found["model"]).parent / "MODEL_CARD.md",
                                            result["held_out"]["mse_by_quality"])
    result["crops"] = on_crops(model, images, pca, args.crop_steps)
    result["seconds"] = round(time.perf_counter() - start, 1)

    h = result["held_out"]
    print(f"unquantised autoencoder: {h['unquantised']['psnr']:.2f} dB ({h['unquantised']['psnr_with_offsets']:.2f} "
          f"with colour offsets); {result['training_photos']['unquantised_psnr']:.2f} dB on {TRAINING_PHOTOS} "
          "training photographs")
    print(f"{'q':>3} {'PSNR':>6} {'+offs':>6} {'gain':>5} {'z err':>7} {'removed':>7} {'vs dec(z)':>9} {'used':>5} "
          f"{'perpl':>6} {'dead':>4} {'|e|':>5} {'|r|':>5}")
    for row in h["qualities"]:
        cb = row["codebook"]
        print(f"{row['quality']:>3} {row['psnr']:6.2f} {row['psnr_with_offsets']:6.2f} {row['gain_db']:5.2f} "
              f"{row['latent_error']:7.4f} {row['latent_error_removed']:7.4f} {row['psnr_vs_unquantised_output']:9.2f} "
              f"{cb['used']:5d} {cb['perplexity']:6.0f} {cb['dead_held_out']:4d} {cb['entry_norm_used_mean']:5.2f} "
              f"{cb['residual_norm_mean']:5.2f}")
    print(f"latent: {h['latent']['channels']} channels a /{h['latent']['stride']} position "
          f"({h['latent']['pixel_values_per_position']} pixel values); components for 90/99/99.9% of its energy: "
          f"{', '.join(str(v) for v in h['latent']['components_for_energy'].values())}")
    spectrum, top = h["spectrum"], str(len(h["qualities"]))
    print("by band of cycles a pixel (" + " ".join(f"{v:.3g}" for v in spectrum["band_edges_cycles_per_pixel"])
          + "): the photographs' energy " + " ".join(f"{v:.4f}" for v in spectrum["image_energy_share"])
          + f"; the error's at q{top} " + " ".join(f"{v:.3f}" for v in spectrum["error_share"][top])
          + "; error / energy " + " ".join(f"{v:.3f}" for v in spectrum["error_over_image"][top]))
    if "optimised" in result["crops"]:
        o = result["crops"]["optimised"]
        print(f"optimised latents ({result['crops']['images']} crops of {result['crops']['crop']}): "
              f"{o['psnr_by_step']['0']:.2f} -> "
              f"{o['psnr_by_step'][str(o['steps'])]:.2f} dB; quantised {o['encoder_top_quality_psnr']:.2f} -> "
              f"{o['optimised_top_quality_psnr']:.2f} dB")
    print(f"stage dropout: top quality {result['stage_dropout']['top_quality_share_of_images']:.0%} of the images, "
          f"{result['stage_dropout']['top_quality_share_of_objective']:.1%} of the objective")
    write_json(args.output, result)
    plot(result, args.output.with_suffix(".png"))


if __name__ == "__main__":
    main()
