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


def png_pixels(path) -> np.ndarray:
    with Image.open(path) as picture:
        assert picture.format == "PNG"
        return np.asarray(picture.convert("RGB"))


def test_a_grid_holds_each_image_in_its_cell_on_white(tmp_path):
    images = tiny_images(10, 16)
    pixels = png_pixels(save_grid(images, tmp_path / "grid.png", columns=4, scale=2))
    assert pixels.shape == (2 * (3 * 18 + 2), 2 * (4 * 18 + 2), 3)  # 3 rows of 4 cells, 2-pixel padding, twice
    grid = pixels[::2, ::2]
    assert np.array_equal(pixels, grid.repeat(2, axis=0).repeat(2, axis=1))  # nearest-neighbour upscaling
    expected, padding = to_uint8(images), np.ones(grid.shape[:2], dtype=bool)
    for i in range(12):  # row-major; the last two cells empty
        top, left = 2 + (i // 4) * 18, 2 + (i % 4) * 18
        cell = grid[top : top + 16, left : left + 16]
        assert np.array_equal(cell, expected[i]) if i < 10 else (cell == 255).all(), i
        padding[top : top + 16, left : left + 16] = False
    assert (grid[padding] == 255).all()


def test_the_dictionary_picture_shows_each_atom_red_positive_blue_negative_scaled_to_its_range(tmp_path):
    atoms = torch.zeros(8, 4)  # 8 values an atom: 3x3 tiles, the ninth pixel padding
    atoms[:, 0], atoms[:, 1], atoms[:, 2] = 2.0, -0.5, torch.arange(8.0) - 4  # atom 3 all zero
    pixels = png_pixels(dictionary_image(atoms, tmp_path / "atoms.png", scale=1))
    assert pixels.shape == (2 * 4 + 1, 2 * 4 + 1, 3)  # 2 tiles a row, 1-pixel padding
    values = (atoms / atoms.abs().amax(dim=0).clamp_min(1e-12)).t().numpy()  # each atom in [-1, 1]
    for atom in range(4):
        top, left = 1 + (atom // 2) * 4, 1 + (atom % 2) * 4
        tile = pixels[top : top + 3, left : left + 3].reshape(9, 3).astype(int)
        red, blue = np.round(np.clip(values[atom], 0, None) * 255), np.round(np.clip(-values[atom], 0, None) * 255)
        assert np.array_equal(tile[:8], np.stack([red, np.zeros(8), blue], axis=1)), atom
        assert (tile[8] == 0).all()  # the zero padding of a 3x3 tile


def _curves(tmp_path, **changes) -> np.ndarray:
    """A two-curve plot's pixels: one rising, one falling."""
    args = dict(series={"rising": ([1, 2, 3, 4], [1.0, 2, 3, 4]), "falling": ([1, 2, 3, 4], [4.0, 3, 2, 1])},
                xlabel="step", ylabel="loss", title="curves") | changes
    return png_pixels(line_plot(path=tmp_path / "curve.png", **args)).astype(int)


def test_a_line_plot_draws_each_curve_in_its_colour_and_direction(tmp_path):
    pixels = _curves(tmp_path)
    assert pixels.shape == (400, 600, 3)  # 6 x 4 inches at 100 dpi
    for colour, rising in (((31, 119, 180), True), ((255, 127, 14), False)):  # matplotlib's first two colours
        rows, columns = np.nonzero(np.abs(pixels - colour).sum(-1) < 40)
        assert len(rows) > 500, colour
        correlation = np.corrcoef(columns, rows)[0, 1]  # rows count downwards: a rising curve climbs to the right
        assert correlation < -0.9 if rising else correlation > 0.9, (colour, correlation)


@pytest.mark.parametrize("change, region", [(dict(xlabel="stop"), "bottom"), (dict(ylabel="lass"), "left"),
                                            (dict(title="carves"), "top")])
def test_a_line_plot_draws_its_labels_where_they_belong(tmp_path, change, region):
    """Another word of the same extent as the x label, y label or title: only that text's pixels change."""
    base, changed = _curves(tmp_path), _curves(tmp_path, **change)
    rows, columns = np.nonzero(np.abs(changed - base).sum(-1))
    assert len(rows) > 20  # the text is drawn
    height, width = base.shape[:2]
    inside = {"bottom": rows.min() > 0.9 * height, "left": columns.max() < 0.08 * width,
              "top": rows.max() < 0.1 * height}[region]
    assert inside, (rows.min(), rows.max(), columns.min(), columns.max())


def test_atomic_write_leaves_the_old_file_when_interrupted(tmp_path):
    path = write_json(tmp_path / "m.json", {"a": 1})
    with pytest.raises(RuntimeError):
        with atomic_write(path, "w") as handle:
            handle.write("{partial")
            raise RuntimeError("killed")
    assert path.read_text().startswith("{\n  \"a\": 1")
    assert [p.name for p in tmp_path.iterdir()] == ["m.json"]
