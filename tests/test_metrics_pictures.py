import numpy as np
import pytest
import torch
from PIL import Image
from skimage.metrics import structural_similarity

from sparse_vqvae.atomic import atomic_write, write_json
from sparse_vqvae.data import DatasetNotFoundError, ImageArray, save_image_array, to_uint8
from sparse_vqvae.metrics import atom_usage, ssim
from sparse_vqvae.pictures import dictionary_image, line_plot, save_grid

from .tiny import Images, tiny_images


def test_ssim_matches_scikit_image():
    images = tiny_images(3, 32, seed=0)
    noisy = (images + 0.2 * torch.randn_like(images)).clamp(-1, 1)
    ours = ssim(images, noisy)
    for i in range(3):
        a = ((images[i] + 1) * 127.5).permute(1, 2, 0).double().numpy()
        b = ((noisy[i] + 1) * 127.5).permute(1, 2, 0).double().numpy()
        reference = structural_similarity(a, b, data_range=255, channel_axis=2, gaussian_weights=True, sigma=1.5,
                                          use_sample_covariance=False)
        assert ours[i].item() == pytest.approx(reference, abs=1e-6)
    assert torch.allclose(ssim(images, images), torch.ones(3, dtype=torch.float64))


def test_atom_usage_counts_present_atoms_only():
    atoms = torch.tensor([[0, 1], [0, -1], [2, -1]])
    usage = atom_usage(atoms, num_atoms=4)
    assert usage["used_share"] == 0.75
    p = torch.tensor([0.5, 0.25, 0.25], dtype=torch.float64)
    assert usage["perplexity"] == pytest.approx(float(torch.exp(-(p * p.log()).sum())))


def test_image_array_round_trips_uint8_pixels(tmp_path):
    images = to_uint8(tiny_images(5, 16)).copy()
    data = Images(torch.from_numpy(images).permute(0, 3, 1, 2).float() / 127.5 - 1)
    summary = save_image_array(data, tmp_path / "x.npy", progress=False)
    assert summary["count"] == 5 and summary["height"] == 16 and len(summary["sha256"]) == 64
    loaded = ImageArray(tmp_path / "x.npy")
    assert np.array_equal(to_uint8(torch.stack([loaded[i] for i in range(5)])), images)


def test_image_array_says_what_is_wrong(tmp_path):
    with pytest.raises(DatasetNotFoundError, match="run the prepare_data stage first"):
        ImageArray(tmp_path / "missing.npy")
    save_image_array(Images(tiny_images(4, 16)), tmp_path / "x.npy", progress=False)
    data = (tmp_path / "x.npy").read_bytes()
    (tmp_path / "cut.npy").write_bytes(data[: len(data) // 2])
    with pytest.raises(DatasetNotFoundError, match="truncated or corrupt"):
        ImageArray(tmp_path / "cut.npy")
    np.save(tmp_path / "floats.npy", np.zeros((2, 4, 4, 3)))
    with pytest.raises(DatasetNotFoundError, match="not uint8 images"):
        ImageArray(tmp_path / "floats.npy")


def test_pictures_are_pngs_of_the_expected_size(tmp_path):
    path = save_grid(tiny_images(10, 16), tmp_path / "grid.png", columns=4, scale=2)
    with Image.open(path) as picture:
        assert picture.size == (2 * (4 * 18 + 2), 2 * (3 * 18 + 2))
    with Image.open(dictionary_image(torch.randn(8, 32), tmp_path / "atoms.png", scale=1)) as picture:
        assert picture.size == (6 * 4 + 1, 6 * 4 + 1)  # 32 atoms of 3x3 tiles, 6 per row
    curve = line_plot({"a": ([1, 2, 3], [3.0, 2.0, 1.0])}, tmp_path / "curve.png", "step", "loss")
    assert curve.read_bytes()[:4] == b"\x89PNG"


def test_atomic_write_leaves_the_old_file_when_interrupted(tmp_path):
    path = write_json(tmp_path / "m.json", {"a": 1})
    with pytest.raises(RuntimeError):
        with atomic_write(path, "w") as handle:
            handle.write("{partial")
            raise RuntimeError("killed")
    assert path.read_text().startswith("{\n  \"a\": 1")
    assert [p.name for p in tmp_path.iterdir()] == ["m.json"]
