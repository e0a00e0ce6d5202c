"""The pictures people look at: image grids, the dictionary's atoms, training curves. PNG files,
written atomically."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Sequence

import torch
from PIL import Image, ImageDraw, ImageFont

from .atomic import atomic_write


def _write_png(image: Image.Image, path: str | Path) -> Path:
    with atomic_write(path) as handle:
        image.save(handle, format="PNG")
    return Path(path)


def save_grid(images: torch.Tensor, path: str | Path, columns: int = 8, scale: int = 1, padding: int = 2,
              title: str | None = None) -> Path:
    """Images [B, 3, H, W] in [-1, 1] as one PNG grid, ``columns`` per row on white, upscaled ``scale`` times,
    under a ``title`` line (what the images are: a grid is read away from the run that made it)."""
    count, _, height, width = images.shape
    columns = min(columns, count)
    rows = math.ceil(count / columns)
    grid = torch.ones(3, rows * (height + padding) + padding, columns * (width + padding) + padding)
    for i, image in enumerate(images.detach().float().cpu().clamp(-1, 1)):
        top, left = padding + (i // columns) * (height + padding), padding + (i % columns) * (width + padding)
        grid[:, top : top + height, left : left + width] = image
    pixels = ((grid + 1) * 127.5).round().to(torch.uint8).permute(1, 2, 0).numpy()
    picture = Image.fromarray(pixels)
    if scale > 1:
        picture = picture.resize((picture.width * scale, picture.height * scale), Image.Resampling.NEAREST)
    if title:
        picture = _titled(picture, title)
    return _write_png(picture, path)


def _titled(picture: Image.Image, title: str) -> Image.Image:
    """``picture`` under a white band holding ``title`` in black (Pillow's own font: no font files needed)."""
    font = ImageFont.load_default(size=max(12, picture.width // 40))
    left, top, right, bottom = ImageDraw.Draw(picture).textbbox((0, 0), title, font=font)
    band = bottom - top + 8
    out = Image.new("RGB", (max(picture.width, right - left + 8), picture.height + band), "white")
    ImageDraw.Draw(out).text((4, 4 - top), title, fill="black", font=font)
    out.paste(picture, (0, band))
    return out


def dictionary_image(atoms: torch.Tensor, path: str | Path, scale: int = 4) -> Path:
    """The atoms (columns of [C, N]) as a grid of square tiles, each atom's C values reshaped to the
    nearest square (zero-padded) and scaled to its own range: blue negative, red positive."""
    dim, count = atoms.shape
    side = math.ceil(math.sqrt(dim))
    tiles = torch.zeros(count, side * side)
    tiles[:, :dim] = atoms.detach().float().cpu().t()
    tiles = tiles / tiles.abs().amax(dim=1, keepdim=True).clamp_min(1e-12)
    tiles = tiles.reshape(count, 1, side, side)
    rgb = torch.cat([tiles.clamp_min(0), torch.zeros_like(tiles), (-tiles).clamp_min(0)], dim=1) * 2 - 1
    columns = math.ceil(math.sqrt(count))
    return save_grid(rgb, path, columns=columns, scale=scale, padding=1)


def line_plot(series: dict[str, tuple[Sequence[float], Sequence[float]]], path: str | Path, xlabel: str,
              ylabel: str, title: str = "", logy: bool = False) -> Path:
    """Curves {label: (x, y)} on one axis as a PNG (matplotlib, no display needed)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    crowded = len(series) > 6  # then a legend beside the axes, and markers that tell colours apart
    figure, axis = plt.subplots(figsize=(10, 5) if crowded else (6, 4), dpi=100)
    markers = "osD^vP*Xh<>"
    for index, (label, (x, y)) in enumerate(series.items()):
        axis.plot(x, y, label=label, marker=(markers[index % len(markers)] if crowded else "o") if len(x) < 20 else None)
    axis.set_xlabel(xlabel)
    axis.set_ylabel(ylabel)
    if logy:
        axis.set_yscale("log")
    if title:
        axis.set_title(title)
    axis.grid(True, alpha=0.3)
    if crowded:
        axis.legend(fontsize="small", loc="center left", bbox_to_anchor=(1.01, 0.5))
    else:
        axis.legend()
    figure.tight_layout()
    with atomic_write(path) as handle:
        figure.savefig(handle, format="png")
    plt.close(figure)
    return Path(path)
