"""VQ-VAE-2 (Razavi, van den Oord, Vinyals 2019) with a pluggable quantizer.

maps=2, the paper's hierarchy of a top and a bottom code map:

    x -> enc_b -> h_b (/4) -> enc_t -> h_t (/8) -> quantize_t -> z_t
    z_t -> dec_t -> joined with h_b -> quantize_b -> z_b
    [upsample(z_t), z_b] -> dec -> x_hat

maps=1: the sparse-VQ-VAE seed's single quantised map, x -> enc -> quantize -> dec.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, Dataset

from .codes import Codes, quality_slots
from .config import ModelConfig
from .maps import MAP_NAMES
from .quantizers import QuantizerOutput, build_quantizer


class ResBlock(nn.Module):
    def __init__(self, channels: int, res_channels: int) -> None:
        super().__init__()
        self.body = nn.Sequential(
            nn.ReLU(),
            nn.Conv2d(channels, res_channels, 3, padding=1),
            nn.ReLU(inplace=True),
            nn.Conv2d(res_channels, channels, 1),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.body(x)


class Encoder(nn.Module):
    """Strided 4x4 convolutions down by ``stride`` (a power of two), then residual blocks."""

    def __init__(self, in_channels: int, channels: int, res_blocks: int, res_channels: int, stride: int) -> None:
        super().__init__()
        halvings = stride.bit_length() - 1
        layers: list[nn.Module] = [nn.Conv2d(in_channels, channels // 2, 4, stride=2, padding=1), nn.ReLU(inplace=True)]
        for _ in range(halvings - 2):
            layers += [nn.Conv2d(channels // 2, channels // 2, 4, stride=2, padding=1), nn.ReLU(inplace=True)]
        if halvings >= 2:
            layers += [nn.Conv2d(channels // 2, channels, 4, stride=2, padding=1), nn.ReLU(inplace=True),
                       nn.Conv2d(channels, channels, 3, padding=1)]
        else:
            layers += [nn.Conv2d(channels // 2, channels, 3, padding=1)]
        layers += [ResBlock(channels, res_channels) for _ in range(res_blocks)] + [nn.ReLU(inplace=True)]
        self.blocks = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.blocks(x)


class Decoder(nn.Module):
    """Residual blocks, then transposed 4x4 convolutions up by ``stride``."""

    def __init__(self, in_channels: int, out_channels: int, channels: int, res_blocks: int, res_channels: int,
                 stride: int) -> None:
        super().__init__()
        halvings = stride.bit_length() - 1
        layers: list[nn.Module] = [nn.Conv2d(in_channels, channels, 3, padding=1)]
        layers += [ResBlock(channels, res_channels) for _ in range(res_blocks)] + [nn.ReLU(inplace=True)]
        if halvings >= 2:
            layers += [nn.ConvTranspose2d(channels, channels // 2, 4, stride=2, padding=1), nn.ReLU(inplace=True)]
            for _ in range(halvings - 2):
                layers += [nn.ConvTranspose2d(channels // 2, channels // 2, 4, stride=2, padding=1),
                           nn.ReLU(inplace=True)]
            layers += [nn.ConvTranspose2d(channels // 2, out_channels, 4, stride=2, padding=1)]
        else:
            layers += [nn.ConvTranspose2d(channels, out_channels, 4, stride=2, padding=1)]
        self.blocks = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.blocks(x)


class VQVAEOutput(NamedTuple):
    reconstruction: torch.Tensor  # [B, 3, H, W]
    latent_loss: torch.Tensor  # the quantizers' losses, summed
    codes: tuple[Codes, ...]  # (top, bottom) for maps=2, (codes,) for maps=1
    stats: dict[str, torch.Tensor]


# The settings a model's identity is taken against: the defaults, but each at the value it had when identities
# began. The pipeline's default quantizer moved from omp to vanilla later (docs/decisions.md); taken against the
# live default, that move would have renamed every omp and vanilla model made before it.
IDENTITY_DEFAULTS = {**asdict(ModelConfig()), "selection_fn": "omp"}


class VQVAE2(nn.Module):
    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.config = config
        c = config
        if c.maps == 2:
            self.enc_b = Encoder(3, c.channels, c.res_blocks, c.res_channels, stride=4)
            self.enc_t = Encoder(c.channels, c.channels, c.res_blocks, c.res_channels, stride=2)
            self.quantize_conv_t = nn.Conv2d(c.channels, c.embed_dim, 1)
            self.quantize_t = build_quantizer(c)
            self.dec_t = Decoder(c.embed_dim, c.embed_dim, c.channels, c.res_blocks, c.res_channels, stride=2)
            self.quantize_conv_b = nn.Conv2d(c.embed_dim + c.channels, c.embed_dim, 1)
            self.quantize_b = build_quantizer(c)
            self.upsample_t = nn.ConvTranspose2d(c.embed_dim, c.embed_dim, 4, stride=2, padding=1)
            self.dec = Decoder(2 * c.embed_dim, 3, c.channels, c.res_blocks, c.res_channels, stride=4)
            self.quantizers = nn.ModuleList([self.quantize_t, self.quantize_b])
            self.map_names = MAP_NAMES
        else:
            self.enc = Encoder(3, c.channels, c.res_blocks, c.res_channels, stride=c.stride)
            self.quantize_conv = nn.Conv2d(c.channels, c.embed_dim, 1)
            self.quantize = build_quantizer(c)
            self.dec = Decoder(c.embed_dim, 3, c.channels, c.res_blocks, c.res_channels, stride=c.stride)
            self.quantizers = nn.ModuleList([self.quantize])
            self.map_names = ("",)  # one map: its statistics go unprefixed

    @property
    def arguments(self) -> dict:
        """What rebuilds this model: ``VQVAE2(ModelConfig(**model.arguments))``; checkpoints record it."""
        return asdict(self.config)

    def fingerprint(self) -> str:
        """A short hash of the model's arguments and weights: stored codes name the model that made them. Arguments
        at their default are left out, so a setting added later (at a default that keeps the old behaviour) does
        not change the identity of every model already made, nor orphan its files and entropy models."""
        chosen = {key: value for key, value in self.arguments.items() if value != IDENTITY_DEFAULTS[key]}
        digest = hashlib.sha256(json.dumps(chosen, sort_keys=True).encode())
        for name, tensor in sorted(self.state_dict().items()):
            digest.update(name.encode())
            digest.update(tensor.detach().cpu().contiguous().numpy().tobytes())
        return digest.hexdigest()[:16]

    def check_size(self, x: torch.Tensor) -> None:
        if x.dim() != 4 or x.shape[1] != 3:
            raise ValueError(f"images must be [B, 3, H, W]; got shape {list(x.shape)}")
        stride = self.config.stride
        if x.shape[2] % stride or x.shape[3] % stride:
            raise ValueError(
                f"image size {x.shape[2]}x{x.shape[3]} is not divisible by the model's total stride {stride} "
                f"(maps={self.config.maps}); pad or crop to a multiple of {stride}"
            )

    def forward(self, x: torch.Tensor) -> VQVAEOutput:
        quants, codes, latent_loss, stats = self.encode(x)
        return VQVAEOutput(self.decode(quants), latent_loss, codes, stats)

    def encode(self, x: torch.Tensor) -> tuple[list[torch.Tensor], tuple[Codes, ...], torch.Tensor, dict]:
        kept = self._kept_stages(x.shape[0])
        outputs = self._hierarchy(x, lambda index, quantizer, z: quantizer(z) if kept is None else
                                  quantizer(z, kept[index]))
        stats = {}
        for name, out in zip(self.map_names, outputs):
            stats.update({(f"{name}_{key}" if name else key): value for key, value in out.stats.items()})
        latent_loss = sum(out.loss for out in outputs)
        return [out.z_q for out in outputs], tuple(out.codes for out in outputs), latent_loss, stats

    def autoencode(self, x: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """The hierarchy with every quantizer bypassed (z_q = its coding target): the reconstruction and
        the latents [B, C, h, w] each quantizer would code. Pretraining warms up on this, before any
        dictionary exists, and fits the dictionaries to these latents."""

        def bypass(index: int, quantizer: nn.Module, z: torch.Tensor) -> QuantizerOutput:
            return QuantizerOutput(quantizer.coding_target(z), None, z.new_zeros(()), {})

        latents = [out.z_q for out in self._hierarchy(x, bypass)]
        return self.decode(latents), latents

    def _hierarchy(self, x: torch.Tensor, quantize) -> tuple[QuantizerOutput, ...]:
        self.check_size(x)
        if self.config.maps == 2:
            h_b = self.enc_b(x)
            h_t = self.enc_t(h_b)
            top = quantize(0, self.quantize_t, self.quantize_conv_t(h_t))
            joined = torch.cat([self.dec_t(top.z_q), h_b], dim=1)
            bottom = quantize(1, self.quantize_b, self.quantize_conv_b(joined))
            return top, bottom
        return (quantize(0, self.quantize, self.quantize_conv(self.enc(x))),)

    def _kept_stages(self, images: int) -> list[torch.Tensor] | None:
        """Stage dropout (training a residual VQ with ``stage_dropout``): each image draws a quality q from the
        codec's qualities, uniformly (torch's seeded generator), and each map keeps the stages that quality holds
        - the top map's first, then the bottom's - so the decoder learns every prefix the codec sends. A share
        ``stage_dropout_top_share`` of the images keeps the top quality instead: a uniform draw gives it one image
        in K, and the encoder learns a latent that the first stages code well at the top quality's cost.
        None: every map keeps all its stages."""
        if not (self.training and self.config.stage_dropout):
            return None
        slots, maps = self.quantizers[0].slots, len(self.quantizers)
        drawn = torch.randint(1, maps * slots + 1, (images,))
        if self.config.stage_dropout_top_share:
            drawn[torch.rand(images) < self.config.stage_dropout_top_share] = maps * slots
        kept = [quality_slots(int(q), slots, maps, staged=True) for q in drawn]
        return [torch.tensor([row[index] for row in kept]) for index in range(maps)]

    def decode(self, quants: list[torch.Tensor]) -> torch.Tensor:
        if self.config.maps == 2:
            z_t, z_b = quants
            return self.dec(torch.cat([self.upsample_t(z_t), z_b], dim=1))
        return self.dec(quants[0])

    def decode_codes(self, codes: tuple[Codes, ...]) -> torch.Tensor:
        if len(codes) != len(self.quantizers):
            raise ValueError(f"this model decodes {len(self.quantizers)} code map(s); got {len(codes)}")
        return self.decode([q.decode_codes(c) for q, c in zip(self.quantizers, codes)])

    def loss(self, x: torch.Tensor) -> tuple[torch.Tensor, VQVAEOutput]:
        """Reconstruction MSE + the quantizers' latent losses (commitment-weighted, + dictionary loss)."""
        out = self(x)
        return F.mse_loss(out.reconstruction, x) + out.latent_loss, out

    def after_step(self) -> None:
        for quantizer in self.quantizers:
            quantizer.after_step()


@torch.no_grad()
def encode_all(model: VQVAE2, images: Dataset | torch.Tensor, batch_size: int = 256) -> tuple[Codes, ...]:
    """Every image's code maps [N, H, W, K] (top first), on the model's device: ``images`` (a tensor [N, 3, H, W] or
    a dataset of image tensors) through the encoder ``batch_size`` at a time - codes to hold in memory."""
    device = next(model.parameters()).device
    parts = [model.encode(batch.to(device))[1] for batch in DataLoader(images, batch_size=batch_size)]
    return tuple(Codes(torch.cat([p[m].atoms for p in parts]), torch.cat([p[m].levels for p in parts]))
                 for m in range(len(parts[0])))
