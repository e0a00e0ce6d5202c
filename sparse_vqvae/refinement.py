"""Encoder-side refinement: a better code for one image, found by gradient steps on the latent at encode time.

The encoder is amortised: one forward pass guesses the latent for every image, and the decoder can render more than
the encoder's guess gives it (the photo model's latents optimised through its decoder gain over a dB;
docs/photo_codec.md). Refinement starts from the encoder's latents and takes ``steps`` Adam steps on the squared
error of the decoded image, through the quantizers (straight-through: each forward pass decodes exactly the code the
file would hold) and the frozen decoder - the amortisation gap closed per image, as content-adaptive optimisation in
learned image compression does (Campos et al. 2019). The file format, the decoder and its speed do not change; only
encoding pays, a decoder pass forward and back a step. The code kept is the best one decoded, so refinement never
returns a worse image than the encoder's own code.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from .codes import Codes, quality_slots
from .config import staged
from .vqvae import VQVAE2

REFINE_LR = 0.03  # Adam's step, in units of the latents' RMS; cosine-decayed to 0 over the steps


def unrefinable(model: VQVAE2) -> str | None:
    """Why refinement cannot code this model, or None: it codes residual VQs cut by quality (a prefix of the
    stages per map), whose quality fixes the slots a position takes."""
    config = model.config
    if staged(config.selection_fn) and not config.rate_controlled:
        return None
    return (f"refinement codes residual-VQ models cut by quality; this model's quantizer is {config.selection_fn!r}"
            + (" with rate control" if config.rate_controlled else ""))


def refined_codes(model: VQVAE2, image: torch.Tensor, quality: int, steps: int) -> tuple[Codes, ...]:
    """The code maps [1, h, w, K] of ``image`` [1, 3, H, W] (padded to the model's stride) at ``quality`` after
    ``steps`` steps of refinement (0: the encoder's own codes); the slots past the quality are EMPTY, as
    ``quality_slots`` cuts them."""
    refused = unrefinable(model)
    if refused:
        raise ValueError(refused)
    kept = [torch.tensor([k]) for k in quality_slots(quality, model.quantizers[0].slots, len(model.quantizers),
                                                       staged=True)]
    latents = []

    def encoded(index: int, quantizer: torch.nn.Module, z: torch.Tensor):
        latents.append(z.detach().clone().requires_grad_(True))
        return quantizer(z, kept[index])

    with torch.no_grad():
        model._hierarchy(image, encoded)
    scale = torch.cat([z.flatten() for z in latents]).square().mean().sqrt().item()
    optimiser = torch.optim.Adam(latents, lr=REFINE_LR * scale)
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimiser, T_max=max(steps, 1))
    best, best_error = None, float("inf")
    weights = [p.requires_grad for p in model.parameters()]
    model.requires_grad_(False)
    try:
        with torch.enable_grad():
            for step in range(steps + 1):
                outputs = [quantizer(z, k) for quantizer, z, k in zip(model.quantizers, latents, kept)]
                decoded = model.decode([out.z_q for out in outputs])
                error = F.mse_loss(decoded, image)
                with torch.no_grad():
                    shown = F.mse_loss(decoded.clamp(-1, 1), image).item()  # what the file's image would score
                if shown < best_error:
                    best, best_error = tuple(out.codes for out in outputs), shown
                if step == steps:
                    break
                optimiser.zero_grad()
                error.backward()
                optimiser.step()
                schedule.step()
    finally:
        for parameter, wanted in zip(model.parameters(), weights):
            parameter.requires_grad_(wanted)
    return best
