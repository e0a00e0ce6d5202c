"""Image-quality numbers, computed the one way the project reports them.

PSNR comes from the mean squared error over a whole set, on pixels in [0, 255]: averaging
per-image PSNRs would let flat images (huge PSNR) inflate the figure.
"""

from __future__ import annotations

import math

import torch


def squared_error_255(images: torch.Tensor, reconstructions: torch.Tensor) -> torch.Tensor:
    """Sum of squared errors on the [0, 255] scale of images given in [-1, 1]."""
    diff = (reconstructions.clamp(-1, 1) - images) * 127.5
    return diff.double().square().sum()


def mean_colour_squared_error_255(images: torch.Tensor) -> torch.Tensor:
    """The same sum for the baseline that predicts each image's mean colour."""
    return squared_error_255(images, images.mean(dim=(2, 3), keepdim=True).expand_as(images))


def psnr(mse_255: float) -> float:
    """PSNR in dB of a mean squared error on the [0, 255] scale."""
    return 10 * math.log10(255.0**2 / mse_255) if mse_255 > 0 else float("inf")
