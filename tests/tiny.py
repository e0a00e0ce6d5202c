"""Tiny models and data so the model tests run in seconds on a CPU."""

import torch

from sparse_vqvae.config import ModelConfig

SELECTION_FNS = ["vanilla", "rvq", "fsq", "omp", "qmp", "lasso"]


def tiny_config(selection_fn: str = "omp", **overrides) -> ModelConfig:
    args = dict(selection_fn=selection_fn, channels=16, res_blocks=1, res_channels=8, embed_dim=8, num_atoms=256 if selection_fn == "fsq" else 32,
                n_nonzero=2 if selection_fn in ("omp", "qmp") else 1, stages=2 if selection_fn == "rvq" else 1, max_nonzero=3, alpha=0.05, coef_levels=16,
                normalize_latents=selection_fn == "lasso")  # the LASSO's alpha is relative to unit-norm latents
    args.update(overrides)
    return ModelConfig(**args)


def tiny_images(count: int = 8, size: int = 16, seed: int = 0) -> torch.Tensor:
    """Smooth random images in [-1, 1]: low-frequency noise, upsampled."""
    g = torch.Generator().manual_seed(seed)
    coarse = torch.rand(count, 3, size // 4, size // 4, generator=g) * 2 - 1
    return torch.nn.functional.interpolate(coarse, size=(size, size), mode="bilinear", align_corners=False)


class Images(torch.utils.data.Dataset):
    """A tensor of images as a Dataset."""

    def __init__(self, images: torch.Tensor) -> None:
        self.images = images

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, i: int) -> torch.Tensor:
        return self.images[i]
