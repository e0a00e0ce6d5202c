"""Stage 6: how good the trained model and its prior are, in figures and pictures.

Writes ``eval/metrics.json`` (test MSE, PSNR, SSIM, the mean-colour baseline's PSNR, bits per
image under the prior and under the factorised baseline, atom usage), ``eval/atom_usage.csv``
and ``eval/rate_distortion.csv`` (plot data: our compressed files, factorised and prior entropy
coding, against JPEG and WebP on the same test images, real file sizes, PSNR, SSIM, MS-SSIM) and
``eval/pictures/`` (reconstructions, samples, the rate-distortion plot, each grid titled), then prints a summary
table with every stage's wall time. Where the data is CIFAR-10 (the train_judge stage left a judge), it also
measures synthesis (tasks/synthesis.py): ``fd_<source>``, ``precision_<source>`` and ``recall_<source>`` for
real images, reconstructions, factorised samples and PixelSNAIL samples at each temperature, with a titled grid
of each source. A class-conditional prior draws its samples with the classes spread evenly over them, a class a
column of the grid, which names them.
"""

from __future__ import annotations

import csv
import json
from typing import Any

import numpy as np
import torch

from sparse_vqvae.atomic import atomic_write, write_json
from sparse_vqvae.code_store import CodeStore, code_batches
from sparse_vqvae.codec import Codec
from sparse_vqvae.data import ImageArray
from sparse_vqvae.devices import default_device
from sparse_vqvae.entropy_coding import load_frequencies
from sparse_vqvae.metrics import atom_usage
from sparse_vqvae.pictures import save_grid
from sparse_vqvae.prior_coding import PriorEntropyModel
from sparse_vqvae.generation import sample_maps
from sparse_vqvae.judge import Judge, held_out_split, load_extractor
from sparse_vqvae.prior_train import bits_per_image
from sparse_vqvae.rate_distortion import plot, psnr_at_rate, reference_points, sparse_vqvae_point, write_table
from sparse_vqvae.train import evaluate, load_checkpoint

from .layout import (EVAL, FREQUENCY_MODEL, JUDGE, MAP_NAMES, TEST_CODES, TEST_IMAGES, VQVAE, prior_path,
                     stage_timings)
from .params import PipelineParams
from .stage import run_stage
from .synthesis import TEMPERATURES, measure_model, reference, spread_labels
from .train_judge import labelled_cifar10
from .tracking import StageTracker, log_pipeline_model

STAGE = "evaluate"
STAGES_BEFORE = ("prepare_data", "train_judge", "pretrain_dictionary", "train_vqvae", "extract_codes", "train_prior")
PICTURES = EVAL / "pictures"
METRICS_FILE = EVAL / "metrics.json"
USAGE_FILE = EVAL / "atom_usage.csv"
RD_FILE = EVAL / "rate_distortion.csv"


def run(params: PipelineParams, tracker: StageTracker) -> dict[str, Any]:
    device = default_device()
    model = load_checkpoint(VQVAE, device).model.eval()
    test_set = ImageArray(TEST_IMAGES)
    metrics: dict[str, Any] = {"selection_fn": params.model.selection_fn, "dataset": params.data.name,
                               **evaluate(model, test_set, params.evaluate.batch_size, progress=True)}

    fingerprint = model.fingerprint()
    test_store = CodeStore(TEST_CODES, fingerprint)  # read a batch at a time
    test_maps = test_store.batch(range(len(test_store)))  # atom usage: the test codes as stored (int16 atoms)
    prior_model = PriorEntropyModel.load([prior_path(level) for level in range(len(test_store.meta.map_sizes))],
                                         device, fingerprint)
    priors = prior_model.priors
    pixels = test_set[0].shape[1] * test_set[0].shape[2]
    prior_bits = sum(bits_per_image(prior, test_store, level) for level, prior in enumerate(priors))
    frequencies = load_frequencies(FREQUENCY_MODEL)  # fitted to the training codes by train_prior
    factorized_bits = float(np.mean([frequencies.bits(tuple(m[i] for m in batch))
                                     for batch in code_batches(test_store, 256) for i in range(batch[0].atoms.shape[0])]))
    metrics |= {"prior_bits_per_image": prior_bits, "factorized_bits_per_image": factorized_bits,
                "prior_bits_per_pixel": prior_bits / pixels, "factorized_bits_per_pixel": factorized_bits / pixels}
    counts = []
    for level, codes in enumerate(test_maps):
        name = MAP_NAMES[level]
        usage = atom_usage(codes.atoms, test_store.meta.num_atoms)
        metrics |= {f"{name}_atoms_used_share": usage["used_share"], f"{name}_atom_perplexity": usage["perplexity"]}
        present = codes.atoms[codes.atoms >= 0]
        counts.append(torch.bincount(present, minlength=test_store.meta.num_atoms).sort(descending=True).values)
    _write_usage(counts)

    pictures = _pictures(model, test_set, priors, params, device)
    metrics |= _rate_distortion(model, test_set, prior_model, pictures, params)
    metrics |= _synthesis(model, test_set, priors, pictures, params)
    path = write_json(METRICS_FILE, metrics)
    for item in pictures + [path, USAGE_FILE, RD_FILE]:
        tracker.log_artifact(item, "pictures" if item.suffix == ".png" else None)
    print_summary(metrics)
    # The model evaluated here, as one MLflow model of the pipeline run, registered: a new version per run.
    version = log_pipeline_model(params, tracker, VQVAE, FREQUENCY_MODEL,
                                 [prior_path(level) for level in range(len(priors))], metrics)
    print(f"\nregistered: models:/{version.name}/{version.version} (models:/{version.name}@{params.model.selection_fn}, "
          f"models:/{version.name}@latest)")
    return {k: v for k, v in metrics.items() if isinstance(v, (int, float))}


def _write_usage(counts: list[torch.Tensor]) -> None:
    with atomic_write(USAGE_FILE, "w") as handle:
        writer = csv.writer(handle)
        writer.writerow(["rank", *MAP_NAMES])
        for rank in range(len(counts[0])):
            writer.writerow([rank] + [int(c[rank]) for c in counts] + [""] * (len(MAP_NAMES) - len(counts)))


def _rate_distortion(model, test_set, prior_model: PriorEntropyModel, pictures: list,
                     params: PipelineParams) -> dict[str, Any]:
    """Our files (factorised and prior entropy coding) against JPEG/WebP on the first test images:
    eval/rate_distortion.csv, a plot, the headline figures."""
    images = [test_set[i] for i in range(min(params.evaluate.rate_distortion_images, len(test_set)))]
    ours = sparse_vqvae_point(Codec(model, load_frequencies(FREQUENCY_MODEL)), images)
    prior_coded = sparse_vqvae_point(Codec(model, prior_model), images[: params.evaluate.prior_coding_images])
    references = reference_points(images)
    write_table([ours, prior_coded] + references, RD_FILE)
    pictures.append(plot([ours, prior_coded] + references, PICTURES / "rate_distortion.png",
                         "rate-distortion on the test images"))
    jpeg = psnr_at_rate([p for p in references if p["codec"] == "JPEG"], ours["bpp"])
    figures = {"codec_bpp": ours["bpp"], "codec_psnr": ours["psnr"], "codec_ssim": ours["ssim"],
               "codec_ms_ssim": ours["ms_ssim"], "prior_codec_bpp": prior_coded["bpp"],
               "prior_codec_psnr": prior_coded["psnr"], "prior_codec_images": prior_coded["images"],
               "jpeg_min_bpp": min(p["bpp"] for p in references if p["codec"] == "JPEG")}
    if jpeg is not None:
        figures["jpeg_psnr_at_codec_bpp"] = jpeg
    return figures


@torch.no_grad()
def _pictures(model, test_set, priors, params: PipelineParams, device) -> list:
    count = min(params.evaluate.grid_images, len(test_set))
    originals = torch.stack([test_set[i] for i in range(count)]).to(device)
    reconstructions = model(originals).reconstruction
    columns = 8
    rows = []  # each row of originals directly above its reconstructions
    for start in range(0, count, columns):
        rows += [originals[start : start + columns], reconstructions[start : start + columns]]
    paths = [save_grid(torch.cat(rows), PICTURES / "reconstructions.png", columns=columns, scale=3)]

    maps = sample_maps(priors, params.evaluate.samples, params.evaluate.temperature,
                       torch.Generator(device=device).manual_seed(params.evaluate.seed),
                       labels=spread_labels(priors[0], params.evaluate.samples))
    columns, classes = _sample_columns(priors[0])
    paths.append(save_grid(model.decode_codes(maps), PICTURES / "samples.png", columns=columns, scale=3,
                           title=f"{params.model.selection_fn} on {params.data.name}: PixelSNAIL samples, "
                                 f"temperature {params.evaluate.temperature:g}{classes}"))
    return paths


def _sample_columns(prior) -> tuple[int, str]:
    """A sample grid's columns and what its title adds: a class-conditional prior's samples (``spread_labels``) a
    class a column, named in order."""
    classes = prior.config.classes
    return (len(classes), f"; columns: {', '.join(classes)}") if classes else (8, "")


def _synthesis(model, test_set, priors, pictures: list, params: PipelineParams) -> dict[str, Any]:
    """Where the judge stage left a judge (CIFAR-10 data): how close samples are to held-out real images, per source
    (tasks/synthesis.py: real, reconstruction, factorised, PixelSNAIL at each temperature), as flat figures
    (``fd_<source>``, ``precision_<source>``, ``recall_<source>``), and a titled grid of each source's images."""
    if not JUDGE.is_file():
        return {}
    images, _ = labelled_cifar10(params.data)
    train_index, held_index = held_out_split(len(images), params.judge.held_out, params.data.seed)
    extractor = (load_extractor(params.judge.extractor, params.judge.extractor_size, params.judge.extractor_range)
                 if params.judge.extractor else None)
    count = params.evaluate.synthesis_images
    ref = reference(Judge.load(JUDGE), images, train_index, held_index, count, params.evaluate.seed, extractor)
    held_out = torch.stack([test_set[i] for i in range(min(count, len(test_set)))])
    figures, drawn = measure_model(model, priors, load_frequencies(FREQUENCY_MODEL), ref, held_out, count,
                                   TEMPERATURES, params.evaluate.seed)
    figures = {"real": ref.real, **figures}
    for source, shown in drawn.items():
        columns, classes = _sample_columns(priors[0]) if source.startswith("pixelsnail") else (8, "")
        pictures.append(save_grid(shown[: params.evaluate.samples], PICTURES / f"synthesis_{source}.png",
                                  columns=columns, scale=3,
                                  title=f"{params.model.selection_fn} on {params.data.name}: {source}, "
                                        f"FD {figures[source]['fd']:.1f} (the judge's features, not FID){classes}"))
    return {f"{key}_{source}": values[key] for source, values in figures.items() for key in ("fd", "precision", "recall")}


def print_summary(metrics: dict[str, Any]) -> None:
    """The figures that say whether the run worked, and where the time went."""
    rows = [("test PSNR (dB)", f"{metrics['test_psnr']:.2f}"),
            ("mean-colour baseline PSNR (dB)", f"{metrics['baseline_psnr']:.2f}"),
            ("test SSIM", f"{metrics['test_ssim']:.3f}"),
            ("prior bits / image", f"{metrics['prior_bits_per_image']:.1f}"),
            ("factorised bits / image", f"{metrics['factorized_bits_per_image']:.1f}"),
            ("compressed files: bpp", f"{metrics['codec_bpp']:.3f}"),
            ("compressed files: PSNR (dB)", f"{metrics['codec_psnr']:.2f}"),
            ("prior-coded files: bpp", f"{metrics['prior_codec_bpp']:.3f}"),
            ("JPEG PSNR at that bpp (dB)", f"{metrics['jpeg_psnr_at_codec_bpp']:.2f}"
             if "jpeg_psnr_at_codec_bpp" in metrics else f"below JPEG's lowest rate ({metrics['jpeg_min_bpp']:.2f} bpp)")]
    if "fd_pixelsnail_t1" in metrics:  # the judge's Frechet distance: not FID
        rows += [("sample FD, PixelSNAIL t=1 (judge)", f"{metrics['fd_pixelsnail_t1']:.1f}"),
                 ("sample FD, factorised (judge)", f"{metrics['fd_factorised']:.1f}")]
    for stage in STAGES_BEFORE:
        try:
            seconds = json.loads(stage_timings(stage).read_text())["seconds"]
            rows.append((f"time: {stage} (s)", f"{seconds:.1f}"))
        except (OSError, ValueError, KeyError):
            rows.append((f"time: {stage} (s)", "-"))
    width = max(len(name) for name, _ in rows)
    print(f"\nsummary ({metrics['selection_fn']} on {metrics['dataset']})")
    for name, value in rows:
        print(f"  {name:<{width}}  {value:>10}")


def main() -> None:
    run_stage(STAGE, run)


if __name__ == "__main__":
    main()
