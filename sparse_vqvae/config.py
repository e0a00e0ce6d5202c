"""Typed, validated configuration: one frozen dataclass per params.yaml section.

Each check names the key (``section.key``) and the allowed values, so a typo fails at load time
rather than an hour into training.
"""

from __future__ import annotations

from dataclasses import dataclass, fields
import warnings
from typing import Any, TypeVar

SELECTION_FNS = ("vanilla", "rvq", "fsq", "omp", "qmp", "lasso")
# fsq: the levels per dimension that Mentzer et al. (2023, Table 1) recommend for each codebook size (num_atoms).
FSQ_LEVELS = {256: (8, 6, 5), 1024: (8, 5, 5, 5), 4096: (7, 5, 5, 5, 5), 16384: (8, 8, 8, 6, 5)}
LASSO_SOLVERS = ("homotopy", "fista")
RATE_CONTROLLED = ("qmp", "rvq")  # the quantizers that can stop a position early by a rate-distortion multiplier
COEF_QUANTIZERS = ("uniform", "learned")
ENCODER_GRADIENTS = ("straight_through", "task_driven")
DATASETS = ("embedded", "cifar10", "cifar100", "imagefolder", "photos", "imagenet")
PRIOR_POSITIONS = ("learned", "none")


def staged(selection_fn: str) -> bool:
    """Codes made of stages (a residual VQ's): slot k holds one of stage k's entries, and the first q
    slots alone are a coarser code of the same latent - the codec's qualities."""
    return selection_fn == "rvq"


def ranked(selection_fn: str) -> bool:
    """Codes whose slot k holds a rank-k pair (a residual VQ's stage k, a quantised pursuit's k-th pick) under its
    own ids: the atom ids are K x M, rank k's k*M .. k*M+M-1, so slot order is rank order and the entropy models
    code each rank's atoms, and levels, from that rank's own tables."""
    return selection_fn in ("rvq", "qmp")


def stage_atoms(selection_fn: str, code_atoms: int, slots: int) -> int:
    """M where slot k only ever holds atoms k*M .. k*M+M-1 (``ranked``), so the entropy models code it among
    those M; 0 where a slot may hold any atom. ``code_atoms``: the atom ids a code may hold (K x M ranked)."""
    return code_atoms // slots if ranked(selection_fn) else 0


def check_choice(section: str, key: str, value: object, allowed: tuple) -> None:
    if value not in allowed:
        raise ValueError(f"{section}.{key} must be one of {', '.join(map(str, allowed))}; got {value!r}")


def check_at_least(section: str, key: str, value: object, low: float, kind: type = int) -> None:
    ok = isinstance(value, kind) and not isinstance(value, bool) if kind is int else (
        isinstance(value, (int, float)) and not isinstance(value, bool))
    if not ok or value < low:
        what = "an integer" if kind is int else "a number"
        raise ValueError(f"{section}.{key} must be {what} >= {low}; got {value!r}")


def _in_unit_interval(section: str, key: str, value: object) -> None:
    """A share in [0, 1): 1 would drop everything."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value < 1:
        raise ValueError(f"{section}.{key} must be a number in [0, 1); got {value!r}")


def _in_open_unit(section: str, key: str, value: object) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 < value < 1:
        raise ValueError(f"{section}.{key} must be a number in (0, 1); got {value!r}")


_TYPE_NAMES = {"bool": "true or false", "int": "an integer", "float": "a number", "str": "a string",
               "dict": "a mapping"}


def _is(value: object, type_name: str) -> bool:
    if type_name == "None":
        return value is None
    if type_name == "bool":
        return isinstance(value, bool)
    if isinstance(value, bool):
        return False
    if type_name == "float":
        return isinstance(value, (int, float))
    return isinstance(value, {"int": int, "str": str, "dict": dict}[type_name])


def _check_type(section: str, key: str, value: object, annotation: str) -> None:
    """``annotation`` is the field's type as written (``int``, ``str | None``...): the module uses lazy annotations."""
    options = [part.strip() for part in annotation.split("|")]
    if not any(_is(value, option) for option in options):
        wanted = " or ".join("null" if o == "None" else _TYPE_NAMES[o] for o in options)
        raise ValueError(f"{section}.{key} must be {wanted}; got {value!r}")


def _types(section: str, instance: object) -> None:
    for field in fields(instance):
        _check_type(section, field.name, getattr(instance, field.name), field.type)


Section = TypeVar("Section")


def section_from_mapping(cls: type[Section], section: str, mapping: Any) -> Section:
    """Build one config section from its params.yaml mapping (or a checkpoint's record of it): unknown keys and wrong
    types name the key; a section's old spellings are accepted with a warning (its ``renamed``)."""
    if mapping is None:
        mapping = {}
    if hasattr(cls, "renamed"):
        mapping = cls.renamed(mapping)
    if not isinstance(mapping, dict):
        raise ValueError(f"{section} must be a mapping of keys to values; got {mapping!r}")
    known = [field.name for field in fields(cls)]
    for key in mapping:
        if key not in known:
            raise ValueError(f"{section}.{key} is not a known key; allowed keys: {', '.join(known)}")
    for field in fields(cls):
        if field.name in mapping:
            _check_type(section, field.name, mapping[field.name], field.type)
    return cls(**mapping)


@dataclass(frozen=True)
class ModelConfig:
    """The VQ-VAE-2 and its quantizer. Defaults follow VQ-VAE-2 (rosinality) and the sparse-VQ-VAE seed."""

    selection_fn: str = "vanilla"  # vanilla | rvq (residual) | fsq (finite scalar) | omp | qmp (quantised pursuit) | lasso
    maps: int = 2  # 2: top/bottom code maps of VQ-VAE-2's hierarchy; 1: one quantised map
    num_strides: int = 2  # maps=1 only: the map is 2**(num_strides + 1) times smaller (2 -> /8)
    channels: int = 128
    res_blocks: int = 2
    res_channels: int = 32
    embed_dim: int = 64
    num_atoms: int = 256  # dictionary atoms; codebook entries (vanilla), per stage (rvq); fsq: about (256 ... 16384)
    n_nonzero: int = 1  # omp: atoms per latent vector; qmp: at most this many
    stages: int = 1  # rvq: codebooks, each coding what the stages before it left
    alpha: float = 0.3  # lasso: L1 penalty
    max_nonzero: int = 4  # lasso: keep at most this many (largest) coefficients
    lasso_solver: str = "homotopy"  # lasso: homotopy (exact LARS path) | fista (iterative, exact finish)
    coef_levels: int = 8  # omp/lasso: values a coefficient is quantised to; qmp: each rank's values (even: +-)
    coef_quantizer: str = "learned"  # omp/lasso: uniform (evenly over [-m, m]) | learned (EMA of the coefficients)
    encoder_gradient: str = "straight_through"  # omp/lasso: straight_through (z + sg(z_q - z)) | task_driven
    normalize_latents: bool = False  # code unit-norm latents: the LASSO wants it (alpha is relative); OMP keeps the gain
    rate_lambda: float = 0.0  # qmp, rvq: the encoder's rate-distortion multiplier (units of the latents' energy)
    train_lambda_min: float = 0.0  # qmp, rvq: training draws lambda per image, log-uniform in [min, max] (max 0: none)
    train_lambda_max: float = 0.0
    commitment: float = 0.25  # weight of ||z - sg(z_q)||^2
    dictionary_loss_weight: float = 1.0  # omp/qmp/lasso: weight of ||D c - sg(z)||^2
    ema_decay: float = 0.99  # codebook EMA (vanilla, rvq), coefficient levels' EMA, usage statistics
    restart_dead: bool = True  # re-seed codes/atoms that fell out of use
    stage_dropout: bool = False  # rvq: each training image keeps a random prefix of the stages (top map first)
    stage_dropout_top_share: float = 0.0  # stage_dropout: share of images at the top quality (rest: uniform)

    def __post_init__(self) -> None:
        check_choice("model", "selection_fn", self.selection_fn, SELECTION_FNS)
        check_choice("model", "maps", self.maps, (1, 2))
        check_choice("model", "lasso_solver", self.lasso_solver, LASSO_SOLVERS)
        check_choice("model", "coef_quantizer", self.coef_quantizer, COEF_QUANTIZERS)
        check_choice("model", "encoder_gradient", self.encoder_gradient, ENCODER_GRADIENTS)
        for key in ("num_strides", "channels", "res_channels", "embed_dim", "num_atoms", "n_nonzero", "stages",
                    "max_nonzero"):
            check_at_least("model", key, getattr(self, key), 1)
        check_at_least("model", "res_blocks", self.res_blocks, 0)
        check_at_least("model", "coef_levels", self.coef_levels, 2)
        for key in ("alpha", "commitment", "dictionary_loss_weight", "rate_lambda", "train_lambda_min",
                    "train_lambda_max"):
            check_at_least("model", key, getattr(self, key), 0, float)
        _in_open_unit("model", "ema_decay", self.ema_decay)
        _in_unit_interval("model", "stage_dropout_top_share", self.stage_dropout_top_share)
        _types("model", self)
        if self.channels % 2:
            raise ValueError(f"model.channels must be even (the encoder halves it); got {self.channels}")
        if self.stage_dropout and self.selection_fn != "rvq":
            raise ValueError(f"model.stage_dropout is for selection_fn rvq only; got selection_fn {self.selection_fn!r}")
        if self.stage_dropout_top_share and not self.stage_dropout:
            raise ValueError("model.stage_dropout_top_share weights stage dropout's draw toward the top quality: set "
                             f"model.stage_dropout too (got stage_dropout_top_share {self.stage_dropout_top_share})")
        if self.selection_fn in ("omp", "qmp") and self.n_nonzero > self.num_atoms:
            raise ValueError(f"model.n_nonzero ({self.n_nonzero}) must not exceed model.num_atoms ({self.num_atoms})")
        if self.selection_fn == "qmp" and self.coef_levels % 2:
            raise ValueError(f"model.coef_levels must be even for qmp (each value with both signs); got "
                             f"{self.coef_levels}")
        if (self.rate_lambda or self.train_lambda_max) and self.selection_fn not in RATE_CONTROLLED:
            raise ValueError(f"model.rate_lambda and model.train_lambda_* are for selection_fn "
                             f"{' or '.join(RATE_CONTROLLED)}; got selection_fn {self.selection_fn!r}")
        if self.selection_fn == "rvq" and self.rate_lambda and not self.train_lambda_max:
            raise ValueError("model.rate_lambda: a residual VQ stops early only when trained to; set "
                             "model.train_lambda_min and model.train_lambda_max")
        if self.stage_dropout and self.train_lambda_max:
            raise ValueError("model.stage_dropout and model.train_lambda_max are two rate controls of a residual VQ "
                             "(every image a prefix of the stages, or every position its own stage count): set one")
        if self.train_lambda_max and not 0 < self.train_lambda_min <= self.train_lambda_max:
            raise ValueError(f"model.train_lambda_min must be in (0, train_lambda_max] when train_lambda_max is set; "
                             f"got {self.train_lambda_min} and {self.train_lambda_max}")
        if self.selection_fn == "fsq":
            check_choice("model", "num_atoms", self.num_atoms, tuple(FSQ_LEVELS))
        if self.selection_fn != "rvq" and self.stages != 1:
            raise ValueError(f"model.stages is for selection_fn rvq only (OMP's pairs are model.n_nonzero); got "
                             f"stages {self.stages} with selection_fn {self.selection_fn!r}")
        if self.selection_fn == "rvq" and self.n_nonzero != 1:
            raise ValueError(f"model.n_nonzero is OMP's atoms per position; a residual VQ's stage count is model.stages "
                             f"(got n_nonzero {self.n_nonzero} with selection_fn 'rvq')")
        if self.selection_fn == "lasso" and self.max_nonzero > self.num_atoms:
            raise ValueError(f"model.max_nonzero ({self.max_nonzero}) must not exceed model.num_atoms ({self.num_atoms})")

    @property
    def rate_controlled(self) -> bool:
        """Whether the encoder trades pairs for bits by a multiplier it was trained over (``qmp`` or ``rvq`` with
        ``train_lambda_max``): the codec's qualities are multipliers."""
        return self.selection_fn in RATE_CONTROLLED and self.train_lambda_max > 0

    @property
    def codes_vary(self) -> bool:
        """Whether a position's pair count varies (sparse codes drop zero pairs, a rate-controlled residual VQ
        stops where a stage does not pay) or is always K."""
        return self.selection_fn in ("omp", "qmp", "lasso") or self.rate_controlled

    @property
    def stride(self) -> int:
        """What image sides must be multiples of: the coarsest map's downsampling (8 = the top map, for maps=2)."""
        return 2 ** (self.num_strides + 1) if self.maps == 1 else 8

    @staticmethod
    def renamed(mapping: Any) -> Any:
        """The section with its old spellings replaced (``section_from_mapping`` asks every section)."""
        return upgrade_model_mapping(mapping)


# Spellings of the model section that users' params files and older checkpoints still hold.
_RENAMED_MODEL_KEYS = {"levels": "maps"}
_RENAMED_SELECTION_FNS = {"fista": "lasso"}  # it ran the LASSO's homotopy (LARS), not FISTA


def upgrade_model_mapping(mapping: Any) -> Any:
    """Map the old spellings of the model section onto today's, warning once for each (FutureWarning: shown to
    users by default); anything else is returned unchanged for ``section_from_mapping`` to check."""
    if not isinstance(mapping, dict):
        return mapping
    mapping = dict(mapping)
    for old, new in _RENAMED_MODEL_KEYS.items():
        if old in mapping and new not in mapping:
            _deprecated(f"model.{old} is now model.{new}")
            mapping[new] = mapping.pop(old)
    name = mapping.get("selection_fn")
    if isinstance(name, str) and name in _RENAMED_SELECTION_FNS:
        _deprecated(f"model.selection_fn {name} is now {_RENAMED_SELECTION_FNS[name]} (solver: model.lasso_solver)")
        mapping["selection_fn"] = _RENAMED_SELECTION_FNS[name]
    if mapping.get("selection_fn") == "rvq" and "n_nonzero" in mapping and "stages" not in mapping:
        _deprecated("a residual VQ's stage count is now model.stages, not model.n_nonzero")
        mapping["stages"] = mapping.pop("n_nonzero")
    return mapping


def _deprecated(message: str) -> None:
    warnings.warn(f"{message}; the old spelling still works but will go", FutureWarning, stacklevel=3)


@dataclass(frozen=True)
class DataConfig:
    name: str = "embedded"  # embedded | cifar10 | cifar100 | imagefolder | photos | imagenet (train/, val/<synset>/)
    root: str | None = None  # cifar10, cifar100, imagefolder, photos, imagenet: where the files are
    image_size: int = 32  # training crops (photos: drawn afresh inside the tiles at every epoch)
    train_count: int = 8192  # embedded: crops drawn for the training split
    test_count: int = 1024  # embedded: crops drawn for the test split
    short_side: int = 256  # embedded: photographs are downscaled to this short side first
    test_fraction: float = 0.02  # imagefolder, imagenet without val/: share of images held out for the test split
    tile_size: int = 256  # photos: each photograph is kept as tiles of this side
    test_photos: int = 9  # photos: the last photographs by name are held out for the test split
    seed: int = 0

    def __post_init__(self) -> None:
        check_choice("data", "name", self.name, DATASETS)
        for key in ("image_size", "train_count", "test_count", "short_side", "tile_size", "test_photos"):
            check_at_least("data", key, getattr(self, key), 1)
        check_at_least("data", "seed", self.seed, 0)
        _in_open_unit("data", "test_fraction", self.test_fraction)
        _types("data", self)
        if self.name == "embedded" and self.image_size > self.short_side:
            raise ValueError(f"data.image_size ({self.image_size}) must not exceed data.short_side ({self.short_side})")
        if self.name == "photos" and self.image_size > self.tile_size:
            raise ValueError(f"data.image_size ({self.image_size}) must not exceed data.tile_size ({self.tile_size})")


@dataclass(frozen=True)
class TrainConfig:
    steps: int = 600
    batch_size: int = 128  # global: split between the Ray workers
    lr: float = 3e-4
    seed: int = 0
    eval_every: int = 200
    checkpoint_every: int = 100

    def __post_init__(self) -> None:
        for key in ("steps", "batch_size", "eval_every", "checkpoint_every"):
            check_at_least("train", key, getattr(self, key), 1)
        check_at_least("train", "seed", self.seed, 0)
        _positive("train", "lr", self.lr)
        _types("train", self)


def _positive(section: str, key: str, value: object) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not value > 0:
        raise ValueError(f"{section}.{key} must be a number > 0; got {value!r}")


@dataclass(frozen=True)
class PretrainConfig:
    """The warm-up before stage 1: the autoencoder without quantisation, then the dictionary fitted to its latents."""

    steps: int = 100  # autoencoder steps with the quantizers bypassed (0: fit on the untrained encoder)
    batch_size: int = 128
    lr: float = 3e-4
    latents: int = 65536  # latent vectors (per map) the dictionary / codebook is fitted to
    iterations: int = 10  # MOD (omp, lasso) or k-means (vanilla, rvq) iterations
    seed: int = 0
    init_from: str | None = None  # a trained model's checkpoint that stage 1 continues, in place of this warm-up

    def __post_init__(self) -> None:
        check_at_least("pretrain", "steps", self.steps, 0)
        for key in ("batch_size", "latents", "iterations"):
            check_at_least("pretrain", key, getattr(self, key), 1)
        check_at_least("pretrain", "seed", self.seed, 0)
        _positive("pretrain", "lr", self.lr)
        _types("pretrain", self)


@dataclass(frozen=True)
class ExtractConfig:
    batch_size: int = 256

    def __post_init__(self) -> None:
        check_at_least("extract", "batch_size", self.batch_size, 1)
        _types("extract", self)


@dataclass(frozen=True)
class PriorTrainConfig:
    """The PixelSNAIL priors (one per code map) and their training."""

    steps: int = 300  # per prior (top, then bottom)
    batch_size: int = 64
    lr: float = 1e-3
    channels: int = 64
    blocks: int = 2
    res_per_block: int = 2
    dropout: float = 0.1
    positions: str = "learned"  # learned: an embedding per code position (training size only) | none: any size
    attention_rows: int = 0  # > 0: attend to the current row and this many above (a photograph's cost bounded) | 0: all
    seed: int = 0
    checkpoint_every: int = 200  # steps between resumable checkpoints
    class_conditional: bool = False  # condition on the image's class (VQ-VAE-2's ImageNet priors): labelled data only
    label_dropout: float = 0.1  # class_conditional: share of each batch trained as "no class" (coding, unlabelled use)
    num_workers: int = 1  # Ray Train workers (DDP); prior.batch_size is split between them (changes the priors)

    def __post_init__(self) -> None:
        for key in ("steps", "batch_size", "channels", "blocks", "res_per_block", "checkpoint_every", "num_workers"):
            check_at_least("prior", key, getattr(self, key), 1)
        for key in ("seed", "attention_rows"):
            check_at_least("prior", key, getattr(self, key), 0)
        check_choice("prior", "positions", self.positions, PRIOR_POSITIONS)
        _positive("prior", "lr", self.lr)
        for key in ("dropout", "label_dropout"):
            _in_unit_interval("prior", key, getattr(self, key))
        _types("prior", self)
        if self.batch_size % self.num_workers:
            raise ValueError(f"prior.batch_size ({self.batch_size}) must be a multiple of prior.num_workers "
                             f"({self.num_workers})")


@dataclass(frozen=True)
class EvaluateConfig:
    batch_size: int = 256
    grid_images: int = 32  # test images in the reconstruction grid
    samples: int = 32  # images drawn from the prior for the sample grid
    temperature: float = 1.0
    seed: int = 0
    rate_distortion_images: int = 256  # test images compressed to files and coded by JPEG / WebP
    prior_coding_images: int = 32  # of those, coded with the PixelSNAIL priors too (sequential: slow)
    synthesis_images: int = 1000  # images a source for the synthesis figures (where a judge is: CIFAR-10)

    def __post_init__(self) -> None:
        for key in ("batch_size", "grid_images", "samples", "rate_distortion_images", "prior_coding_images",
                    "synthesis_images"):
            check_at_least("evaluate", key, getattr(self, key), 1)
        check_at_least("evaluate", "seed", self.seed, 0)
        _positive("evaluate", "temperature", self.temperature)
        _types("evaluate", self)


EXTRACTOR_RANGES = ("minus_one_one", "zero_one", "uint8")  # pixel ranges a plugged feature extractor takes


@dataclass(frozen=True)
class JudgeParams:
    """The sample-quality judge (``judge.py``: a CIFAR-10 classifier; the pipeline trains it where the data is
    CIFAR-10) and the features that measure samples with it. ``judge.JudgeConfig`` and ``JudgeTrainConfig`` take
    their defaults from here."""

    epochs: int = 30  # one-cycle schedule; ~50 min of one CPU core at the default width
    width: int = 24  # channels of its first block (features: 8x this)
    held_out: int = 5000  # CIFAR-10 training images it never sees: the real images samples are compared with
    seed: int = 0
    bf16: bool = True  # bfloat16 autocast in training (fast where the CPU or GPU has it)
    extractor: str | None = None  # other features, e.g. a TorchScript/torch.export FID Inception network: its path
    extractor_size: int | None = None  # the size that extractor takes images at (299 for FID's Inception)
    extractor_range: str = "minus_one_one"  # the pixel range it takes: minus_one_one | zero_one | uint8

    def __post_init__(self) -> None:
        for key in ("epochs", "width", "held_out"):
            check_at_least("judge", key, getattr(self, key), 1)
        check_at_least("judge", "seed", self.seed, 0)
        if self.extractor_size is not None:
            check_at_least("judge", "extractor_size", self.extractor_size, 1)
        check_choice("judge", "extractor_range", self.extractor_range, EXTRACTOR_RANGES)
        _types("judge", self)
