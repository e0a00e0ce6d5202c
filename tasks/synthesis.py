"""Synthesis figures (issue 30): how close a trained model's samples are to real images, by the judge's features.

One measure for the evaluate stage and the benchmarks (``benchmarks/synthesis.py``, the equal-rate study). The
sources of images, each measured against the judge's features of held-out real images (the reference):

- ``real``: training images, never held out: the floor, what a perfect generator would score;
- ``reconstruction``: held-out images through the VQ-VAE: what the decoder alone can reach;
- ``factorised``: codes drawn from the factorised model (no spatial context), decoded: what a prior must beat;
- ``pixelsnail_t<T>``: codes drawn from the priors at temperature T, decoded; a class-conditional prior's with the
  classes spread evenly over the images (``spread_labels``), as real images' are.

Each gets ``fd`` (the Frechet distance on the judge's penultimate features: not FID, the features differ, so it
compares within the project only), ``precision`` and ``recall`` (Kynkaanniemi et al. 2019, k=3), the judge's own
``score``, ``confidence`` and ``class_entropy``, and ``bpp``: the bits a pixel of the held-out images' codes under
the model that draws the source's codes (the priors; the factorised model for its own samples).
"""

from __future__ import annotations

import time
from typing import NamedTuple

import numpy as np
import torch

from sparse_vqvae.codes import Codes
from sparse_vqvae.entropy_coding import FrequencyModel
from sparse_vqvae.generation import sample_maps
from sparse_vqvae.judge import (FeatureExtractor, Judge, classifier_score, extract_features, frechet_distance,
                                precision_recall, predict_logits, to_model_range)
from sparse_vqvae.pixelsnail import PixelSNAIL
from sparse_vqvae.prior_train import bits_per_image
from sparse_vqvae.vqvae import VQVAE2, encode_all

TEMPERATURES = (0.7, 0.85, 1.0)


class Reference(NamedTuple):
    """What a source is measured against: the judge (its class scores), the feature extractor (the judge's
    features, or a plugged one such as the standard Inception network: ``judge.load_extractor``), its features
    of the held-out real images, and the ``real`` source's figures."""

    judge: Judge
    extractor: FeatureExtractor
    features: np.ndarray
    real: dict


def reference(judge: Judge, images: np.ndarray, train_index: np.ndarray, held_index: np.ndarray, count: int,
              seed: int = 0, extractor: FeatureExtractor | None = None) -> Reference:
    """The view of uint8 images [N, H, W, 3]: features of the held-out ones, and ``count`` training ones drawn
    with ``seed`` as the ``real`` source."""
    extractor = extractor or judge.features
    features = extract_features(extractor, to_model_range(images[held_index]))
    drawn = np.sort(np.random.default_rng(seed).choice(train_index, min(count, len(train_index)), replace=False))
    partial = Reference(judge, extractor, features, {})
    return partial._replace(real=measure(partial, to_model_range(images[drawn]), None))


def measure(ref: Reference, images: torch.Tensor, bpp: float | None) -> dict:
    """One source's figures against the reference."""
    drawn = extract_features(ref.extractor, images)
    precision, recall = precision_recall(ref.features, drawn, k=3)
    return {"fd": frechet_distance(ref.features, drawn), "precision": precision, "recall": recall, "bpp": bpp,
            **classifier_score(predict_logits(ref.judge, images)), "images": len(images)}


def spread_labels(prior: PixelSNAIL, count: int) -> torch.Tensor | None:
    """Class labels for ``count`` samples of a class-conditional prior, spread evenly over its classes (image i gets
    class i mod C: a grid of C columns shows a class a column), so the samples mix the classes as the held-out
    images do; None for an unconditional prior."""
    classes = prior.config.classes
    if not classes:
        return None
    return torch.arange(count, device=prior.conv_in.weight.device) % len(classes)


@torch.no_grad()
def decode_all(model: VQVAE2, maps: tuple[Codes, ...], batch_size: int = 256) -> torch.Tensor:
    device = next(model.parameters()).device
    count = maps[0].atoms.shape[0]
    return torch.cat([model.decode_codes(tuple(m[i:i + batch_size].to(device) for m in maps)).clamp(-1, 1).cpu()
                      for i in range(0, count, batch_size)])


def measure_model(model: VQVAE2, priors: list[PixelSNAIL], frequencies: FrequencyModel, ref: Reference,
                  held_out: torch.Tensor, count: int, temperatures: tuple[float, ...] = TEMPERATURES,
                  seed: int = 0) -> tuple[dict[str, dict], dict[str, torch.Tensor]]:
    """Every source but ``real`` for one model: its reconstructions of ``held_out``, ``count`` images decoded from
    the factorised model's codes and from the priors' at each temperature. Returns the figures by source and
    the images (for pictures)."""
    device = next(model.parameters()).device
    pixels = held_out.shape[2] * held_out.shape[3]
    held_maps = encode_all(model, held_out.to(device))
    map_sizes = [tuple(m.atoms.shape[1:3]) for m in held_maps]
    prior_bpp = sum(bits_per_image(prior, held_maps, level) for level, prior in enumerate(priors)) / pixels
    factorised_bpp = float(np.mean([frequencies.bits(tuple(m[i].to("cpu") for m in held_maps))
                                    for i in range(len(held_out))])) / pixels
    images = {"reconstruction": decode_all(model, held_maps),
              "factorised": decode_all(model, frequencies.sample(count, map_sizes, np.random.default_rng(seed)))}
    figures = {"reconstruction": measure(ref, images["reconstruction"], prior_bpp),
               "factorised": measure(ref, images["factorised"], factorised_bpp)}
    labels = spread_labels(priors[0], count)
    for temperature in temperatures:
        start = time.perf_counter()
        maps = sample_maps(priors, count, temperature, generator=torch.Generator(device=device).manual_seed(seed),
                           labels=labels)
        name = f"pixelsnail_t{temperature:g}"
        images[name] = decode_all(model, maps)
        figures[name] = {**measure(ref, images[name], prior_bpp),
                         "sampling_seconds": round(time.perf_counter() - start, 1)}
    return figures, images
