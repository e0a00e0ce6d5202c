"""After a sweep, the variants side by side: one rate-distortion table and plot over every trained
model (its factorised- and prior-coded files) and the reference codecs, and grids of the same test
images reconstructed by each model (original first) and of samples from each model's priors.

Every variant's evaluate stage measured its own points on the same test images (the variants share
the data settings), so the comparison reads their ``eval/rate_distortion.csv`` rather than coding
the images again.
"""

from __future__ import annotations

import csv
import json
import re
from pathlib import Path
from typing import Any

import torch

from sparse_vqvae.atomic import write_json
from sparse_vqvae.data import ImageArray
from sparse_vqvae.devices import default_device
from sparse_vqvae.pictures import save_grid
from sparse_vqvae.generation import sample_maps
from sparse_vqvae.prior_coding import PriorEntropyModel
from sparse_vqvae.rate_distortion import plot, psnr_at_rate, write_table
from sparse_vqvae.train import load_checkpoint

from .layout import DATA_SUMMARY, TEST_IMAGES, VQVAE, prior_path
from .tracking import StageTracker

RD_FILE = Path("rate_distortion.csv")
COMPARISON_FILE = Path("comparison.json")
GRID_IMAGES = 8


def rate_distortion_rows(workspaces: dict[str, Path]) -> list[dict[str, Any]]:
    """Each variant's own points (labelled with the variant) and, once, the reference codecs'."""
    rows: list[dict[str, Any]] = []
    for index, (name, workspace) in enumerate(workspaces.items()):
        with open(workspace / "eval/rate_distortion.csv", newline="") as handle:
            for row in csv.DictReader(handle):
                ours = row["codec"].startswith("sparse-vqvae")
                if not ours and index > 0:
                    continue  # the same images: the references are measured once
                point = {**row, **{key: float(row[key]) for key in ("bpp", "psnr", "ssim", "ms_ssim")}}
                if ours:
                    point["codec"] = f"{name} ({row['entropy']})"
                rows.append(point)
    return rows


def headline(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """Per variant and entropy model (our rows, the ones with an entropy model): bpp and PSNR, and JPEG's
    PSNR at that rate where JPEG reaches it."""
    jpeg = [row for row in rows if row["codec"] == "JPEG"]
    return {row["codec"]: {"bpp": row["bpp"], "psnr": row["psnr"], "ms_ssim": row["ms_ssim"],
                           "jpeg_psnr_at_bpp": psnr_at_rate(jpeg, row["bpp"])} for row in rows if row["entropy"]}


@torch.no_grad()
def grids(workspaces: dict[str, Path], out: Path, samples: int = GRID_IMAGES, seed: int = 0) -> list[Path]:
    """Reconstructions (row 1: originals; then one row per variant) and samples (one row per variant)."""
    device = default_device()
    first = next(iter(workspaces.values()))
    hashes = {json.dumps(json.loads((w / DATA_SUMMARY).read_text())["test"]) for w in workspaces.values()}
    if len(hashes) != 1:
        raise ValueError("the variants were tested on different images: compare variants of one data setting")
    test_set = ImageArray(first / TEST_IMAGES)
    originals = torch.stack([test_set[i] for i in range(min(GRID_IMAGES, len(test_set)))]).to(device)
    reconstructions, drawn = [originals], []
    for workspace in workspaces.values():
        model = load_checkpoint(workspace / VQVAE, device).model.eval()
        reconstructions.append(model(originals).reconstruction)
        priors = PriorEntropyModel.load([workspace / prior_path(level) for level in range(model.config.maps)],
                                        device, model.fingerprint()).priors
        generator = torch.Generator(device=device).manual_seed(seed)
        drawn.append(model.decode_codes(sample_maps(priors, samples, generator=generator)))
    return [save_grid(torch.cat(reconstructions), out / "reconstructions.png", columns=len(originals), scale=3),
            save_grid(torch.cat(drawn), out / "samples.png", columns=samples, scale=3)]


def run(workspaces: dict[str, Path], out: Path, tracker: StageTracker | None = None) -> dict[str, Any]:
    """Write ``out``/rate_distortion.{csv,png}, comparison.json, reconstructions.png, samples.png; log them."""
    out.mkdir(parents=True, exist_ok=True)
    rows = rate_distortion_rows(workspaces)
    figures = headline(rows)
    paths = [write_table(rows, out / RD_FILE),
             plot(rows, out / "rate_distortion.png", "rate-distortion: the sweep's models, JPEG, WebP"),
             *grids(workspaces, out)]
    paths.append(write_json(out / COMPARISON_FILE, figures))
    if tracker is not None:
        for path in paths:
            tracker.log_artifact(path, "pictures" if path.suffix == ".png" else None)
        tracker.log_metrics({re.sub(r"[^\w.\-/]+", "_", f"{key} {name}"): value
                             for key, row in figures.items() for name, value in row.items() if value is not None})
    return figures
