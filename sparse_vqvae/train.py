"""Plain training and evaluation of the VQ-VAE-2, and checkpoints that rebuild and resume it.

No distributed framework here: the pipeline's Ray Train stage calls ``train_step`` and the
checkpoint functions from each worker.
"""

from __future__ import annotations

import itertools
import warnings
from dataclasses import asdict
from pathlib import Path
from typing import Any, Callable, NamedTuple

import torch
from torch.utils.data import DataLoader, Dataset, DistributedSampler
from tqdm.auto import tqdm

from .checkpoint import CheckpointError, load_payload, save_payload
from .config import ModelConfig, TrainConfig, section_from_mapping
from .data import set_epoch
from .metrics import mean_colour_squared_error_255, psnr, squared_error_255, ssim
from .vqvae import VQVAE2

CHECKPOINT_FORMAT = "sparse-vqvae/vqvae2"
CHECKPOINT_VERSION = 2


class Checkpoint(NamedTuple):
    model: VQVAE2
    optimizer_state: dict | None
    step: int
    epoch: int
    config: dict  # the run's configuration, as saved


def unwrap(model: torch.nn.Module) -> VQVAE2:
    """The VQ-VAE inside a DistributedDataParallel wrapper (or the model itself)."""
    return model.module if hasattr(model, "module") else model


def make_optimizer(model: VQVAE2, lr: float) -> torch.optim.Optimizer:
    return torch.optim.Adam(model.parameters(), lr=lr)


def train_step(model: torch.nn.Module, images: torch.Tensor, optimizer: torch.optim.Optimizer) -> dict[str, float]:
    """One forward/backward/update; returns the losses and the quantizers' scalar statistics."""
    vqvae = unwrap(model)
    model.train()
    optimizer.zero_grad(set_to_none=True)
    out = model(images)
    reconstruction = torch.nn.functional.mse_loss(out.reconstruction, images)
    loss = reconstruction + out.latent_loss
    loss.backward()
    optimizer.step()
    vqvae.after_step()
    metrics = {"loss": loss.item(), "reconstruction_mse": reconstruction.item(), "latent_loss": out.latent_loss.item()}
    metrics.update({k: v.item() for k, v in out.stats.items() if v.numel() == 1})
    return metrics


@torch.no_grad()
def evaluate(model: VQVAE2, dataset: Dataset, batch_size: int = 256, progress: bool = False) -> dict[str, float]:
    """Test-set MSE and PSNR on [0, 255] pixels (from the MSE over the whole set), mean SSIM, and the
    mean-colour baseline's MSE and PSNR."""
    model.eval()
    device = next(model.parameters()).device
    loader = DataLoader(dataset, batch_size=batch_size, shuffle=False)
    error = baseline = ssim_sum = 0.0
    pixels = 0
    for images in tqdm(loader, desc="evaluate", disable=not progress, leave=False):
        images = images.to(device)
        reconstruction = model(images).reconstruction
        error += float(squared_error_255(images, reconstruction))
        baseline += float(mean_colour_squared_error_255(images))
        ssim_sum += float(ssim(images, reconstruction).sum())
        pixels += images.numel()
    mse, baseline_mse = error / pixels, baseline / pixels
    return {"test_mse": mse, "test_psnr": psnr(mse), "test_ssim": ssim_sum / len(dataset),
            "baseline_mse": baseline_mse, "baseline_psnr": psnr(baseline_mse)}


def save_checkpoint(path: str | Path, model: VQVAE2, optimizer: torch.optim.Optimizer | None, step: int,
                    epoch: int, config: dict | None = None) -> None:
    """The model's arguments and weights, the optimizer, step, epoch and run config; written atomically."""
    vqvae = unwrap(model)
    save_payload(path, {
        "format": CHECKPOINT_FORMAT,
        "version": CHECKPOINT_VERSION,
        "model_arguments": vqvae.arguments,
        "model_state": vqvae.state_dict(),
        "optimizer_state": optimizer.state_dict() if optimizer is not None else None,
        "step": step,
        "epoch": epoch,
        "config": config or {},
    })


def load_checkpoint(path: str | Path, device: torch.device | str = "cpu") -> Checkpoint:
    """Rebuild the model a checkpoint describes."""
    payload = load_payload(path, CHECKPOINT_FORMAT, CHECKPOINT_VERSION, device)
    try:
        with warnings.catch_warnings():  # a checkpoint's old spellings are the file's business, not the user's
            warnings.simplefilter("ignore", FutureWarning)
            config = section_from_mapping(ModelConfig, "model", payload["model_arguments"])
        model = VQVAE2(config).to(device)
        model.load_state_dict(payload["model_state"])
        return Checkpoint(model, payload["optimizer_state"], int(payload["step"]), int(payload["epoch"]),
                          payload["config"])
    except (KeyError, TypeError, RuntimeError, ValueError) as error:
        raise CheckpointError(f"{path}: the model in it cannot be rebuilt: {error}") from error


def run_training(
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    train_set: Dataset,
    config: TrainConfig,
    *,
    step: int = 0,
    rank: int = 0,
    world_size: int = 1,
    test_set: Dataset | None = None,
    progress: bool = True,
    on_metrics: Callable[[int, dict[str, Any]], None] | None = None,
    on_checkpoint: Callable[[int, int], None] | None = None,
) -> dict[str, float]:
    """The training loop from ``step`` to ``config.steps``, on one worker of ``world_size``.

    ``model`` may be DDP-wrapped. ``config.batch_size`` is the global batch: each worker takes its
    share of a seeded per-epoch shuffle, so a resumed run sees the same batches as an uninterrupted
    one, whatever the number of workers. ``on_metrics(step, metrics)`` gets the training metrics
    every step and the test metrics (keys ``test_*``) every ``eval_every`` steps when ``test_set``
    is given; ``on_checkpoint(step, epoch)`` runs every ``checkpoint_every`` steps and at the end.
    """
    if config.batch_size % world_size:
        raise ValueError(f"train.batch_size ({config.batch_size}) must be a multiple of the number of workers "
                         f"({world_size})")
    sampler = DistributedSampler(train_set, num_replicas=world_size, rank=rank, shuffle=True, seed=config.seed,
                                 drop_last=True)
    loader = DataLoader(train_set, batch_size=config.batch_size // world_size, sampler=sampler, drop_last=True)
    if len(loader) == 0:
        raise ValueError(f"the training set has {len(train_set)} images, fewer than train.batch_size "
                         f"({config.batch_size})")
    device = next(model.parameters()).device
    name = unwrap(model).config.selection_fn
    metrics: dict[str, float] = {}
    with tqdm(total=config.steps, initial=step, desc=f"train {name}", disable=not progress) as bar:
        while step < config.steps:
            epoch, skip = divmod(step, len(loader))  # skip: batches of this epoch done before a resume
            sampler.set_epoch(epoch)
            set_epoch(train_set, epoch)
            for images in itertools.islice(loader, skip, None):
                metrics = train_step(model, images.to(device), optimizer)
                step += 1
                bar.update(1)
                bar.set_postfix(loss=f"{metrics['loss']:.4f}")
                if test_set is not None and (step % config.eval_every == 0 or step == config.steps):
                    metrics.update(evaluate(unwrap(model), test_set))
                if on_metrics is not None:
                    on_metrics(step, metrics)
                if on_checkpoint is not None and (step % config.checkpoint_every == 0 or step == config.steps):
                    on_checkpoint(step, step // len(loader))
                if step >= config.steps:
                    break
    return metrics


def train(
    model_config: ModelConfig,
    train_config: TrainConfig,
    train_set: Dataset,
    test_set: Dataset | None = None,
    checkpoint_path: str | Path | None = None,
    device: torch.device | str = "cpu",
    progress: bool = True,
    on_metrics: Callable[[int, dict[str, Any]], None] | None = None,
) -> tuple[VQVAE2, dict[str, float]]:
    """Train for ``train_config.steps`` steps in this process, resuming from ``checkpoint_path`` when it exists."""
    torch.manual_seed(train_config.seed)
    step = 0
    if checkpoint_path is not None and Path(checkpoint_path).exists():
        checkpoint = load_checkpoint(checkpoint_path, device)
        if checkpoint.model.config != model_config:
            raise CheckpointError(f"{checkpoint_path} holds a model of other settings than this run's; "
                                  "move it away to start afresh")
        model, step = checkpoint.model, checkpoint.step
        optimizer = make_optimizer(model, train_config.lr)
        if checkpoint.optimizer_state is not None:
            optimizer.load_state_dict(checkpoint.optimizer_state)
    else:
        model = VQVAE2(model_config).to(device)
        optimizer = make_optimizer(model, train_config.lr)
    run_config = {"model": asdict(model.config), "train": asdict(train_config)}

    def save(step: int, epoch: int) -> None:
        save_checkpoint(checkpoint_path, model, optimizer, step, epoch, run_config)

    metrics = run_training(model, optimizer, train_set, train_config, step=step, test_set=test_set,
                           progress=progress, on_metrics=on_metrics,
                           on_checkpoint=save if checkpoint_path is not None else None)
    return model, metrics
