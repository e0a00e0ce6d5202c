"""Typed, validated configuration: one frozen dataclass per params.yaml section.

Each check names the key (``section.key``) and the allowed values, so a typo fails at load time
rather than an hour into training.
"""

from __future__ import annotations

from dataclasses import dataclass, fields

SELECTION_FNS = ("vanilla", "omp", "fista")
DATASETS = ("embedded", "cifar10", "cifar100", "imagefolder")


def _choice(section: str, key: str, value: object, allowed: tuple) -> None:
    if value not in allowed:
        raise ValueError(f"{section}.{key} must be one of {', '.join(map(str, allowed))}; got {value!r}")


def _at_least(section: str, key: str, value: object, low: float, kind: type = int) -> None:
    ok = isinstance(value, kind) and not isinstance(value, bool) if kind is int else (
        isinstance(value, (int, float)) and not isinstance(value, bool))
    if not ok or value < low:
        what = "an integer" if kind is int else "a number"
        raise ValueError(f"{section}.{key} must be {what} >= {low}; got {value!r}")


def _in_open_unit(section: str, key: str, value: object) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 < value < 1:
        raise ValueError(f"{section}.{key} must be a number in (0, 1); got {value!r}")


def _types(section: str, instance: object) -> None:
    for field in fields(instance):
        value = getattr(instance, field.name)
        if field.type in ("bool",) and not isinstance(value, bool):
            raise ValueError(f"{section}.{field.name} must be true or false; got {value!r}")


@dataclass(frozen=True)
class ModelConfig:
    """The VQ-VAE-2 and its quantizer. Defaults follow VQ-VAE-2 (rosinality) and the sparse-VQ-VAE seed."""

    selection_fn: str = "omp"  # vanilla (EMA codebook) | omp | fista
    levels: int = 2  # 2: top/bottom hierarchy of VQ-VAE-2; 1: one quantised map
    num_strides: int = 2  # levels=1 only: the map is 2**(num_strides + 1) times smaller (2 -> /8)
    channels: int = 128
    res_blocks: int = 2
    res_channels: int = 32
    embed_dim: int = 64
    num_atoms: int = 512  # dictionary atoms, or codebook entries for vanilla
    n_nonzero: int = 2  # omp: atoms per latent vector
    alpha: float = 0.3  # fista: L1 penalty
    max_nonzero: int = 4  # fista: keep at most this many (largest) coefficients
    coef_levels: int = 32  # omp/fista: coefficient quantisation levels
    normalize_latents: bool = True  # code unit-norm latents (as the seed); the LASSO needs it: alpha is relative
    commitment: float = 0.25  # weight of ||z - sg(z_q)||^2
    dictionary_loss_weight: float = 1.0  # omp/fista: weight of ||D c - sg(z)||^2
    ema_decay: float = 0.99  # vanilla codebook EMA; also the usage statistics' decay
    restart_dead: bool = True  # re-seed codes/atoms that fell out of use

    def __post_init__(self) -> None:
        _choice("model", "selection_fn", self.selection_fn, SELECTION_FNS)
        _choice("model", "levels", self.levels, (1, 2))
        for key in ("num_strides", "channels", "res_channels", "embed_dim", "num_atoms", "n_nonzero",
                    "max_nonzero"):
            _at_least("model", key, getattr(self, key), 1)
        _at_least("model", "res_blocks", self.res_blocks, 0)
        _at_least("model", "coef_levels", self.coef_levels, 2)
        for key in ("alpha", "commitment", "dictionary_loss_weight"):
            _at_least("model", key, getattr(self, key), 0, float)
        _in_open_unit("model", "ema_decay", self.ema_decay)
        _types("model", self)
        if self.channels % 2:
            raise ValueError(f"model.channels must be even (the encoder halves it); got {self.channels}")
        if self.selection_fn == "omp" and self.n_nonzero > self.num_atoms:
            raise ValueError(f"model.n_nonzero ({self.n_nonzero}) must not exceed model.num_atoms ({self.num_atoms})")
        if self.selection_fn == "fista" and self.max_nonzero > self.num_atoms:
            raise ValueError(f"model.max_nonzero ({self.max_nonzero}) must not exceed model.num_atoms ({self.num_atoms})")

    @property
    def stride(self) -> int:
        """What image sides must be multiples of: the coarsest map's downsampling (8 = the top map, for levels=2)."""
        return 2 ** (self.num_strides + 1) if self.levels == 1 else 8


@dataclass(frozen=True)
class DataConfig:
    name: str = "embedded"  # embedded | cifar10 | cifar100 | imagefolder
    root: str | None = None  # cifar10, cifar100, imagefolder: where the files are
    image_size: int = 32
    train_count: int = 8192  # embedded: crops drawn for the training split
    test_count: int = 1024  # embedded: crops drawn for the test split
    short_side: int = 256  # embedded: photographs are downscaled to this short side first
    test_fraction: float = 0.1  # imagefolder: share of images held out for the test split
    seed: int = 0

    def __post_init__(self) -> None:
        _choice("data", "name", self.name, DATASETS)
        for key in ("image_size", "train_count", "test_count", "short_side"):
            _at_least("data", key, getattr(self, key), 1)
        _at_least("data", "seed", self.seed, 0)
        _in_open_unit("data", "test_fraction", self.test_fraction)
        if self.name == "embedded" and self.image_size > self.short_side:
            raise ValueError(f"data.image_size ({self.image_size}) must not exceed data.short_side ({self.short_side})")


@dataclass(frozen=True)
class TrainConfig:
    steps: int = 2000
    batch_size: int = 128
    lr: float = 3e-4
    seed: int = 0
    eval_every: int = 200
    checkpoint_every: int = 200

    def __post_init__(self) -> None:
        for key in ("steps", "batch_size", "eval_every", "checkpoint_every"):
            _at_least("train", key, getattr(self, key), 1)
        _at_least("train", "seed", self.seed, 0)
        if isinstance(self.lr, bool) or not isinstance(self.lr, (int, float)) or not self.lr > 0:
            raise ValueError(f"train.lr must be a number > 0; got {self.lr!r}")
