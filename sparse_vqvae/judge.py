"""A sample-quality judge that runs offline: a small CIFAR-10 ResNet and the measures on its features.

No Inception weights can be downloaded here, so the project trains its own judge, a ResNet-9-style
classifier (Page 2018, "How to train your ResNet"; He et al. 2016) on 32x32 images, and measures
sets of images on its penultimate features:

- ``frechet_distance``: the Frechet distance between Gaussians fitted to two feature sets
  (Heusel et al. 2017). With the judge's features this is **not FID**: the number is comparable only
  between runs of this project that use the same judge checkpoint. Plug in the standard Inception
  network (``load_extractor`` on a TorchScript file, or ``PluggedExtractor`` around any module)
  and the same code computes the standard FID.
- ``precision_recall``: improved precision and recall (Kynkaanniemi et al. 2019, "Improved Precision
  and Recall Metric for Assessing Generative Models"): the share of generated samples inside the k-NN
  balls of the real ones (precision: fidelity), and of real samples inside those of the generated
  ones (recall: coverage).
- ``classifier_score``: the judge's own view of generated images: their mean top-class confidence,
  the entropy of their mean class distribution (diversity over classes, at most log 10), and the
  Inception-Score-like exp E[KL(p(y|x) || p(y))] (Salimans et al. 2016), again judge-specific.

Images are float tensors [B, 3, H, W] in [-1, 1], the library's convention everywhere.
"""

from __future__ import annotations

import math
import time
import zipfile
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable, Iterable, Literal

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
from PIL import Image
from tqdm.auto import tqdm

from .atomic import atomic_write
from .checkpoint import load_payload, save_payload
from .config import EXTRACTOR_RANGES, JudgeParams
from .errors import CheckpointError, DatasetNotFoundError

JUDGE_FORMAT = "sparse_vqvae.judge"
JUDGE_VERSION = 1
CIFAR10_CLASSES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")


# ---------------------------------------------------------------------------------------------- model

@dataclass(frozen=True)
class JudgeConfig:
    width: int = JudgeParams.width  # channels of the first block; the blocks have 1x, 2x, 4x, 8x this (features: 8x)
    num_classes: int = 10


def _conv_bn(cin: int, cout: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True))


class _Residual(nn.Module):
    def __init__(self, channels: int) -> None:
        super().__init__()
        self.body = nn.Sequential(_conv_bn(channels, channels), _conv_bn(channels, channels))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.body(x)


class Judge(nn.Module):
    """ResNet-9 layout at 32x32: prep, (conv, pool, residual), (conv, pool), (conv, pool, residual), global max pool.

    ``features`` (the penultimate layer, ``8 * width`` numbers per image) is what the measures use;
    ``forward`` gives the class logits.
    """

    def __init__(self, config: JudgeConfig = JudgeConfig()) -> None:
        super().__init__()
        self.config = config
        w = config.width
        self.body = nn.Sequential(
            _conv_bn(3, w),
            _conv_bn(w, 2 * w), nn.MaxPool2d(2), _Residual(2 * w),
            _conv_bn(2 * w, 4 * w), nn.MaxPool2d(2),
            _conv_bn(4 * w, 8 * w), nn.MaxPool2d(2), _Residual(8 * w),
            nn.AdaptiveMaxPool2d(1), nn.Flatten(),
        )
        self.head = nn.Linear(8 * w, config.num_classes)

    @property
    def feature_dim(self) -> int:
        return 8 * self.config.width

    def features(self, images: torch.Tensor) -> torch.Tensor:
        return self.body(images)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        # Page's ResNet-9 scales its logits down: with BatchNorm before every ReLU the pooled features
        # are large, and unscaled logits saturate the softmax in the first steps.
        return self.head(self.features(images)) * 0.125

    @classmethod
    def load(cls, path: str | Path, device: torch.device | str = "cpu") -> "Judge":
        """A trained judge from its checkpoint (``train_judge``'s file), in eval mode."""
        payload = load_payload(path, JUDGE_FORMAT, JUDGE_VERSION, device)
        judge = cls(JudgeConfig(**payload["model_args"]))
        judge.load_state_dict(payload["model"])
        return judge.to(device).eval()


# ----------------------------------------------------------------------------------------------- data

def read_image_folder(root: str | Path, cache: str | Path | None = None, progress: bool = True
                      ) -> tuple[np.ndarray, np.ndarray, tuple[str, ...]]:
    """All images of an ImageFolder tree as uint8 [N, H, W, 3], their labels int64 [N] and the class names.

    The order is torchvision ``ImageFolder``'s (classes sorted, files sorted), so indices agree with
    ``data.load_dataset``'s ``imagefolder``. Decoding 50,000 JPEGs takes a while: with ``cache`` the
    arrays are kept in that .npz file and read from it next time.
    """
    if cache is not None and Path(cache).is_file():
        with np.load(cache, allow_pickle=False) as stored:
            return stored["images"], stored["labels"], tuple(str(name) for name in stored["classes"])
    root = Path(root)
    if not root.is_dir():
        raise DatasetNotFoundError(f"no image folder at {root} (one sub-folder of images per class)")
    classes = tuple(sorted(entry.name for entry in root.iterdir() if entry.is_dir()))
    files = [(path, label) for label, name in enumerate(classes)
             for path in sorted(p for p in (root / name).iterdir() if p.is_file())]
    if not files:
        raise DatasetNotFoundError(f"no images under {root}")
    images = np.stack([np.asarray(Image.open(path).convert("RGB")) for path, _ in
                       tqdm(files, desc="decode images", disable=not progress, mininterval=5)])
    labels = np.array([label for _, label in files], dtype=np.int64)
    if cache is not None:
        Path(cache).parent.mkdir(parents=True, exist_ok=True)
        with atomic_write(cache) as handle:
            np.savez(handle, images=images, labels=labels, classes=np.array(classes))
    return images, labels, classes


def held_out_split(count: int, held_out: int = 5000, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """(train, held-out) indices, each sorted: the held-out ones are the first ``held_out`` of a seeded permutation.

    The rule is ``data.load_dataset``'s for ``imagefolder`` (``test_fraction``, ``seed``), so with the
    same seed a VQ-VAE's test split of that folder (at a smaller fraction) lies inside this held-out set:
    the judge never trained on the images the VQ-VAE is tested on.
    """
    if not 0 < held_out < count:
        raise ValueError(f"held_out must be between 1 and {count - 1}, got {held_out}")
    order = np.random.default_rng(seed).permutation(count)
    return np.sort(order[held_out:]), np.sort(order[:held_out])


def to_model_range(images_uint8: np.ndarray | torch.Tensor) -> torch.Tensor:
    """uint8 [B, H, W, 3] -> float [B, 3, H, W] in [-1, 1]."""
    images = torch.as_tensor(np.asarray(images_uint8))
    return images.permute(0, 3, 1, 2).float() / 127.5 - 1.0


def augment(images: torch.Tensor, generator: torch.Generator, pad: int = 4) -> torch.Tensor:
    """Random crops of the reflection-padded images (``pad`` pixels a side) and left-right flips, per image."""
    batch, _, height, width = images.shape
    padded = F.pad(images, (pad, pad, pad, pad), mode="reflect")
    dy = torch.randint(0, 2 * pad + 1, (batch,), generator=generator)
    dx = torch.randint(0, 2 * pad + 1, (batch,), generator=generator)
    flip = torch.rand(batch, generator=generator) < 0.5
    rows = dy[:, None] + torch.arange(height)
    cols = dx[:, None] + torch.arange(width)
    cols = torch.where(flip[:, None], cols.flip(1), cols)
    crops = padded[torch.arange(batch)[:, None, None], :, rows[:, :, None], cols[:, None, :]]  # [B, H, W, C]
    return crops.permute(0, 3, 1, 2).contiguous()


# ------------------------------------------------------------------------------------------- training

@dataclass(frozen=True)
class JudgeTrainConfig:
    epochs: int = JudgeParams.epochs
    batch_size: int = 256
    lr: float = 0.2  # the peak of the one-cycle schedule (SGD, Nesterov momentum)
    warmup: float = 0.25  # share of the steps over which the learning rate rises linearly from 0 to lr
    momentum: float = 0.9
    weight_decay: float = 5e-4
    label_smoothing: float = 0.1
    pad: int = 4  # random-crop padding
    seed: int = JudgeParams.seed
    # bfloat16 autocast: 2-3x faster on CPUs with AVX512-BF16 (and on GPUs); the evaluation and the
    # features are always computed in float32.
    bf16: bool = JudgeParams.bf16


def _lr_factor(step: int, total: int, warmup: float) -> float:
    rise = max(1, round(total * warmup))
    if step < rise:
        return (step + 1) / rise
    return 0.5 * (1 + math.cos(math.pi * (step - rise) / max(1, total - rise)))


@torch.no_grad()
def predict_logits(model: nn.Module, images: torch.Tensor, batch_size: int = 500) -> torch.Tensor:
    """Class logits of images in [-1, 1], in eval mode, float32."""
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    out = torch.cat([model(images[i:i + batch_size].to(device)).float().cpu()
                     for i in range(0, len(images), batch_size)])
    model.train(was_training)
    return out


def accuracy(model: nn.Module, images: torch.Tensor, labels: torch.Tensor) -> float:
    """Top-1 accuracy (no test-time augmentation)."""
    return (predict_logits(model, images).argmax(1) == labels).float().mean().item()


def train_judge(train_images: torch.Tensor, train_labels: torch.Tensor, config: JudgeConfig = JudgeConfig(),
                train_config: JudgeTrainConfig = JudgeTrainConfig(), checkpoint: str | Path | None = None,
                eval_images: torch.Tensor | None = None, eval_labels: torch.Tensor | None = None,
                progress: bool = True, max_epochs: int | None = None,
                device: torch.device | str = "cpu") -> tuple[Judge, dict]:
    """Train a judge on uint8 images [N, H, W, 3] and labels [N]; resume from ``checkpoint`` if it exists.

    The checkpoint is written after every epoch (model, optimizer, epoch, history, seconds) and holds
    the finished judge at the end. Epoch ``e``'s shuffle and augmentation come from ``(seed, e)``, so a
    resumed run draws the batches an uninterrupted one would. ``max_epochs`` stops early (after that
    many epochs in total) without changing the schedule: for a run cut into pieces. Returns the judge
    (eval mode) and a summary: epochs, seconds, the held-out accuracy per epoch when given images.
    """
    device = torch.device(device)
    model = Judge(config).to(device).to(memory_format=torch.channels_last)
    optimizer = torch.optim.SGD(model.parameters(), lr=train_config.lr, momentum=train_config.momentum,
                                nesterov=True, weight_decay=train_config.weight_decay)
    steps_per_epoch = math.ceil(len(train_images) / train_config.batch_size)
    total_steps = steps_per_epoch * train_config.epochs
    epoch, seconds, history = 0, 0.0, []
    if checkpoint is not None and Path(checkpoint).is_file():
        payload = load_payload(checkpoint, JUDGE_FORMAT, JUDGE_VERSION)
        if payload["model_args"] != asdict(config) or payload["train_config"] != asdict(train_config):
            raise CheckpointError(f"{checkpoint} was trained with other settings: {payload['model_args']}, "
                                  f"{payload['train_config']}")
        model.load_state_dict(payload["model"])
        optimizer.load_state_dict(payload["optimizer"])
        epoch, seconds, history = payload["epoch"], payload["seconds"], list(payload["history"])
    images_u8 = torch.as_tensor(np.asarray(train_images))
    labels = torch.as_tensor(np.asarray(train_labels))
    eval_x = to_model_range(eval_images) if eval_images is not None else None
    last = train_config.epochs if max_epochs is None else min(train_config.epochs, max_epochs)
    autocast = torch.autocast(device.type, dtype=torch.bfloat16, enabled=train_config.bf16)
    while epoch < last:
        start = time.perf_counter()
        model.train()
        generator = torch.Generator().manual_seed(train_config.seed * 100_003 + epoch)
        order = torch.randperm(len(images_u8), generator=generator)
        total_loss = 0.0
        bar = tqdm(range(steps_per_epoch), desc=f"judge epoch {epoch + 1}/{train_config.epochs}",
                   disable=not progress, mininterval=10, leave=False)
        for i in bar:
            step = epoch * steps_per_epoch + i
            for group in optimizer.param_groups:
                group["lr"] = train_config.lr * _lr_factor(step, total_steps, train_config.warmup)
            index = order[i * train_config.batch_size:(i + 1) * train_config.batch_size]
            x = augment(to_model_range(images_u8[index]), generator, train_config.pad)
            x = x.to(device).contiguous(memory_format=torch.channels_last)
            with autocast:
                loss = F.cross_entropy(model(x), labels[index].to(device), label_smoothing=train_config.label_smoothing)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            total_loss += loss.item()
            bar.set_postfix(loss=f"{loss.item():.3f}", refresh=False)
        bar.close()
        epoch += 1
        seconds += time.perf_counter() - start
        record = {"epoch": epoch, "loss": total_loss / steps_per_epoch, "seconds": round(seconds, 1)}
        if eval_x is not None:
            record["held_out_accuracy"] = accuracy(model, eval_x, torch.as_tensor(np.asarray(eval_labels)))
        history.append(record)
        if progress:
            tqdm.write(f"judge epoch {epoch}/{train_config.epochs}: " + ", ".join(
                f"{key} {value:.4f}" if isinstance(value, float) else f"{key} {value}" for key, value in record.items()))
        if checkpoint is not None:
            save_payload(checkpoint, {
                "format": JUDGE_FORMAT, "version": JUDGE_VERSION, "model_args": asdict(config),
                "train_config": asdict(train_config), "model": model.state_dict(),
                "optimizer": optimizer.state_dict(), "epoch": epoch, "seconds": seconds, "history": history,
                "classes": list(CIFAR10_CLASSES) if config.num_classes == 10 else None,
            })
    model.eval()
    return model, {"epochs": epoch, "seconds": round(seconds, 1), "history": history}


# ---------------------------------------------------------------------------------- feature extractors

FeatureExtractor = Callable[[torch.Tensor], torch.Tensor]
"""Anything that maps images [B, 3, H, W] in [-1, 1] to features [B, D]: ``Judge.features``, a ``PluggedExtractor``."""

ValueRange = Literal["minus_one_one", "zero_one", "uint8"]  # config.EXTRACTOR_RANGES


class PluggedExtractor(nn.Module):
    """Any ``nn.Module`` that returns features, adapted to the library's images.

    The images (in [-1, 1]) are resized to ``size`` (bilinear; None keeps them) and mapped to the
    range the module expects: ``minus_one_one``, ``zero_one`` or ``uint8`` (0..255 floats, as the
    TorchScript Inception of the StyleGAN repositories takes). A module that returns a tuple or
    a 4-D map gives its first element, globally averaged.

    With the standard FID Inception network this computes the standard FID; with the project's judge
    in its place (``PluggedExtractor(judge.body)``), the project's own distance.
    """

    def __init__(self, module: nn.Module, size: int | None = None, value_range: ValueRange = "minus_one_one") -> None:
        super().__init__()
        if value_range not in EXTRACTOR_RANGES:
            raise ValueError(f"value_range must be one of {', '.join(EXTRACTOR_RANGES)}, got {value_range!r}")
        self.module, self.size, self.value_range = module, size, value_range

    def train(self, mode: bool = True) -> "PluggedExtractor":
        self.training = mode
        try:
            self.module.train(mode)
        except NotImplementedError:  # a torch.export program keeps the mode it was exported in
            pass
        return self

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        if self.size is not None and images.shape[-2:] != (self.size, self.size):
            images = F.interpolate(images, size=(self.size, self.size), mode="bilinear", align_corners=False)
        if self.value_range == "zero_one":
            images = (images + 1) / 2
        elif self.value_range == "uint8":
            images = ((images.clamp(-1, 1) + 1) * 127.5).round()
        out = self.module(images)
        if isinstance(out, (tuple, list)):
            out = out[0]
        if out.dim() == 4:
            out = out.mean(dim=(2, 3))
        return out.flatten(1)


def _archive_kind(path: Path) -> str:
    """``export`` (a torch.export program), ``torchscript`` or ``checkpoint`` (anything else: torch.save's)."""
    try:
        with zipfile.ZipFile(path) as archive:
            names = archive.namelist()
    except zipfile.BadZipFile:
        return "checkpoint"
    if any(name.endswith("/archive_format") or "/models/" in name for name in names):
        return "export"
    if any("/code/" in name for name in names):
        return "torchscript"
    return "checkpoint"


def load_extractor(path: str | Path, size: int | None = None, value_range: ValueRange = "minus_one_one",
                   device: torch.device | str = "cpu") -> FeatureExtractor:
    """A feature extractor from a file: a judge checkpoint (its ``features``), a ``torch.export`` program
    (``torch.export.save``, with a dynamic batch dimension) or a TorchScript module.

    Point ``path`` at an export of the standard FID Inception network (with its ``size``, 299, and its
    ``value_range``) and the measures here are the standard FID and precision/recall. A plain state dict
    carries no architecture: build the module and wrap it in ``PluggedExtractor`` instead.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no feature extractor at {path}")
    kind = _archive_kind(path)
    if kind == "checkpoint":
        return Judge.load(path, device).features
    try:
        if kind == "export":
            module = torch.export.load(str(path)).module().to(device)
        else:
            module = torch.jit.load(str(path), map_location=device).eval()
    except (RuntimeError, ValueError, KeyError) as error:
        raise CheckpointError(f"{path} looks like a {kind} file but cannot be loaded: {error}") from error
    return PluggedExtractor(module, size, value_range)


@torch.no_grad()
def extract_features(extractor: FeatureExtractor, images: torch.Tensor | Iterable[torch.Tensor],
                     batch_size: int = 500, device: torch.device | str = "cpu") -> np.ndarray:
    """Features (float64 [N, D]) of images in [-1, 1]: one tensor [N, 3, H, W], or an iterable of batches."""
    if isinstance(extractor, nn.Module):
        extractor.eval()
    owner = getattr(extractor, "__self__", None)
    if isinstance(owner, nn.Module):
        owner.eval()
    batches = (images[i:i + batch_size] for i in range(0, len(images), batch_size)) \
        if isinstance(images, torch.Tensor) else images
    out = [extractor(batch.float().to(device)).float().cpu().double() for batch in batches]
    if not out:
        raise ValueError("no images to extract features from")
    return torch.cat(out).numpy()


# ------------------------------------------------------------------------------------------- measures

def feature_statistics(features: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Mean [D] and (unbiased) covariance [D, D] of features [N, D], in float64."""
    features = np.asarray(features, dtype=np.float64)
    if features.ndim != 2 or len(features) < 2:
        raise ValueError(f"features must be [N >= 2, D], got shape {features.shape}")
    return features.mean(0), np.cov(features, rowvar=False)


def _psd_sqrt(matrix: np.ndarray) -> np.ndarray:
    values, vectors = np.linalg.eigh((matrix + matrix.T) / 2)
    return (vectors * np.sqrt(np.clip(values, 0, None))) @ vectors.T


def frechet_distance_from_statistics(mu1: np.ndarray, sigma1: np.ndarray, mu2: np.ndarray, sigma2: np.ndarray) -> float:
    """||mu1 - mu2||^2 + tr(S1 + S2 - 2 (S1 S2)^(1/2)).

    tr((S1 S2)^(1/2)) is computed as the sum of the square roots of the eigenvalues of the symmetric
    positive semi-definite S1^(1/2) S2 S1^(1/2) (same eigenvalues as S1 S2): no complex parts to
    discard and no blow-up on singular covariances (more dimensions than samples), unlike a general
    ``sqrtm`` of the non-symmetric product.
    """
    root1 = _psd_sqrt(np.asarray(sigma1, dtype=np.float64))
    middle = root1 @ np.asarray(sigma2, dtype=np.float64) @ root1
    trace_root = np.sqrt(np.clip(np.linalg.eigvalsh((middle + middle.T) / 2), 0, None)).sum()
    diff = np.asarray(mu1, dtype=np.float64) - np.asarray(mu2, dtype=np.float64)
    return float(max(0.0, diff @ diff + np.trace(sigma1) + np.trace(sigma2) - 2 * trace_root))


def frechet_distance(features1: np.ndarray, features2: np.ndarray) -> float:
    """The Frechet distance between Gaussians fitted to two feature sets [N, D] (FID with Inception features)."""
    return frechet_distance_from_statistics(*feature_statistics(features1), *feature_statistics(features2))


def _distances(a: torch.Tensor, b: torch.Tensor, chunk: int = 2048) -> Iterable[tuple[int, torch.Tensor]]:
    for start in range(0, len(a), chunk):
        yield start, torch.cdist(a[start:start + chunk], b)


def knn_radii(features: np.ndarray, k: int = 3) -> np.ndarray:
    """Distance of each feature vector to its k-th nearest neighbour in the same set (itself not counted)."""
    x = torch.as_tensor(np.asarray(features, dtype=np.float64))
    if not 1 <= k < len(x):
        raise ValueError(f"k must be between 1 and {len(x) - 1} for {len(x)} samples, got {k}")
    radii = torch.empty(len(x), dtype=torch.float64)
    for start, d in _distances(x, x):
        # the (k+1)-th smallest: the smallest is the point itself at distance 0
        radii[start:start + len(d)] = d.kthvalue(k + 1, dim=1).values
    return radii.numpy()


def _coverage(points: np.ndarray, centres: np.ndarray, radii: np.ndarray) -> float:
    """Share of ``points`` inside at least one ball (centre, radius), boundaries included."""
    p = torch.as_tensor(np.asarray(points, dtype=np.float64))
    c = torch.as_tensor(np.asarray(centres, dtype=np.float64))
    r = torch.as_tensor(np.asarray(radii, dtype=np.float64))
    inside = torch.zeros(len(p), dtype=torch.bool)
    for start, d in _distances(p, c):
        # a relative tolerance keeps a point that coincides with a ball's boundary inside, as the
        # closed ball of the definition says, despite rounding in cdist
        inside[start:start + len(d)] = (d <= r[None, :] * (1 + 1e-9) + 1e-12).any(dim=1)
    return inside.double().mean().item()


def precision_recall(real: np.ndarray, fake: np.ndarray, k: int = 3) -> tuple[float, float]:
    """Improved precision and recall (Kynkaanniemi et al. 2019) of ``fake`` features against ``real`` ones.

    precision: the share of fake samples within the k-NN radius of some real sample;
    recall: the share of real samples within the k-NN radius of some fake sample.
    """
    precision = _coverage(fake, real, knn_radii(real, k))
    recall = _coverage(real, fake, knn_radii(fake, k))
    return precision, recall


def classifier_score(logits: torch.Tensor | np.ndarray) -> dict:
    """The judge's view of a set of images from its class logits [N, C].

    ``confidence``: mean top-class probability; ``class_entropy``: entropy (nats) of the mean class
    distribution, log C when the classes are evenly used; ``score``: exp E_x[KL(p(y|x) || p(y))], the
    Inception Score's formula on the judge (1 to C; comparable within the project only).
    """
    logits = torch.as_tensor(np.asarray(logits), dtype=torch.float64)
    log_p = logits.log_softmax(1)
    p = log_p.exp()
    mean = p.mean(0)
    log_mean = mean.clamp_min(1e-300).log()
    kl = (p * (log_p - log_mean)).sum(1).mean()
    return {"confidence": p.max(1).values.mean().item(),
            "class_entropy": -(mean * log_mean).sum().item(),
            "score": kl.exp().item()}


def compare(extractor: FeatureExtractor, reference: np.ndarray, images: torch.Tensor, k: int = 3) -> dict:
    """fd, precision and recall of ``images`` against reference features (from the same extractor)."""
    features = extract_features(extractor, images)
    precision, recall = precision_recall(reference, features, k)
    return {"fd": frechet_distance(reference, features), "precision": precision, "recall": recall}
