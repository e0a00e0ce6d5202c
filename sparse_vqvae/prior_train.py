"""Training and evaluation of the PixelSNAIL priors on a code store, and their checkpoints.

A two-level model gets two priors: the top map's (unconditional) and the bottom map's,
conditioned on the top codes. The codes stream from the store: a training step reads the records of
its batch (``CodeStore.batch``), evaluation walks the store a batch at a time, so memory holds a batch,
not the store; codes keep the store's widths (int16 atoms, uint8 levels) until they reach the prior's
device. Every function also takes code maps held in memory (``load_maps`` of a small store, tests).

A step's rows are drawn from (seed, step) alone (``step_rows``), so a resumed run reads the rows an
uninterrupted one reads; on one of W data-parallel workers (DDP) worker r takes the r-th W-th of them.

A class-conditional prior (``PriorConfig.classes``; VQ-VAE-2 conditions its ImageNet priors on the class) trains on
the images' labels, aligned with the store's rows. Label dropout trains a share of each batch as "no class" (drawn
from (seed, step) after the rows, which therefore do not move), so the same prior also models the codes of an image
whose class is unknown - what coding uses - and samples unconditionally.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Callable, NamedTuple

import torch
import torch.distributed as dist
from torch import nn
from tqdm.auto import tqdm

from .checkpoint import CheckpointError, load_payload, save_payload
from .code_store import CodeSource, CodeStore, StoreMetadata, code_source
from .config import PriorTrainConfig
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
    """All code maps of a small store in memory, batched and int64: (top, bottom) Codes [count, H, W, K]. A
    convenience for benchmarks and tests; training and evaluation read a store a batch at a time."""
    return tuple(Codes(codes.atoms.long(), codes.levels.long()) for codes in store.batch(range(len(store))))


def prior_configs(meta: StoreMetadata, **sizes) -> list[PriorConfig]:
    """One PriorConfig per code map; every map after the first is conditioned on the first (the top)."""
    common = dict(num_atoms=meta.num_atoms, coef_levels=meta.coef_levels, slots=meta.slots,
                  variable_count=meta.variable_count,
                  stage_atoms=meta.stage_atoms)
    top_h, top_w = meta.map_sizes[0]
    configs = [PriorConfig(**common, height=top_h, width=top_w, **sizes)]
    for h, w in meta.map_sizes[1:]:
        condition = dict(num_atoms=meta.num_atoms, coef_levels=meta.coef_levels, slots=meta.slots, height=top_h,
                         width=top_w)
        configs.append(PriorConfig(**common, height=h, width=w, condition=condition, **sizes))
    return configs


def step_draws(count: int, batch_size: int, seed: int, step: int, label_dropout: float = 0.0
               ) -> tuple[torch.Tensor, torch.Tensor]:
    """The rows (image indices) that training step ``step`` (0-based) reads, and which of them train as "no class"
    (label dropout): drawn from (seed, step) alone, the rows first, so they are those a prior without classes reads."""
    generator = torch.Generator().manual_seed(seed * 1_000_003 + step)
    rows = torch.randint(count, (batch_size,), generator=generator)
    return rows, torch.rand(batch_size, generator=generator) < label_dropout


def step_rows(count: int, batch_size: int, seed: int, step: int) -> torch.Tensor:
    """The rows that training step ``step`` reads (``step_draws``)."""
    return step_draws(count, batch_size, seed, step)[0]


def _inputs(maps: tuple[Codes, ...], level: int, device: torch.device) -> tuple[Codes, Codes | None]:
    """Map ``level`` of a batch and its condition (the top map) on ``device``, widened there to the int64 the
    prior's embeddings index with."""
    def widened(codes: Codes) -> Codes:
        return Codes(codes.atoms.to(device).long(), codes.levels.to(device).long())

    return widened(maps[level]), (widened(maps[0]) if level > 0 else None)


class PriorLoss(nn.Module):
    """Bits per image [B] of a batch of code maps under ``prior``: the forward pass that DDP wraps (PixelSNAIL's
    entry point is ``log_prob``, which DDP would not see). A class-conditional prior takes the images' ``labels``,
    those marked ``unlabelled`` (label dropout) replaced by its "no class" row."""

    def __init__(self, prior: PixelSNAIL) -> None:
        super().__init__()
        self.prior = prior

    def forward(self, codes: Codes, condition: Codes | None = None, labels: torch.Tensor | None = None,
                unlabelled: torch.Tensor | None = None) -> torch.Tensor:
        if self.prior.config.classes and labels is None:
            raise ValueError("this prior is class-conditional: train it on the images' labels")
        if labels is not None and unlabelled is not None:
            labels = torch.where(unlabelled, self.prior.no_class(len(labels)), labels)
        return bits(self.prior.log_prob(codes, condition, labels))


def run_prior_training(model: nn.Module, optimizer: torch.optim.Optimizer, codes: CodeSource, level: int, steps: int,
                       *, batch_size: int, seed: int, step: int = 0, rank: int = 0, world_size: int = 1,
                       labels: torch.Tensor | None = None, label_dropout: float = 0.0,
                       checkpoint_every: int = 200, progress: bool = True,
                       on_metrics: Callable[[int, dict], None] | None = None,
                       on_checkpoint: Callable[[int], None] | None = None) -> dict[str, float]:
    """The training loop of map ``level`` from ``step`` to ``steps``, on worker ``rank`` of ``world_size``.

    ``model`` is a ``PriorLoss``, or one DDP-wrapped; ``batch_size`` is the global batch, of which this worker
    reads and trains on its share of each step's rows (DDP averages the gradients: the gradient of the whole
    batch's mean). ``labels`` [N]: the images' classes, row by row of ``codes``, for a class-conditional prior; a
    ``label_dropout`` share of each batch trains as "no class". ``on_metrics(step, {"bits_per_image": the whole
    batch's mean})`` runs every step, on every worker; ``on_checkpoint(step)`` every ``checkpoint_every`` steps and
    at the last, on every worker (it may hold collectives). Returns the last step's metrics."""
    if batch_size % world_size:
        raise ValueError(f"prior.batch_size ({batch_size}) must be a multiple of the number of workers ({world_size})")
    source, share = code_source(codes), batch_size // world_size
    if labels is not None and len(labels) != len(source):
        raise ValueError(f"{len(labels)} labels for the codes of {len(source)} images: one label an image, in the "
                         "store's order")
    device = next(model.parameters()).device
    metrics: dict[str, float] = {}
    with tqdm(total=steps, initial=step, desc=f"train prior (map {level})", disable=not progress) as bar:
        while step < steps:
            rows, unlabelled = (draw[rank * share : (rank + 1) * share]
                                for draw in step_draws(len(source), batch_size, seed, step, label_dropout))
            current, condition = _inputs(source.batch(rows), level, device)
            model.train()
            batch_labels = None if labels is None else labels[rows].to(device)
            loss = model(current, condition, batch_labels, unlabelled.to(device)).mean()
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            step += 1
            mean = loss.detach()
            if world_size > 1:
                dist.all_reduce(mean)
                mean = mean / world_size
            metrics = {"bits_per_image": mean.item()}
            bar.update(1)
            bar.set_postfix(bits=f"{metrics['bits_per_image']:.1f}")
            if on_metrics is not None:
                on_metrics(step, metrics)
            if on_checkpoint is not None and (step % checkpoint_every == 0 or step == steps):
                on_checkpoint(step)
    return metrics


def train_prior(prior: PixelSNAIL, maps: CodeSource, level: int, steps: int,
                batch_size: int = _DEFAULT.batch_size, lr: float = _DEFAULT.lr, seed: int = _DEFAULT.seed, checkpoint_path: str | Path | None = None, fingerprint: str = "",
                checkpoint_every: int = 200, progress: bool = True,
                on_metrics: Callable[[int, dict], None] | None = None, labels: torch.Tensor | None = None,
                label_dropout: float = _DEFAULT.label_dropout) -> dict[str, float]:
    """Maximum likelihood on map ``level`` (0 = top) of a store (or code maps in memory), in this process;
    resumes from ``checkpoint_path`` when it exists. A class-conditional prior takes the images' ``labels``
    (``run_prior_training``). Returns the last step's figures with the step it started from and the steps it
    trained."""
    optimizer = torch.optim.Adam(prior.parameters(), lr=lr)
    step = 0
    if checkpoint_path is not None and Path(checkpoint_path).exists():
        resumed = load_prior(checkpoint_path)
        check_resumable(resumed, prior.arguments, fingerprint, checkpoint_path)
        prior.load_state_dict(resumed.prior.state_dict())
        if resumed.optimizer_state is not None:
            optimizer.load_state_dict(resumed.optimizer_state)
        step = resumed.step
    start = step

    def save(step: int) -> None:
        if checkpoint_path is not None:
            save_prior(checkpoint_path, prior, optimizer, step, fingerprint)

    metrics = run_prior_training(PriorLoss(prior), optimizer, maps, level, steps, batch_size=batch_size, seed=seed,
                                 step=step, labels=labels, label_dropout=label_dropout,
                                 checkpoint_every=checkpoint_every, progress=progress, on_metrics=on_metrics,
                                 on_checkpoint=save)
    return {**metrics, "start_step": start, "steps_trained": max(steps - start, 0)}


def check_resumable(resumed: PriorCheckpoint, arguments: dict, fingerprint: str, path: str | Path) -> None:
    """CheckpointError unless ``resumed`` is a prior of ``arguments`` (``PixelSNAIL.arguments``) over the codes of
    model ``fingerprint``."""
    if resumed.fingerprint != fingerprint or resumed.prior.arguments != arguments:
        raise CheckpointError(f"{path} holds a prior of another model or other settings; move it away to start afresh")


LOGITS_PER_BATCH = 2**25  # bounds the memory of a batch's [B, H, W, K, N] atom logits (128 MiB in float32)


@torch.no_grad()
def batch_bits(prior: PixelSNAIL, codes: CodeSource, level: int, batch_size: int = 256, rank: int = 0,
               world_size: int = 1) -> dict[int, float]:
    """The summed bits of map ``level`` under ``prior`` per batch of the codes in order ({batch number: bits}), in
    batches of at most ``batch_size`` images and of ``LOGITS_PER_BATCH`` logits (10 slots of 10,240 atoms on a
    32x32 map are 100M logits an image); worker ``rank`` of ``world_size`` computes every ``world_size``-th batch."""
    source = code_source(codes)
    prior.eval()
    size = source.batch([0])[level].atoms[0].numel() if len(source) else 1
    batch_size = max(1, min(batch_size, LOGITS_PER_BATCH // (size * prior.config.num_atoms)))
    device = prior.conv_in.weight.device
    sums = {}
    for number, start in enumerate(range(0, len(source), batch_size)):
        if number % world_size == rank:
            current, condition = _inputs(source.batch(slice(start, start + batch_size)), level, device)
            sums[number] = float(bits(prior.log_prob(current, condition)).sum())
    return sums


def bits_per_image(prior: PixelSNAIL, maps: CodeSource, level: int, batch_size: int = 256) -> float:
    """Mean bits per image of map ``level`` of a store (or code maps in memory) under ``prior``, a batch at a time
    (``batch_bits``)."""
    sums = batch_bits(prior, maps, level, batch_size)
    return mean_bits(sums, len(code_source(maps)))


def mean_bits(sums: dict[int, float], count: int) -> float:
    """Bits per image from ``batch_bits``' sums (of every worker), added in batch order whatever the workers."""
    total = 0.0
    for number in sorted(sums):
        total += sums[number]
    return total / count


def save_prior(path: str | Path, prior: PixelSNAIL, optimizer: torch.optim.Optimizer | None, step: int,
               fingerprint: str) -> None:
    save_payload(path, {
        "format": PRIOR_FORMAT, "version": PRIOR_VERSION, "prior_arguments": prior.arguments,
        "prior_state": prior.state_dict(), "optimizer_state": _interned(optimizer.state_dict()) if optimizer else None,
        "step": step, "fingerprint": fingerprint,
    })


def _interned(value):
    """``value`` with its dictionaries' string keys interned. The bytes of a checkpoint then depend on its contents
    alone: pickle writes a string object once and refers back to it, and a resumed optimizer's state holds the
    unpickled keys ("step", ...) where a fresh one holds Python's interned constants - the same word this payload
    uses as a key of its own."""
    if isinstance(value, dict):
        return {sys.intern(key) if isinstance(key, str) else key: _interned(item) for key, item in value.items()}
    if isinstance(value, list):
        return [_interned(item) for item in value]
    return value


def load_prior(path: str | Path, device: torch.device | str = "cpu") -> PriorCheckpoint:
    payload = load_payload(path, PRIOR_FORMAT, PRIOR_VERSION, device)
    try:
        prior = PixelSNAIL(PriorConfig(**payload["prior_arguments"])).to(device)
        prior.load_state_dict(payload["prior_state"])
        return PriorCheckpoint(prior, payload["optimizer_state"], int(payload["step"]), str(payload["fingerprint"]))
    except (KeyError, TypeError, RuntimeError, ValueError) as error:
        raise CheckpointError(f"{path}: the prior in it cannot be rebuilt: {error}") from error
