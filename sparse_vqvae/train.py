"""Plain training and evaluation of the VQ-VAE-2, and checkpoints that rebuild and resume it.

No distributed framework here: the pipeline's Ray Train stage calls ``train_step`` and the
checkpoint functions from each worker.
"""

from __future__ import annotations

from dataclasses import asdict
from pathlib import Path
from typing import Any, Callable, NamedTuple

import torch
from torch.utils.data import DataLoader, Dataset
from tqdm.auto import tqdm

from .checkpoint import CheckpointError, load_payload, save_payload
from .config import ModelConfig, TrainConfig
from .metrics import mean_colour_squared_error_255, psnr, squared_error_255
from .vqvae import VQVAE2

CHECKPOINT_FORMAT = "sparse-vqvae/vqvae2"
CHECKPOINT_VERSION = 1


class Checkpoint(NamedTuple):
    model: VQVAE2
    optimizer_state: dict | None
    step: int
    epoch: int
    config: dict  # the run's configuration, as saved


def make_optimizer(model: VQVAE2, lr: float) -> torch.optim.Optimizer:
    return torch.optim.Adam(model.parameters(), lr=lr)


def train_step(model: torch.nn.Module, images: torch.Tensor, optimizer: torch.optim.Optimizer) -> dict[str, float]:
    """One forward/backward/update; returns the losses and the quantizers' scalar statistics."""
    vqvae = model.module if hasattr(model, "module") else model  # DDP wraps the model
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
    """Test-set MSE and PSNR on [0, 255] pixels (from the MSE over the whole set), and the mean-colour baseline."""
    model.eval()
    device = next(model.parameters()).device
    loader = DataLoader(dataset, batch_size=batch_size, shuffle=False)
    error = baseline = 0.0
    pixels = 0
    for images in tqdm(loader, desc="evaluate", disable=not progress, leave=False):
        images = images.to(device)
        error += float(squared_error_255(images, model(images).reconstruction))
        baseline += float(mean_colour_squared_error_255(images))
        pixels += images.numel()
    mse, baseline_mse = error / pixels, baseline / pixels
    return {"test_mse": mse, "test_psnr": psnr(mse), "baseline_mse": baseline_mse, "baseline_psnr": psnr(baseline_mse)}


def save_checkpoint(path: str | Path, model: VQVAE2, optimizer: torch.optim.Optimizer | None, step: int,
                    epoch: int, config: dict | None = None) -> None:
    """The model's arguments and weights, the optimizer, step, epoch and run config; written atomically."""
    vqvae = model.module if hasattr(model, "module") else model
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
        model = VQVAE2(ModelConfig(**payload["model_arguments"])).to(device)
        model.load_state_dict(payload["model_state"])
        return Checkpoint(model, payload["optimizer_state"], int(payload["step"]), int(payload["epoch"]),
                          payload["config"])
    except (KeyError, TypeError, RuntimeError, ValueError) as error:
        raise CheckpointError(f"{path}: the model in it cannot be rebuilt: {error}") from error


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
    """Train for ``train_config.steps`` steps, resuming from ``checkpoint_path`` when it exists.

    ``on_metrics(step, metrics)`` receives the training metrics every step and the test metrics
    every ``eval_every`` steps (keys prefixed ``test_``).
    """
    torch.manual_seed(train_config.seed)
    step = epoch = 0
    if checkpoint_path is not None and Path(checkpoint_path).exists():
        checkpoint = load_checkpoint(checkpoint_path, device)
        if checkpoint.model.config != model_config:
            raise CheckpointError(f"{checkpoint_path} holds a model of other settings than this run's; "
                                  "move it away to start afresh")
        model, step, epoch = checkpoint.model, checkpoint.step, checkpoint.epoch
        optimizer = make_optimizer(model, train_config.lr)
        if checkpoint.optimizer_state is not None:
            optimizer.load_state_dict(checkpoint.optimizer_state)
    else:
        model = VQVAE2(model_config).to(device)
        optimizer = make_optimizer(model, train_config.lr)
    run_config = {"model": asdict(model.config), "train": asdict(train_config)}

    metrics: dict[str, float] = {}
    with tqdm(total=train_config.steps, initial=step, desc=f"train {model.config.selection_fn}", disable=not progress) as bar:
        while step < train_config.steps:
            # One seeded shuffle per epoch: a resumed run sees the same order as an uninterrupted one.
            order = torch.Generator().manual_seed(train_config.seed * 100_003 + epoch)
            loader = DataLoader(train_set, batch_size=train_config.batch_size, shuffle=True, drop_last=True,
                                generator=order)
            if len(loader) == 0:
                raise ValueError(f"the training set has {len(train_set)} images, fewer than train.batch_size "
                                 f"({train_config.batch_size})")
            skip = step - epoch * len(loader)  # batches of this epoch done before a resume
            for i, images in enumerate(loader):
                if i < skip:
                    continue
                metrics = train_step(model, images.to(device), optimizer)
                step += 1
                bar.update(1)
                bar.set_postfix(loss=f"{metrics['loss']:.4f}")
                if test_set is not None and (step % train_config.eval_every == 0 or step == train_config.steps):
                    metrics.update(evaluate(model, test_set))
                if on_metrics is not None:
                    on_metrics(step, metrics)
                if checkpoint_path is not None and (step % train_config.checkpoint_every == 0 or step == train_config.steps):
                    save_checkpoint(checkpoint_path, model, optimizer, step, epoch, run_config)
                if step >= train_config.steps:
                    break
            else:
                epoch += 1
    return model, metrics
