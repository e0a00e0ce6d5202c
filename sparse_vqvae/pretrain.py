"""Pretraining: the autoencoder warms up with its quantizers bypassed, then each dictionary (or
codebook) is fitted to the latents it will code.

A VQ-VAE whose dictionary starts random codes its first latents badly and may never recover
(dead atoms, collapse). Fitting the dictionary to the latents of a briefly trained encoder - MOD
for the sparse quantizers, k-means for the vanilla codebook - starts stage 1 from a model that
already reconstructs.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable

import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, Dataset
from tqdm.auto import tqdm

from .checkpoint import CheckpointError
from .config import ModelConfig, PretrainConfig
from .data import set_epoch
from .train import load_checkpoint
from .vqvae import VQVAE2


def pretrain(model_config: ModelConfig, config: PretrainConfig, train_set: Dataset,
             device: torch.device | str = "cpu", progress: bool = True,
             on_metrics: Callable[[int, dict[str, Any]], None] | None = None) -> VQVAE2:
    """A VQ-VAE-2 whose encoder/decoder had ``config.steps`` unquantised steps and whose quantizers
    start from their latents."""
    torch.manual_seed(config.seed)
    model = VQVAE2(model_config).to(device)
    optimizer = torch.optim.Adam(model.parameters(), lr=config.lr)
    order = torch.Generator().manual_seed(config.seed)
    loader = DataLoader(train_set, batch_size=config.batch_size, shuffle=True, drop_last=True, generator=order)
    if config.steps and len(loader) == 0:
        raise ValueError(f"the training set has {len(train_set)} images, fewer than pretrain.batch_size "
                         f"({config.batch_size})")
    model.train()
    step = 0
    with tqdm(total=config.steps, desc="pretrain autoencoder", disable=not progress) as bar:
        while step < config.steps:
            set_epoch(train_set, step // max(len(loader), 1))
            for images in loader:
                images = images.to(device)
                reconstruction, _ = model.autoencode(images)
                loss = F.mse_loss(reconstruction, images)
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
                step += 1
                bar.update(1)
                bar.set_postfix(mse=f"{loss.item():.4f}")
                if on_metrics is not None:
                    on_metrics(step, {"pretrain_mse": loss.item()})
                if step >= config.steps:
                    break
    for quantizer, latents in zip(model.quantizers, collect_latents(model, train_set, config.latents, config.seed)):
        quantizer.initialize(latents, iterations=config.iterations)
    return model


@torch.no_grad()
def collect_latents(model: VQVAE2, dataset: Dataset, count: int, seed: int = 0,
                    batch_size: int = 256) -> list[torch.Tensor]:
    """Up to ``count`` latent vectors [M, C] per code map, from images in a seeded random order.

    Images are read a batch at a time only until every map has ``count`` vectors, so memory follows ``count``
    (a finer map gathers its positions-per-image ratio times more, then the draw keeps ``count``) and a batch,
    never the dataset's size."""
    model.eval()
    device = next(model.parameters()).device
    generator = torch.Generator().manual_seed(seed)
    loader = DataLoader(dataset, batch_size=batch_size, shuffle=True, generator=generator)
    collected: list[list[torch.Tensor]] = [[] for _ in model.quantizers]
    for images in loader:
        _, latents = model.autoencode(images.to(device))
        for store, z in zip(collected, latents):
            store.append(z.permute(0, 2, 3, 1).reshape(-1, z.shape[1]))
        if min(sum(t.shape[0] for t in store) for store in collected) >= count:
            break
    result = []
    for store in collected:
        flat = torch.cat(store)
        picks = torch.randperm(flat.shape[0], generator=generator)[:count].to(flat.device)
        result.append(flat[picks])
    return result


def continued(model_config: ModelConfig, path: str | Path, device: torch.device | str = "cpu") -> VQVAE2:
    """The trained model at ``path`` (weights and the quantizers' statistics) as ``model_config`` builds it: stage 1
    continues it under new training settings (a fine-tune) in place of a warm-up. A ``CheckpointError`` when the file
    holds no model or another network than ``model_config``'s."""
    trained = load_checkpoint(path, device).model
    model = VQVAE2(model_config).to(device)
    try:
        model.load_state_dict(trained.state_dict())
    except RuntimeError as error:
        differing = ", ".join(f"model.{key} {value!r} there, {model.arguments.get(key)!r} here"
                              for key, value in trained.arguments.items() if model.arguments.get(key) != value)
        raise CheckpointError(f"{path} (pretrain.init_from) holds another network than model.* builds "
                              f"({differing}): {str(error).splitlines()[0]}") from error
    return model
