"""Rate-distortion points: our compressed files against JPEG and WebP (Pillow) on the same images,
each rate from the real encoded size (8 x bytes / pixels), each PSNR from the whole-set MSE, SSIM
and MS-SSIM (as many scales as the images hold: 2 at 32x32) averaged over images."""

from __future__ import annotations

import csv
import io
from pathlib import Path
from typing import Iterable

import numpy as np
import torch
from PIL import Image, features
from tqdm.auto import tqdm

from .atomic import atomic_write
from .codec import Codec, payload_size
from .data import to_model_range, to_uint8
from .metrics import ms_ssim, ms_ssim_scales, psnr, squared_error_255, ssim
from .pictures import line_plot

JPEG_QUALITIES = (5, 10, 20, 30, 50, 75, 90)
WEBP_QUALITIES = (5, 10, 20, 30, 50, 75, 90)
COLUMNS = ("codec", "entropy", "setting", "images", "bpp", "psnr", "ssim", "ms_ssim", "ms_ssim_scales")


def measure_point(codec: str, setting: float | str, pairs: Iterable[tuple[torch.Tensor, torch.Tensor, int]]) -> dict:
    """One rate-distortion point from (original, decoded, file bytes) triples of [3, H, W] images."""
    error = ssim_sum = ms_ssim_sum = 0.0
    bits = pixels = count = 0
    by_size: dict[tuple, list[tuple[torch.Tensor, torch.Tensor]]] = {}  # (MS-)SSIM in batches of one size
    for original, decoded, size in pairs:
        error += float(squared_error_255(original[None], decoded[None]))
        by_size.setdefault(tuple(original.shape), []).append((original, decoded))
        bits += 8 * size
        pixels += original.shape[1] * original.shape[2]
        count += 1
    for group in by_size.values():
        for start in range(0, len(group), 256):
            originals, decoded = (torch.stack(t) for t in zip(*group[start : start + 256]))
            ssim_sum += float(ssim(originals, decoded).sum())
            ms_ssim_sum += float(ms_ssim(originals, decoded).sum())
    scales = min(ms_ssim_scales(*shape[1:]) for shape in by_size)
    return {"codec": codec, "setting": setting, "images": count, "bpp": bits / pixels,
            "psnr": psnr(error / (3 * pixels)), "ssim": ssim_sum / count, "ms_ssim": ms_ssim_sum / count,
            "ms_ssim_scales": scales}


def codec_label(codec: Codec) -> str:
    return f"sparse-vqvae {codec.model.config.selection_fn} ({codec.entropy.kind})"


def sparse_vqvae_point(codec: Codec, images: list[torch.Tensor], quality: int | None = None,
                       progress: bool = True) -> dict:
    """Our codec on ``images`` ([3, H, W] each) at ``quality`` (default the highest): every image compressed
    to a file's bytes and back."""
    quality = codec.resolved_quality(quality)
    payload = []  # each file's payload bytes: the rate without the header

    def pairs():
        for image in tqdm(images, desc=f"rate-distortion: {codec_label(codec)}", disable=not progress, leave=False):
            data = codec.compress(image, quality)
            payload.append(payload_size(data))
            yield image, codec.decompress(data), len(data)

    point = measure_point(codec_label(codec), quality, pairs())
    pixels = sum(image.shape[1] * image.shape[2] for image in images)
    return {**point, "payload_bpp": 8 * sum(payload) / pixels, "entropy": codec.entropy.kind}


def pillow_encode(image: torch.Tensor, codec: str = "JPEG", quality: int = 75) -> bytes:
    """An image [3, H, W] in [-1, 1] as a Pillow ``codec`` (JPEG or WEBP) file: the references' one encoder."""
    buffer = io.BytesIO()
    Image.fromarray(to_uint8(image[None])[0]).save(buffer, format=codec, quality=quality)
    return buffer.getvalue()


def pillow_decode(data: bytes) -> torch.Tensor:
    """A Pillow-readable file -> the image [3, H, W] in [-1, 1]."""
    with Image.open(io.BytesIO(data)) as decoded:
        return to_model_range(np.array(decoded.convert("RGB")))


def pillow_points(images: list[torch.Tensor], codec: str = "JPEG", qualities: Iterable[int] = JPEG_QUALITIES) -> list[dict]:
    """``codec`` (JPEG or WEBP) at each quality on the same images."""

    def pairs(quality: int):
        for image in images:
            data = pillow_encode(image, codec, quality)
            yield image, pillow_decode(data), len(data)

    return [measure_point(codec, quality, pairs(quality)) for quality in qualities]


def reference_points(images: list[torch.Tensor]) -> list[dict]:
    """JPEG, and WebP where Pillow has it."""
    points = pillow_points(images, "JPEG", JPEG_QUALITIES)
    if features.check("webp"):
        points += pillow_points(images, "WEBP", WEBP_QUALITIES)
    return points


def psnr_at_rate(points: list[dict], bpp: float) -> float | None:
    """A codec's PSNR at ``bpp``, interpolated linearly between its points (None outside them)."""
    ordered = sorted(points, key=lambda p: p["bpp"])
    rates = [p["bpp"] for p in ordered]
    if not ordered or not rates[0] <= bpp <= rates[-1]:
        return None
    return float(np.interp(bpp, rates, [p["psnr"] for p in ordered]))


def pareto(points: list[dict], rate: str = "bpp", quality: str = "psnr") -> list[dict]:
    """The points no other point beats at once in rate and quality, by ascending rate: a codec's curve."""
    frontier: list[dict] = []
    for point in sorted(points, key=lambda p: (p[rate], -p[quality])):
        if not frontier or point[quality] > frontier[-1][quality]:
            frontier.append(point)
    return frontier


def bd_rate(anchor: list[dict], test: list[dict], rate: str = "bpp", quality: str = "psnr",
            within: tuple[float, float] | None = None) -> float | None:
    """Bjontegaard delta rate: the mean percent difference in rate of ``test`` against ``anchor`` at equal
    quality, over the quality range both curves cover (negative: ``test`` needs fewer bits), cut to ``within``
    (low, high) where given: a target set over a range of the anchor's qualities is judged over that range alone.

    Each curve is its Pareto frontier, log-rate interpolated against quality by monotone piecewise
    cubics (PCHIP, as current BD-rate tools do in place of the original cubic fit) and integrated.
    None when the curves share no quality range (within ``within``) or one has fewer than two points.
    """
    delta = _bjontegaard(anchor, test, rate, quality, rate_axis=False, within=within)
    return None if delta is None else float((np.exp(delta) - 1) * 100)


def bd_psnr(anchor: list[dict], test: list[dict], rate: str = "bpp", quality: str = "psnr") -> float | None:
    """Bjontegaard delta quality: the mean difference in ``quality`` (dB for PSNR) of ``test`` against
    ``anchor`` at equal rate, over the log-rate range both curves cover (positive: ``test`` is better).

    The companion of :func:`bd_rate` for curves that share a rate range but hardly a quality range (a
    codebook whose PSNR barely moves with its size). None as for ``bd_rate``, with rates in place of qualities.
    """
    return _bjontegaard(anchor, test, rate, quality, rate_axis=True)


def _bjontegaard(anchor: list[dict], test: list[dict], rate: str, quality: str, rate_axis: bool,
                 within: tuple[float, float] | None = None) -> float | None:
    """The mean of test minus anchor over the common range of the integration axis (cut to ``within``, in its
    units): log-rate as a function of quality (``rate_axis`` False) or quality as a function of log-rate (True),
    PCHIP through each frontier."""
    from scipy.interpolate import PchipInterpolator

    curves = []
    for points in (anchor, test):
        frontier = pareto(points, rate, quality)
        if len(frontier) < 2:
            return None
        qualities = np.array([p[quality] for p in frontier])
        log_rates = np.log(np.array([p[rate] for p in frontier]))
        curves.append((log_rates, qualities) if rate_axis else (qualities, log_rates))
    low = max(curve[0][0] for curve in curves)
    high = min(curve[0][-1] for curve in curves)
    if within is not None:
        low, high = max(low, within[0]), min(high, within[1])
    if high <= low:
        return None
    integrals = [PchipInterpolator(x, y).integrate(low, high) for x, y in curves]
    return float((integrals[1] - integrals[0]) / (high - low))


def write_table(points: list[dict], path: str | Path) -> Path:
    """The points as CSV (one row each; the columns of ``COLUMNS``), written atomically."""
    with atomic_write(path, "w") as handle:
        writer = csv.DictWriter(handle, fieldnames=COLUMNS, extrasaction="ignore")
        writer.writeheader()
        writer.writerows(points)
    return Path(path)


def plot(points: list[dict], path: str | Path, title: str) -> Path:
    """PSNR against real bits per pixel, one curve per codec, sorted by rate."""
    series: dict[str, tuple[list[float], list[float]]] = {}
    for point in sorted(points, key=lambda p: p["bpp"]):
        xs, ys = series.setdefault(point["codec"], ([], []))
        xs.append(point["bpp"])
        ys.append(point["psnr"])
    return line_plot(series, path, "bits per pixel (real file sizes)", "PSNR (dB)", title)
