import pytest
import torch

from sparse_vqvae.config import DataConfig
from sparse_vqvae.data import EMBEDDED_TEST, EMBEDDED_TRAIN, DatasetNotFoundError, load_dataset


def test_embedded_train_and_test_come_from_different_photographs():
    assert not set(EMBEDDED_TRAIN) & set(EMBEDDED_TEST)
    config = DataConfig(train_count=64, test_count=16)
    train, test = load_dataset(config, "train"), load_dataset(config, "test")
    assert set(train.sources) == set(EMBEDDED_TRAIN) and set(test.sources) == set(EMBEDDED_TEST)
    train_crops = {bytes(c) for c in train.crops}
    assert not any(bytes(c) in train_crops for c in test.crops)


def test_embedded_crops_are_seeded_sized_and_in_range():
    a = load_dataset(DataConfig(train_count=32, image_size=48, seed=3), "train")
    b = load_dataset(DataConfig(train_count=32, image_size=48, seed=3), "train")
    c = load_dataset(DataConfig(train_count=32, image_size=48, seed=4), "train")
    assert len(a) == 32 and a[0].shape == (3, 48, 48)
    assert torch.equal(a[5], b[5]) and not torch.equal(a[5], c[5])
    images = torch.stack([a[i] for i in range(len(a))])
    assert images.min() >= -1 and images.max() <= 1 and images.std() > 0.1


@pytest.mark.parametrize("name", ["cifar10", "cifar100", "imagefolder"])
def test_missing_dataset_says_where_it_looked(name, tmp_path):
    with pytest.raises(DatasetNotFoundError, match="data.root is not set"):
        load_dataset(DataConfig(name=name), "train")
    with pytest.raises(DatasetNotFoundError, match=str(tmp_path / "nowhere")):
        load_dataset(DataConfig(name=name, root=str(tmp_path / "nowhere")), "train")
    (tmp_path / "empty").mkdir()
    with pytest.raises(DatasetNotFoundError, match=str(tmp_path / "empty")):
        load_dataset(DataConfig(name=name, root=str(tmp_path / "empty")), "train")


def test_imagefolder_split_is_seeded_and_disjoint(tmp_path):
    from PIL import Image

    for label in ("a", "b"):
        (tmp_path / label).mkdir()
        for i in range(10):
            Image.new("RGB", (40, 30), (i * 20, 0, 100)).save(tmp_path / label / f"{i}.png")
    config = DataConfig(name="imagefolder", root=str(tmp_path), image_size=16, test_fraction=0.2)
    train, test = load_dataset(config, "train"), load_dataset(config, "test")
    assert len(train) == 16 and len(test) == 4
    assert not set(train.indices) & set(test.indices)
    assert train[0].shape == (3, 16, 16)


@pytest.mark.parametrize(
    "overrides, message",
    [(dict(name="mnist"), "data.name must be one of embedded, cifar10, cifar100, imagefolder"),
     (dict(image_size=0), "data.image_size must be an integer >= 1"),
     (dict(test_fraction=1.5), "data.test_fraction")],
)
def test_bad_data_config_names_the_key(overrides, message):
    with pytest.raises(ValueError, match=message):
        DataConfig(**overrides)


def test_crops_larger_than_the_smallest_photograph_are_refused():
    with pytest.raises(ValueError, match="smallest embedded photograph"):
        load_dataset(DataConfig(image_size=320, short_side=512, train_count=4, test_count=4), "test")
