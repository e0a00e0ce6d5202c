"""Image-quality numbers, computed the one way the project reports them.

PSNR comes from the mean squared error over a whole set, on pixels in [0, 255]: averaging
per-image PSNRs would let flat images (huge PSNR) inflate the figure.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F


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


def _to_255(images: torch.Tensor, reconstructions: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    return (images.double() + 1) * 127.5, (reconstructions.double().clamp(-1, 1) + 1) * 127.5


def _luminance_and_contrast_structure(x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """SSIM's two factors at every valid window position, [B, C, h, w], for images on the [0, 255] scale:
    11x11 Gaussian window (sigma 1.5; the image's size if smaller), K1 0.01, K2 0.03."""
    size = min(11, x.shape[2], x.shape[3])
    # The window is separable (an outer product): two 1-D passes over the five maps at once run some
    # 25 times faster on a CPU than a grouped 2-D convolution in double precision.
    g = _gaussian_window(size, dtype=x.dtype).to(x.device).sum(dim=1)
    stacked = torch.stack([x, y, x * x, y * y, x * y])
    flat = stacked.reshape(-1, 1, *stacked.shape[-2:])
    blurred = F.conv2d(F.conv2d(flat, g.view(1, 1, size, 1)), g.view(1, 1, 1, size))
    mu_x, mu_y, xx, yy, xy = blurred.reshape(*stacked.shape[:-2], *blurred.shape[-2:])
    c1, c2 = (0.01 * 255) ** 2, (0.03 * 255) ** 2
    var_x, var_y, cov = xx - mu_x.square(), yy - mu_y.square(), xy - mu_x * mu_y
    luminance = (2 * mu_x * mu_y + c1) / (mu_x.square() + mu_y.square() + c1)
    return luminance, (2 * cov + c2) / (var_x + var_y + c2)


def ssim(images: torch.Tensor, reconstructions: torch.Tensor) -> torch.Tensor:
    """Per-image SSIM [B] (Wang et al. 2004) of images in [-1, 1], computed on the [0, 255] scale per
    channel over the valid window positions, then averaged over positions and channels."""
    luminance, contrast_structure = _luminance_and_contrast_structure(*_to_255(images, reconstructions))
    return (luminance * contrast_structure).mean(dim=(1, 2, 3))


_MS_SSIM_WEIGHTS = (0.0448, 0.2856, 0.3001, 0.2363, 0.1333)


def ms_ssim_scales(height: int, width: int) -> int:
    """How many MS-SSIM scales fit images of this size (at least 1, at most 5), so reports can say which
    MS-SSIM they give: the coarsest scale must still hold the 11-pixel window. Halving rounds odd sizes
    up (see ``ms_ssim``), so s scales fit when the smaller side exceeds 10 * 2**(s-1), the bound
    pytorch_msssim asserts for its 5."""
    side = min(height, width)
    return max(1, sum(1 for s in range(1, len(_MS_SSIM_WEIGHTS) + 1) if side > 10 * 2 ** (s - 1)))


def ms_ssim(images: torch.Tensor, reconstructions: torch.Tensor, scales: int | None = None) -> torch.Tensor:
    """Per-image MS-SSIM [B] (Wang, Simoncelli, Bovik 2003) of images in [-1, 1], with ``ssim``'s window,
    constants and [0, 255] scale, done pytorch_msssim's way so our numbers compare with others': per channel,
    then averaged over channels; mean contrast-structure at every scale but the coarsest, which gets its
    mean SSIM; negatives clamped to 0 (their fractional powers are NaN); between scales ``avg_pool2d`` with
    kernel 2, zero-padding an odd side by one pixel. Our images are too small for 5 scales, so by default
    it uses as many as fit (``ms_ssim_scales``), weights renormalised to sum to 1; all 5 keep the published
    weights (sum 1.0001), as reference implementations do. One scale is ``ssim`` wherever that is >= 0."""
    height, width = images.shape[-2:]
    fit = ms_ssim_scales(height, width)
    if scales is None:
        scales = fit
    elif not 1 <= scales <= fit:
        raise ValueError(f"MS-SSIM with {scales} scales does not fit {height}x{width} images: "
                         f"at most {fit} scale(s) keep the coarsest side above 10 pixels")
    weights = torch.tensor(_MS_SSIM_WEIGHTS[:scales], dtype=torch.float64, device=images.device)
    if scales < len(_MS_SSIM_WEIGHTS):
        weights = weights / weights.sum()
    x, y = _to_255(images, reconstructions)
    terms = []
    for scale in range(scales):
        luminance, contrast_structure = _luminance_and_contrast_structure(x, y)
        if scale < scales - 1:
            terms.append(contrast_structure.mean(dim=(2, 3)).relu())
            padding = (x.shape[2] % 2, x.shape[3] % 2)
            x, y = F.avg_pool2d(x, kernel_size=2, padding=padding), F.avg_pool2d(y, kernel_size=2, padding=padding)
        else:
            terms.append((luminance * contrast_structure).mean(dim=(2, 3)).relu())
    per_channel = torch.prod(torch.stack(terms) ** weights[:, None, None], dim=0)
    return per_channel.mean(dim=1)


def atom_usage(atoms: torch.Tensor, num_atoms: int) -> dict[str, float]:
    """How a code map uses its dictionary: the share of atoms used at all, and the perplexity of the
    atom distribution (``num_atoms`` when uniform, 1 when one atom does everything)."""
    counts = torch.bincount(atoms[atoms >= 0].reshape(-1), minlength=num_atoms).double()
    p = counts / counts.sum().clamp_min(1)
    perplexity = torch.exp(-(p * torch.log(p.clamp_min(1e-300))).sum())
    return {"used_share": float((counts > 0).double().mean()), "perplexity": float(perplexity)}
