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


@pytest.mark.parametrize("name", ["cifar10", "cifar100", "imagefolder", "imagenet"])
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
    [(dict(name="mnist"), "data.name must be one of embedded, cifar10, cifar100, imagefolder, photos, imagenet"),
     (dict(image_size=0), "data.image_size must be an integer >= 1"),
     (dict(test_fraction=1.5), "data.test_fraction")],
)
def test_bad_data_config_names_the_key(overrides, message):
    with pytest.raises(ValueError, match=message):
        DataConfig(**overrides)


def test_crops_larger_than_the_smallest_photograph_are_refused():
    with pytest.raises(ValueError, match="smallest embedded photograph"):
        load_dataset(DataConfig(image_size=320, short_side=512, train_count=4, test_count=4), "test")


def write_photos(folder, sizes):
    """Photographs named 00.png, 01.png ... of the given (width, height), each a different flat colour plus noise."""
    from PIL import Image
    import numpy as np

    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    for number, (width, height) in enumerate(sizes):
        pixels = rng.integers(0, 256, (height, width, 3), dtype=np.uint8)
        Image.fromarray(pixels).save(folder / f"{number:02d}.png")


def test_photos_are_tiled_and_the_last_ones_by_name_are_held_out(tmp_path):
    from sparse_vqvae.data import PhotoTiles

    write_photos(tmp_path / "a", [(70, 40), (64, 64)])
    write_photos(tmp_path / "b", [(40, 40), (90, 33)])  # b/01.png sorts last
    config = DataConfig(name="photos", root=str(tmp_path), image_size=16, tile_size=32, test_photos=1)
    train, test = load_dataset(config, "train"), load_dataset(config, "test")
    assert isinstance(train, PhotoTiles)
    assert [p.relative_to(tmp_path).as_posix() for p in test.files] == ["b/01.png"]
    assert len(train) == 2 + 4 + 1 and len(test) == 2  # 70x40 -> 2 tiles, 64x64 -> 4, 40x40 -> 1, 90x33 -> 2
    assert train[0].shape == (3, 32, 32) and -1 <= float(train[0].min()) and float(train[0].max()) <= 1
    from PIL import Image
    import numpy as np

    second_tile = np.asarray(Image.open(tmp_path / "a/00.png"))[0:32, 32:64]
    assert torch.equal(train[1], torch.from_numpy(second_tile).permute(2, 0, 1).float() / 127.5 - 1)


def test_photos_say_what_is_missing(tmp_path):
    write_photos(tmp_path, [(40, 40)])
    with pytest.raises(DatasetNotFoundError, match="1 photographs under .*data.test_photos \\(1\\)"):
        load_dataset(DataConfig(name="photos", root=str(tmp_path), image_size=16, tile_size=32, test_photos=1), "train")
    with pytest.raises(DatasetNotFoundError, match="data.root is not set"):
        load_dataset(DataConfig(name="photos", image_size=16, tile_size=32), "train")
    with pytest.raises(ValueError, match="data.image_size \\(64\\) must not exceed data.tile_size \\(32\\)"):
        DataConfig(name="photos", root=str(tmp_path), image_size=64, tile_size=32)


def test_training_draws_a_fresh_random_crop_of_each_tile_every_epoch(tmp_path):
    from sparse_vqvae.data import ImageArray, RandomCrops, save_image_array, set_epoch, training_images

    write_photos(tmp_path / "photos", [(64, 64), (64, 64)])
    config = DataConfig(name="photos", root=str(tmp_path / "photos"), image_size=8, tile_size=32, test_photos=1)
    save_image_array(load_dataset(config, "train"), tmp_path / "train.npy", progress=False)
    crops = training_images(tmp_path / "train.npy", config)
    assert isinstance(crops, RandomCrops) and len(crops) == 4
    first = [crops[i] for i in range(4)]
    assert all(crop.shape == (3, 8, 8) for crop in first)
    assert all(torch.equal(a, b) for a, b in zip(first, [crops[i] for i in range(4)]))  # same epoch, same crops
    set_epoch(crops, 1)
    assert not all(torch.equal(a, crops[i]) for i, a in enumerate(first))  # another epoch, other crops
    set_epoch(crops, 0)
    assert all(torch.equal(a, crops[i]) for i, a in enumerate(first))  # (seed, epoch, index) fixes the crop
    tile = ImageArray(tmp_path / "train.npy")[2]
    windows = tile.unfold(1, 8, 1).unfold(2, 8, 1)  # [3, 25, 25, 8, 8]: every 8x8 window of the tile
    crop = crops[2]
    assert any(torch.equal(windows[:, y, x], c) for y in range(25) for x in range(25) for c in (crop, crop.flip(2)))
    small = DataConfig(name="photos", root=str(tmp_path / "photos"), image_size=32, tile_size=32, test_photos=1)
    assert isinstance(training_images(tmp_path / "train.npy", small), ImageArray)  # nothing to crop
