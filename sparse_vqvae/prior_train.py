"""Training and evaluation of the PixelSNAIL priors on a code store, and their checkpoints.

A two-level model gets two priors: the top map's (unconditional) and the bottom map's,
conditioned on the top codes. Stores are small (a few bytes per position), so the codes are read
into memory once.
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable, NamedTuple

import torch
from tqdm.auto import tqdm

from .checkpoint import CheckpointError, load_payload, save_payload
from .code_store import CodeStore, StoreMetadata, collate_codes
from .config import PriorTrainConfig, codes_vary
from .codes import Codes
from .pixelsnail import PixelSNAIL, PriorConfig, bits

PRIOR_FORMAT = "sparse-vqvae/pixelsnail"
PRIOR_VERSION = 2

_DEFAULT = PriorTrainConfig()  # the one source of the priors' training defaults (params.yaml's prior section)


class PriorCheckpoint(NamedTuple):
    prior: PixelSNAIL
    optimizer_state: dict | None
    step: int
    fingerprint: str  # the VQ-VAE whose codes it models


def load_maps(store: CodeStore) -> tuple[Codes, ...]:
    """All code maps of a store, batched: (top, bottom) Codes [count, H, W, K]."""
    return collate_codes([store[i] for i in range(len(store))])[1]


def prior_configs(meta: StoreMetadata, **sizes) -> list[PriorConfig]:
    """One PriorConfig per code map; every map after the first is conditioned on the first (the top)."""
    common = dict(num_atoms=meta.num_atoms, coef_levels=meta.coef_levels, slots=meta.slots,
                  variable_count=codes_vary(meta.selection_fn),
                  stage_atoms=meta.stage_atoms)
    top_h, top_w = meta.map_sizes[0]
    configs = [PriorConfig(**common, height=top_h, width=top_w, **sizes)]
    for h, w in meta.map_sizes[1:]:
        condition = dict(num_atoms=meta.num_atoms, coef_levels=meta.coef_levels, slots=meta.slots, height=top_h,
                         width=top_w)
        configs.append(PriorConfig(**common, height=h, width=w, condition=condition, **sizes))
    return configs


def _inputs(maps: tuple[Codes, ...], level: int, rows, device: torch.device) -> tuple[Codes, Codes | None]:
    return maps[level][rows].to(device), (maps[0][rows].to(device) if level > 0 else None)


def train_prior(prior: PixelSNAIL, maps: tuple[Codes, ...], level: int, steps: int,
                batch_size: int = _DEFAULT.batch_size, lr: float = _DEFAULT.lr, seed: int = _DEFAULT.seed, checkpoint_path: str | Path | None = None, fingerprint: str = "",
                checkpoint_every: int = 200, progress: bool = True,
                on_metrics: Callable[[int, dict], None] | None = None) -> dict[str, float]:
    """Maximum likelihood on map ``level`` (0 = top); resumes from ``checkpoint_path`` when it exists.
    Returns the last step's figures with the step it started from and the steps it trained."""
    optimizer = torch.optim.Adam(prior.parameters(), lr=lr)
    step = 0
    if checkpoint_path is not None and Path(checkpoint_path).exists():
        resumed = load_prior(checkpoint_path)
        if resumed.fingerprint != fingerprint or resumed.prior.arguments != prior.arguments:
            raise CheckpointError(f"{checkpoint_path} holds a prior of another model or other settings; "
                                  "move it away to start afresh")
        prior.load_state_dict(resumed.prior.state_dict())
        if resumed.optimizer_state is not None:
            optimizer.load_state_dict(resumed.optimizer_state)
        step = resumed.step
    start = step
    count = maps[0].atoms.shape[0]
    metrics: dict[str, float] = {}
    with tqdm(total=steps, initial=step, desc=f"train prior (map {level})", disable=not progress) as bar:
        while step < steps:
            rows = torch.randint(count, (batch_size,), generator=torch.Generator().manual_seed(seed * 1_000_003 + step))
            codes, condition = _inputs(maps, level, rows, prior.conv_in.weight.device)
            prior.train()
            loss = bits(prior.log_prob(codes, condition)).mean()
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            step += 1
            metrics = {"bits_per_image": loss.item()}
            bar.update(1)
            bar.set_postfix(bits=f"{loss.item():.1f}")
            if on_metrics is not None:
                on_metrics(step, metrics)
            if checkpoint_path is not None and (step % checkpoint_every == 0 or step == steps):
                save_prior(checkpoint_path, prior, optimizer, step, fingerprint)
    return {**metrics, "start_step": start, "steps_trained": max(step - start, 0)}


LOGITS_PER_BATCH = 2**25  # bounds the memory of a batch's [B, H, W, K, N] atom logits (128 MiB in float32)


@torch.no_grad()
def bits_per_image(prior: PixelSNAIL, maps: tuple[Codes, ...], level: int,
                   batch_size: int = 256) -> float:
    """Mean bits per image of map ``level`` under ``prior``, in batches of at most ``batch_size`` images
    and of ``LOGITS_PER_BATCH`` logits (10 slots of 10,240 atoms on a 32x32 map are 100M logits an image)."""
    total, count = 0.0, maps[0].atoms.shape[0]
    prior.eval()
    logits = maps[level].atoms[0].numel() * prior.config.num_atoms
    batch_size = max(1, min(batch_size, LOGITS_PER_BATCH // logits))
    for start in range(0, count, batch_size):
        rows = slice(start, start + batch_size)
        codes, condition = _inputs(maps, level, rows, prior.conv_in.weight.device)
        total += float(bits(prior.log_prob(codes, condition)).sum())
    return total / count


def save_prior(path: str | Path, prior: PixelSNAIL, optimizer: torch.optim.Optimizer | None, step: int,
               fingerprint: str) -> None:
    save_payload(path, {
        "format": PRIOR_FORMAT, "version": PRIOR_VERSION, "prior_arguments": prior.arguments,
        "prior_state": prior.state_dict(), "optimizer_state": optimizer.state_dict() if optimizer else None,
        "step": step, "fingerprint": fingerprint,
    })


def load_prior(path: str | Path, device: torch.device | str = "cpu") -> PriorCheckpoint:
    payload = load_payload(path, PRIOR_FORMAT, PRIOR_VERSION, device)
    try:
        prior = PixelSNAIL(PriorConfig(**payload["prior_arguments"])).to(device)
        prior.load_state_dict(payload["prior_state"])
        return PriorCheckpoint(prior, payload["optimizer_state"], int(payload["step"]), str(payload["fingerprint"]))
    except (KeyError, TypeError, RuntimeError, ValueError) as error:
        raise CheckpointError(f"{path}: the prior in it cannot be rebuilt: {error}") from error
