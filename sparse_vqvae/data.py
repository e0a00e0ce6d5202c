"""Image datasets by name. Every item is one image tensor [3, H, W] with pixels in [-1, 1].

- ``embedded`` (default): seeded random crops of real photographs that ship inside the pinned
  scikit-image package, so it works on any fresh machine with no download. Train and test crops
  come from different photographs. Large photographs are downscaled (short side ``short_side``)
  so that a 32x32 crop holds structure rather than a flat patch.
- ``cifar10`` / ``cifar100``: torchvision's datasets from a local ``root`` (never downloaded here).
- ``imagefolder``: any folder of images (class sub-folders as torchvision's ImageFolder), resized
  and centre-cropped to ``image_size``, with a seeded held-out test split.
- ``imagenet``: an ImageNet root read in place, resized and centre-cropped as ``imagefolder``:
  ``train/<synset>/*.JPEG`` is the train split and ``val/<synset>/*.JPEG`` the test split (without
  ``val/`` in that layout, a seeded ``test_fraction`` of train is held out instead).
- ``photos``: a folder of large photographs (any depth), kept at full resolution as tiles of
  ``tile_size``; the last ``test_photos`` by name are the test split, so no test tile shares a
  photograph with training. Training reads them through ``training_images``, which draws a fresh
  random ``image_size`` crop (and flip) inside a tile every epoch, instead of a fixed set of crops.
"""

from __future__ import annotations

import hashlib
import os
import warnings
from pathlib import Path
from typing import Literal

import numpy as np
import torch
from PIL import Image
from torch.utils.data import DataLoader, Dataset, Subset
from tqdm.auto import tqdm

from .atomic import atomic_write
from .config import DataConfig
from .errors import DatasetNotFoundError

Split = Literal["train", "test"]

# Distinct photographs for each split (the two motorcycle views are one scene, so both train).
EMBEDDED_TRAIN = ("astronaut.png", "motorcycle_left.png", "motorcycle_right.png", "hubble_deep_field.jpg",
                  "retina.jpg", "ihc.png")
EMBEDDED_TEST = ("chelsea.png", "coffee.png", "rocket.jpg")


def load_dataset(config: DataConfig, split: Split) -> Dataset:
    """The named dataset's ``split``: a Dataset of [3, H, W] tensors in [-1, 1]."""
    if split not in ("train", "test"):
        raise ValueError(f"split must be 'train' or 'test', got {split!r}")
    if config.name == "embedded":
        return EmbeddedCrops(config, split)
    if config.name in ("cifar10", "cifar100"):
        return _cifar(config, split)
    if config.name == "photos":
        return PhotoTiles(config, split)
    if config.name == "imagenet":
        return _imagenet(config, split)
    return _image_folder(config, split)


def to_model_range(image: np.ndarray) -> torch.Tensor:
    """uint8 [H, W, 3] -> float [3, H, W] in [-1, 1]."""
    return torch.from_numpy(np.ascontiguousarray(image)).permute(2, 0, 1).float() / 127.5 - 1.0


def to_uint8(images: torch.Tensor) -> np.ndarray:
    """float [B, 3, H, W] in [-1, 1] -> uint8 [B, H, W, 3] (the inverse of ``to_model_range``)."""
    pixels = ((images.clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)
    return pixels.permute(0, 2, 3, 1).cpu().numpy()


# A batch of uint8 pixels in flight while preparing (each worker prefetches two): a few of them in memory,
# whatever the dataset's size.
PREPARE_BATCH_BYTES = 16 * 2**20


def default_workers() -> int:
    """Processes that decode images for ``save_image_array``: up to 4, no more than this process's CPUs."""
    try:
        cpus = len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        cpus = os.cpu_count() or 1
    return min(4, cpus)


class Uint8Images(Dataset):
    """A dataset's images as uint8 [H, W, 3] arrays: converted where they are decoded (in a worker), so a
    batch crosses to the writer at a quarter of the float size."""

    def __init__(self, dataset: Dataset) -> None:
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: int) -> np.ndarray:
        return np.ascontiguousarray(to_uint8(self.dataset[index].unsqueeze(0))[0])  # so a stack of them is too


def save_image_array(dataset: Dataset, path: str | Path, progress: bool = True, workers: int | None = None,
                     batch_size: int | None = None) -> dict:
    """Materialise a dataset as one uint8 array [N, H, W, 3] in a .npy file, written atomically.

    Later stages read this file instead of the original dataset: decoding 50,000 JPEGs once, not
    every epoch, and a content hash that says exactly which images a model saw. The images stream:
    ``workers`` processes (default: ``default_workers()``) decode batches, which are appended in order to
    the file and to the hash, so memory holds a few batches (``batch_size`` images, default about
    ``PREPARE_BATCH_BYTES``), not the dataset. The file and the hash are those of ``np.save`` of the whole
    array and of its bytes, whatever ``workers`` and ``batch_size``.
    """
    path = Path(path)
    workers = default_workers() if workers is None else workers
    if workers < 0 or (batch_size is not None and batch_size < 1):
        raise ValueError(f"workers must be >= 0 and batch_size >= 1; got {workers} and {batch_size}")
    count = len(dataset)
    if count == 0:
        raise ValueError(f"the dataset for {path} is empty")
    images = Uint8Images(dataset)
    first = images[0]
    height, width, _ = first.shape
    if batch_size is None:
        batch_size = max(1, min(512, PREPARE_BATCH_BYTES // first.nbytes))
    batches = -(-count // batch_size)
    loader = DataLoader(images, batch_size=batch_size, num_workers=min(workers, batches), collate_fn=np.stack)
    header = {"descr": np.lib.format.dtype_to_descr(first.dtype), "fortran_order": False,
              "shape": (count, height, width, 3)}
    digest = hashlib.sha256()
    written = 0
    with atomic_write(path) as handle, tqdm(total=count, unit="image", desc=f"prepare {path.stem}",
                                            disable=not progress) as bar:
        np.lib.format.write_array_header_1_0(handle, header)  # np.save's header: the shape is known up front
        for batch in loader:
            if batch.shape[1:] != first.shape:
                raise ValueError(f"image {written} of the dataset for {path} is {batch.shape[2]}x{batch.shape[1]}, "
                                 f"the first {width}x{height}: every image must have one size")
            handle.write(batch)
            digest.update(batch)
            written += len(batch)
            bar.update(len(batch))
        if written != count:
            raise ValueError(f"the dataset for {path} has length {count} but gave {written} images")
    return {"count": count, "height": height, "width": width, "sha256": digest.hexdigest()}


class ImageArray(Dataset):
    """The images of a file written by ``save_image_array``, memory-mapped."""

    def __init__(self, path: str | Path) -> None:
        path = Path(path)
        if not path.is_file():
            raise DatasetNotFoundError(f"no prepared images at {path}: run the prepare_data stage first")
        try:
            self.images = np.load(path, mmap_mode="r", allow_pickle=False)
        except (ValueError, OSError, EOFError) as error:
            raise DatasetNotFoundError(f"{path} is not a readable image array (truncated or corrupt?): {error}") from error
        if self.images.dtype != np.uint8 or self.images.ndim != 4 or self.images.shape[3] != 3:
            raise DatasetNotFoundError(f"{path} holds {self.images.dtype} {list(self.images.shape)}, "
                                       "not uint8 images [N, H, W, 3]")

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, index: int) -> torch.Tensor:
        return to_model_range(np.array(self.images[index]))  # a copy: the memory map is read-only


class RandomCrops(Dataset):
    """Random ``size`` crops of larger images, flipped left-right half of the time: a fresh crop of
    each image every epoch, drawn from (seed, epoch, index), so a resumed run sees the same crops."""

    def __init__(self, images: Dataset, size: int, seed: int) -> None:
        self.images, self.size, self.seed, self.epoch = images, size, seed, 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, index: int) -> torch.Tensor:
        image = self.images[index]
        rng = np.random.default_rng([self.seed, self.epoch, index])
        top = int(rng.integers(0, image.shape[1] - self.size + 1))
        left = int(rng.integers(0, image.shape[2] - self.size + 1))
        crop = image[:, top : top + self.size, left : left + self.size]
        return crop.flip(2) if rng.random() < 0.5 else crop


def set_epoch(dataset: Dataset, epoch: int) -> None:
    """Tell a dataset that draws per epoch (``RandomCrops``) which epoch it is; others ignore it."""
    if isinstance(dataset, RandomCrops):
        dataset.set_epoch(epoch)


def training_images(path: str | Path, config: DataConfig) -> Dataset:
    """The prepared training split as training reads it: random ``image_size`` crops when its images
    are larger (the tiles of ``photos``), else the images themselves."""
    images = ImageArray(path)
    if images.images.shape[1] > config.image_size or images.images.shape[2] > config.image_size:
        return RandomCrops(images, config.image_size, config.seed)
    return images


IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp", ".ppm")


def photo_files(root: Path) -> list[Path]:
    """The photographs under ``root`` (any depth), sorted by their path inside it."""
    return sorted((p for p in root.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file()),
                  key=lambda p: p.relative_to(root).as_posix())


class PhotoTiles(Dataset):
    """The non-overlapping ``tile_size`` tiles of a split's photographs (train: all but the last
    ``test_photos`` by name; test: those). Photographs smaller than a tile are left out."""

    def __init__(self, config: DataConfig, split: Split) -> None:
        root = _require_root(config, "a folder of photographs, e.g. ../shared/data/photos")
        files = photo_files(root)
        if len(files) <= config.test_photos:
            raise DatasetNotFoundError(f"photos: {len(files)} photographs under {root}; data.test_photos "
                                       f"({config.test_photos}) holds out that many and training needs at least one more")
        self.files = files[-config.test_photos :] if split == "test" else files[: -config.test_photos]
        size = config.tile_size
        self.tiles: list[tuple[int, int, int]] = []  # (file, top, left)
        for number, path in enumerate(self.files):
            with Image.open(path) as image:
                width, height = image.size
            self.tiles += [(number, top, left) for top in range(0, height - size + 1, size)
                           for left in range(0, width - size + 1, size)]
        if not self.tiles:
            raise DatasetNotFoundError(f"photos: no {split} photograph under {root} is at least "
                                       f"{size}x{size} (data.tile_size)")
        self.size = size
        self._cached: tuple[int, np.ndarray] | None = None  # tiles come in file order: one decode a photograph

    def __len__(self) -> int:
        return len(self.tiles)

    def __getitem__(self, index: int) -> torch.Tensor:
        number, top, left = self.tiles[index]
        if self._cached is None or self._cached[0] != number:
            with Image.open(self.files[number]) as image:
                self._cached = (number, np.asarray(image.convert("RGB")))
        return to_model_range(self._cached[1][top : top + self.size, left : left + self.size])


def embedded_photo_dir() -> Path:
    import skimage.data

    return Path(skimage.data.__file__).parent


class EmbeddedCrops(Dataset):
    """``count`` seeded random crops of the split's photographs, equally many from each."""

    def __init__(self, config: DataConfig, split: Split) -> None:
        self.sources = EMBEDDED_TRAIN if split == "train" else EMBEDDED_TEST
        count = config.train_count if split == "train" else config.test_count
        photos = [downscaled_photo(embedded_photo_dir() / name, config.short_side) for name in self.sources]
        smallest = min(min(photo.shape[:2]) for photo in photos)
        if config.image_size > smallest:
            raise ValueError(f"data.image_size ({config.image_size}) is larger than the smallest embedded photograph "
                             f"({smallest} px on its short side)")
        rng = np.random.default_rng([config.seed, 0 if split == "train" else 1])
        size = config.image_size
        crops = np.empty((count, size, size, 3), dtype=np.uint8)
        self.source_of = np.arange(count) % len(photos)
        for i, source in enumerate(self.source_of):
            photo = photos[source]
            top = rng.integers(0, photo.shape[0] - size + 1)
            left = rng.integers(0, photo.shape[1] - size + 1)
            crops[i] = photo[top : top + size, left : left + size]
        self.crops = crops

    def __len__(self) -> int:
        return len(self.crops)

    def __getitem__(self, index: int) -> torch.Tensor:
        return to_model_range(self.crops[index])


def downscaled_photo(path: Path, short_side: int) -> np.ndarray:
    if not path.is_file():
        raise DatasetNotFoundError(
            f"embedded photograph {path.name} not found in {path.parent}: reinstall scikit-image "
            "(pinned in pyproject.toml), which ships it"
        )
    image = Image.open(path).convert("RGB")
    scale = short_side / min(image.size)
    if scale < 1:
        image = image.resize((round(image.width * scale), round(image.height * scale)), Image.Resampling.LANCZOS)
    return np.asarray(image)


class _ImagesOnly(Dataset):
    """Drops the labels of a torchvision dataset and maps its images to [-1, 1]."""

    def __init__(self, dataset: Dataset, image_size: int) -> None:
        self.dataset, self.image_size = dataset, image_size

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: int) -> torch.Tensor:
        image = self.dataset[index][0].convert("RGB")
        if image.size != (self.image_size, self.image_size):
            scale = self.image_size / min(image.size)
            image = image.resize((max(self.image_size, round(image.width * scale)),
                                  max(self.image_size, round(image.height * scale))), Image.Resampling.BICUBIC)
            left = (image.width - self.image_size) // 2
            top = (image.height - self.image_size) // 2
            image = image.crop((left, top, left + self.image_size, top + self.image_size))
        return to_model_range(np.array(image))


def dataset_labels(dataset: Dataset) -> tuple[np.ndarray, tuple[str, ...]] | None:
    """Each image's class label (int64, in the dataset's order) and the class names, for a dataset
    ``load_dataset`` made from a source with classes (CIFAR, an image folder, ImageNet); None for the others.
    Read from the source's file list or label array: no image is decoded."""
    indices = None
    if isinstance(dataset, Subset):
        dataset, indices = dataset.dataset, np.asarray(dataset.indices, dtype=np.int64)
    if not isinstance(dataset, _ImagesOnly):
        return None
    source = dataset.dataset
    targets = np.asarray(source.targets, dtype=np.int64)
    return (targets if indices is None else targets[indices]), tuple(source.classes)


def _require_root(config: DataConfig, how: str) -> Path:
    if not config.root:
        raise DatasetNotFoundError(f"data.root is not set: {config.name} needs a local folder ({how})")
    root = Path(config.root).expanduser().resolve()
    if not root.is_dir():
        raise DatasetNotFoundError(f"{config.name} not found: looked in {root}, which is not a folder ({how})")
    return root


def _cifar(config: DataConfig, split: Split) -> Dataset:
    from torchvision.datasets import CIFAR10, CIFAR100

    folder = "cifar-10-batches-py" if config.name == "cifar10" else "cifar-100-python"
    how = f"put the python version of {config.name.upper()} there, extracted as {folder}/"
    root = _require_root(config, how)
    cls = CIFAR10 if config.name == "cifar10" else CIFAR100
    try:
        dataset = cls(str(root), train=split == "train", download=False)
    except RuntimeError as error:
        raise DatasetNotFoundError(f"{config.name} not found: looked in {root / folder} ({how})") from error
    return _ImagesOnly(dataset, config.image_size)


def _image_folder(config: DataConfig, split: Split) -> Dataset:
    how = "a folder with one sub-folder of images per class, e.g. ../shared/data/cifar10-jpeg/train"
    root = _require_root(config, how)
    return _held_out(_class_folders(root, f"imagefolder: no images found under {root} ({how})"), config, split)


def _imagenet(config: DataConfig, split: Split) -> Dataset:
    how = ("ImageNet's ImageFolder layout: <root>/train/<synset>/*.JPEG, and <root>/val/<synset>/*.JPEG for the "
           "test split (else data.test_fraction of train is held out)")
    root = _require_root(config, how)
    train, val = root / "train", root / "val"
    if not train.is_dir():
        raise DatasetNotFoundError(f"imagenet: no train/ folder in {root} ({how})")
    if _holds_class_folders(val):
        folder = train if split == "train" else val
        return _ImagesOnly(_class_folders(folder, f"imagenet: no images found under {folder} ({how})"),
                           config.image_size)
    if val.exists():
        warnings.warn(f"imagenet: {val} holds no <synset>/ folders of images (the flat ILSVRC validation layout?): "
                      f"the test split is data.test_fraction ({config.test_fraction}) of {train} instead", stacklevel=2)
    return _held_out(_class_folders(train, f"imagenet: no images found under {train} ({how})"), config, split)


def _holds_class_folders(folder: Path) -> bool:
    """Whether ``folder`` has a sub-folder with an image in it (ImageFolder's layout); it stops at the first."""
    return folder.is_dir() and any(sub.is_dir() and any(file.suffix.lower() in IMAGE_SUFFIXES for file in sub.iterdir())
                                   for sub in folder.iterdir())


def _class_folders(folder: Path, missing: str) -> Dataset:
    """torchvision's ImageFolder over ``folder``: a list of files, each decoded when it is read."""
    from torchvision.datasets import ImageFolder

    try:
        return ImageFolder(str(folder))
    except FileNotFoundError as error:
        raise DatasetNotFoundError(f"{missing}: {error}") from error


def _held_out(dataset: Dataset, config: DataConfig, split: Split) -> Dataset:
    """The split of one folder of images: the first ``test_fraction`` of a seeded permutation is the test split."""
    order = np.random.default_rng(config.seed).permutation(len(dataset))
    held_out = max(1, round(len(dataset) * config.test_fraction))
    indices = order[:held_out] if split == "test" else order[held_out:]
    return Subset(_ImagesOnly(dataset, config.image_size), np.sort(indices).tolist())
