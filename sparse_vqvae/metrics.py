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


def _gaussian_window(size: int = 11, sigma: float = 1.5, dtype: torch.dtype = torch.float64) -> torch.Tensor:
    x = torch.arange(size, dtype=dtype) - (size - 1) / 2
    g = torch.exp(-x.square() / (2 * sigma**2))
    g = g / g.sum()
    return g[:, None] * g[None, :]


def ssim(images: torch.Tensor, reconstructions: torch.Tensor) -> torch.Tensor:
    """Per-image SSIM [B] (Wang et al. 2004: 11x11 Gaussian window, sigma 1.5, K1 0.01, K2 0.03) of
    images in [-1, 1], computed on the [0, 255] scale per channel over the valid window positions,
    then averaged over positions and channels. Images under 11 pixels a side get a window of their size."""
    x = (images.double() + 1) * 127.5
    y = (reconstructions.double().clamp(-1, 1) + 1) * 127.5
    channels = x.shape[1]
    size = min(11, x.shape[2], x.shape[3])
    window = _gaussian_window(size, dtype=x.dtype).to(x.device).expand(channels, 1, size, size)

    def blur(t: torch.Tensor) -> torch.Tensor:
        return torch.nn.functional.conv2d(t, window, groups=channels)

    c1, c2 = (0.01 * 255) ** 2, (0.03 * 255) ** 2
    mu_x, mu_y = blur(x), blur(y)
    var_x = blur(x * x) - mu_x.square()
    var_y = blur(y * y) - mu_y.square()
    cov = blur(x * y) - mu_x * mu_y
    value = ((2 * mu_x * mu_y + c1) * (2 * cov + c2)) / ((mu_x.square() + mu_y.square() + c1) * (var_x + var_y + c2))
    return value.mean(dim=(1, 2, 3))


def atom_usage(atoms: torch.Tensor, num_atoms: int) -> dict[str, float]:
    """How a code map uses its dictionary: the share of atoms used at all, and the perplexity of the
    atom distribution (``num_atoms`` when uniform, 1 when one atom does everything)."""
    counts = torch.bincount(atoms[atoms >= 0].reshape(-1), minlength=num_atoms).double()
    p = counts / counts.sum().clamp_min(1)
    perplexity = torch.exp(-(p * torch.log(p.clamp_min(1e-300))).sum())
    return {"used_share": float((counts > 0).double().mean()), "perplexity": float(perplexity)}
