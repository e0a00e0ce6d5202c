"""Pictures of a model that several stages log: its dictionaries (or codebooks), one per code map."""

from __future__ import annotations

from pathlib import Path

from sparse_vqvae.pictures import dictionary_image
from sparse_vqvae.vqvae import VQVAE2


def dictionary_pictures(model: VQVAE2, folder: Path, prefix: str) -> list[Path]:
    """``<prefix>_<map>.png`` per code map: the atoms (or codebook vectors) as tiles."""
    paths = []
    for name, quantizer in zip(model.map_names, model.quantizers):
        paths.append(dictionary_image(quantizer.codebook().detach(), folder / f"{prefix}_{name or 'map'}.png"))
    return paths
