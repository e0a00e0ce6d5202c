"""The quality ladder of a rate-controlled model (``config.rate_controlled``: qmp or rvq trained over a range of
rate-distortion multipliers): quality q is a multiplier lambda the encoder trades pairs for bits by, so one model
codes at every rate. The codec's ``--quality`` and the code store's training codes both climb this ladder."""

from __future__ import annotations

from contextlib import contextmanager
from typing import TYPE_CHECKING, Iterator

import torch

from .codes import Codes

if TYPE_CHECKING:
    from .vqvae import VQVAE2

LAMBDA_QUALITIES = 10  # a rate-controlled model's qualities


def quality_lambda(model: VQVAE2, quality: int) -> float:
    """A rate-controlled model's multiplier at ``quality``: the top of its training range at 1, log-spaced down to the
    bottom at 9, and 0 (every pair that lowers the error) at 10 - the training range's ends and the quarter of
    training images coded at 0."""
    low, high = model.config.train_lambda_min, model.config.train_lambda_max
    if quality == LAMBDA_QUALITIES:
        return 0.0
    return high * (low / high) ** ((quality - 1) / (LAMBDA_QUALITIES - 2))


@contextmanager
def rate_lambda(model: VQVAE2, value: float) -> Iterator[None]:
    """The model's quantizers encode with multiplier ``value`` inside the block, their own outside it."""
    kept = [quantizer.rate_lambda for quantizer in model.quantizers]
    for quantizer in model.quantizers:
        quantizer.rate_lambda = value
    try:
        yield
    finally:
        for quantizer, value in zip(model.quantizers, kept):
            quantizer.rate_lambda = value


def ladder_quality(index: int | torch.Tensor) -> int | torch.Tensor:
    """The quality a code store holds image ``index`` at: 1 .. 10 in turn, so that priors trained on the store learn
    the codes of every quality the codec sends (at lambda 0 alone they would never see a position stop early)."""
    return index % LAMBDA_QUALITIES + 1


@torch.no_grad()
def encode_ladder(model: VQVAE2, images: torch.Tensor, first: int) -> tuple[Codes, ...]:
    """The code maps [B, H, W, K] of images [B, 3, H, W] whose store indices start at ``first``, each image at its
    ``ladder_quality``: the rows of a quality encoded together (a code depends on its row alone)."""
    ladder = ladder_quality(torch.arange(first, first + images.shape[0]))
    maps: list[Codes] | None = None
    for quality in ladder.unique().tolist():
        chosen = torch.nonzero(ladder == quality).squeeze(1)
        with rate_lambda(model, quality_lambda(model, quality)):
            _, coded, _, _ = model.encode(images[chosen.to(images.device)])
        if maps is None:
            maps = [Codes(c.atoms.new_empty((images.shape[0], *c.atoms.shape[1:])),
                          c.levels.new_empty((images.shape[0], *c.levels.shape[1:]))) for c in coded]
        for whole, part in zip(maps, coded):
            index = chosen.to(part.atoms.device)
            whole.atoms[index], whole.levels[index] = part.atoms, part.levels
    return tuple(maps)
