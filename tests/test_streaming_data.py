"""Preparing a dataset streams: the .npy file and its hash are np.save's and the old formula's, for any number of
decoding workers, in memory that does not grow with the dataset; ImageNet's layout is read in place."""

from __future__ import annotations

import hashlib
import io
import stat
import tracemalloc
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torch.utils.data import Dataset

from sparse_vqvae.atomic import file_mode
from sparse_vqvae.config import DataConfig
from sparse_vqvae.data import (DatasetNotFoundError, ImageArray, dataset_labels, load_dataset, save_image_array,
                               to_uint8)
from sparse_vqvae.pretrain import collect_latents
from sparse_vqvae.vqvae import VQVAE2
from tasks.params import DataSettings, data_settings

from .tiny import tiny_config


class RandomImages(Dataset):
    """``count`` images drawn from their index alone (nothing held), with values beyond [-1, 1] to clamp.
    ``reads`` counts the images read (in this process)."""

    def __init__(self, count: int, height: int = 6, width: int = 10, odd_from: int | None = None) -> None:
        self.count, self.height, self.width, self.odd_from, self.reads = count, height, width, odd_from, 0

    def __len__(self) -> int:
        return self.count

    def __getitem__(self, index: int) -> torch.Tensor:
        self.reads += 1
        width = self.width + 2 if self.odd_from is not None and index >= self.odd_from else self.width
        return torch.rand(3, self.height, width, generator=torch.Generator().manual_seed(index)) * 2.2 - 1.1


def np_save_bytes(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    np.save(buffer, array)
    return buffer.getvalue()


@pytest.mark.parametrize("workers", [0, 2])
def test_the_streamed_file_is_np_save_of_the_whole_array_for_any_workers(tmp_path, workers):
    dataset = RandomImages(37)
    whole = to_uint8(torch.stack([dataset[i] for i in range(len(dataset))]))  # what the old code concatenated
    summary = save_image_array(dataset, tmp_path / "images.npy", progress=False, workers=workers, batch_size=5)
    assert (tmp_path / "images.npy").read_bytes() == np_save_bytes(whole)
    assert summary == {"count": 37, "height": 6, "width": 10, "sha256": hashlib.sha256(whole.tobytes()).hexdigest()}
    assert stat.S_IMODE((tmp_path / "images.npy").stat().st_mode) == file_mode()
    assert [p.name for p in tmp_path.iterdir()] == ["images.npy"]  # no temporary file left
    last = torch.from_numpy(whole[36]).permute(2, 0, 1) / 127.5 - 1
    assert torch.equal(ImageArray(tmp_path / "images.npy")[36], last)


def test_the_default_batches_and_workers_write_the_same_bytes(tmp_path):
    dataset = RandomImages(40, 8, 8)
    save_image_array(dataset, tmp_path / "default.npy", progress=False)
    save_image_array(dataset, tmp_path / "one_by_one.npy", progress=False, workers=0, batch_size=1)
    assert (tmp_path / "default.npy").read_bytes() == (tmp_path / "one_by_one.npy").read_bytes()


def test_an_empty_or_uneven_dataset_is_refused_and_leaves_no_file(tmp_path):
    with pytest.raises(ValueError, match="the dataset for .*empty.npy is empty"):
        save_image_array(RandomImages(0), tmp_path / "empty.npy", progress=False)
    with pytest.raises(ValueError, match="image 8 of the dataset for .* is 12x6, the first 10x6"):
        save_image_array(RandomImages(12, odd_from=8), tmp_path / "uneven.npy", progress=False, workers=0, batch_size=4)
    assert list(tmp_path.iterdir()) == []


def prepare_peak(count: int, path) -> int:
    """Peak traced bytes while preparing ``count`` 32x32 images in batches of 16. numpy's allocations are
    traced (the batches, and any array that gathers them); torch's are not."""
    tracemalloc.start()
    try:
        save_image_array(RandomImages(count, 32, 32), path, progress=False, workers=0, batch_size=16)
        return tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


def test_preparing_ten_times_the_images_does_not_raise_the_peak_memory(tmp_path):
    prepare_peak(16, tmp_path / "warm.npy")  # imports and first-call caches
    batch_bytes = 16 * 32 * 32 * 3
    small, large = prepare_peak(64, tmp_path / "small.npy"), prepare_peak(640, tmp_path / "large.npy")
    assert large < small + batch_bytes, f"peak {small} bytes for 64 images, {large} for 640"


def write_jpegs(folder, count: int, colour: tuple[int, int, int], size=(20, 14)) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for number in range(count):
        Image.new("RGB", size, colour).save(folder / f"{folder.name}_{number}.JPEG")


def imagenet(root, **overrides) -> DataConfig:
    return DataConfig(name="imagenet", root=str(root), image_size=8, **overrides)


def test_imagenet_reads_train_and_val_in_place(tmp_path):
    for synset in ("n01440764", "n01443537"):
        write_jpegs(tmp_path / "train" / synset, 3, (250, 0, 0))
        write_jpegs(tmp_path / "val" / synset, 2, (0, 0, 250))
    train, test = load_dataset(imagenet(tmp_path), "train"), load_dataset(imagenet(tmp_path), "test")
    assert len(train) == 6 and len(test) == 4
    assert train[5].shape == test[3].shape == (3, 8, 8)
    assert float(train[0][0].mean()) > 0.9 > float(train[0][2].mean())  # red: train/
    assert float(test[0][2].mean()) > 0.9 > float(test[0][0].mean())  # blue: val/
    save_image_array(test, tmp_path / "test.npy", progress=False, workers=2)
    assert ImageArray(tmp_path / "test.npy").images.shape == (4, 8, 8, 3)


def test_imagenet_without_val_holds_out_train_as_imagefolder_does(tmp_path):
    for synset in ("n01440764", "n01443537"):
        write_jpegs(tmp_path / "train" / synset, 10, (120, 40, 200))
    config = imagenet(tmp_path, test_fraction=0.2, seed=3)
    train, test = load_dataset(config, "train"), load_dataset(config, "test")
    assert len(train) == 16 and len(test) == 4 and not set(train.indices) & set(test.indices)
    folder = DataConfig(name="imagefolder", root=str(tmp_path / "train"), image_size=8, test_fraction=0.2, seed=3)
    assert test.indices == load_dataset(folder, "test").indices
    (tmp_path / "val").mkdir()  # ILSVRC's own val/ is flat: no synset folders, so not a test split
    for number in range(3):
        Image.new("RGB", (20, 14)).save(tmp_path / "val" / f"ILSVRC2012_val_{number:08d}.JPEG")
    with pytest.warns(UserWarning, match="holds no <synset>/ folders of images"):
        assert load_dataset(config, "test").indices == test.indices


def test_a_missing_imagenet_says_where_it_looked_and_what_layout_it_expects(tmp_path):
    with pytest.raises(DatasetNotFoundError, match=f"no train/ folder in {tmp_path}.*<root>/train/<synset>/\\*.JPEG"):
        load_dataset(imagenet(tmp_path), "train")
    (tmp_path / "train").mkdir()
    with pytest.raises(DatasetNotFoundError, match=f"no images found under {tmp_path / 'train'}"):
        load_dataset(imagenet(tmp_path), "test")


def test_the_decoding_workers_are_a_setting():
    assert data_settings({}) == DataSettings() and DataSettings().workers is None
    assert data_settings({"SPARSE_VQVAE_DATA_WORKERS": "2"}).workers == 2
    with pytest.raises(ValueError, match="\\$SPARSE_VQVAE_DATA_WORKERS: data.workers must be an integer >= 0"):
        data_settings({"SPARSE_VQVAE_DATA_WORKERS": "-1"})


def test_collect_latents_reads_the_images_it_needs_not_the_dataset():
    model = VQVAE2(tiny_config("omp"))
    dataset = RandomImages(5000, 16, 16)
    top, bottom = collect_latents(model, dataset, count=40, batch_size=8)  # top map: 4 positions an image
    assert top.shape == bottom.shape == (40, 8)
    assert dataset.reads == 16  # 10 images give the top map its 40 vectors: two batches of 8


def test_labels_come_from_the_file_lists_of_sources_with_classes(tmp_path):
    """Class-conditional priors train on each image's class: an image folder's (and ImageNet's, CIFAR's) labels in
    the split's order, read without decoding an image; sources without classes have none."""
    root = tmp_path / "folder"
    for name, count in (("cat", 3), ("dog", 5)):
        (root / name).mkdir(parents=True)
        for i in range(count):
            Image.new("RGB", (8, 8), (40 * i, 0, 0)).save(root / name / f"{i}.png")
    config = DataConfig(name="imagefolder", root=str(root), image_size=8, test_fraction=0.25)
    for split in ("train", "test"):
        dataset = load_dataset(config, split)
        labels, classes = dataset_labels(dataset)
        assert classes == ("cat", "dog") and len(labels) == len(dataset)
        files = [Path(dataset.dataset.dataset.samples[i][0]).parent.name for i in dataset.indices]
        assert [classes[label] for label in labels] == files
    assert dataset_labels(load_dataset(DataConfig(train_count=4, test_count=2), "train")) is None
