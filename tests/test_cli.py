"""The `sparse-vqvae` console script end to end, on a tiny model trained here."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from sparse_vqvae.code_store import CodeStore, extract_codes
from sparse_vqvae.config import TrainConfig
from sparse_vqvae.data import to_uint8
from sparse_vqvae.entropy_coding import FrequencyModel
from sparse_vqvae.maps import prior_file
from sparse_vqvae.pixelsnail import PixelSNAIL
from sparse_vqvae.prior_train import load_maps, prior_configs, save_prior
from sparse_vqvae.train import train

from .tiny import Images, tiny_config, tiny_images

pytestmark = pytest.mark.slow  # the console script end to end, a process per command

CLI = str(Path(sys.executable).parent / "sparse-vqvae")


@pytest.fixture(scope="module")
def trained_run(tmp_path_factory):
    """A folder laid out as `make run` leaves it: models/vqvae/model.pt, models/prior/{codec,top,bottom}.pt."""
    root = tmp_path_factory.mktemp("run")
    images = Images(tiny_images(16, 16, seed=1))
    model, _ = train(tiny_config("omp"), TrainConfig(steps=3, batch_size=8), images,
                     checkpoint_path=root / "models/vqvae/model.pt", progress=False)
    extract_codes(model, images, root / "codes", progress=False)
    store = CodeStore(root / "codes", model.fingerprint())
    maps = load_maps(store)
    FrequencyModel.fit(maps, store.meta).save(root / "models/prior/codec.pt")
    for level, config in enumerate(prior_configs(store.meta, channels=8, blocks=1, res_per_block=1)):
        save_prior(prior_file(root / "models/prior", level), PixelSNAIL(config), None, 0, model.fingerprint())
    picture = to_uint8(tiny_images(1, 48, seed=9)[:, :, :21, :35])[0]
    Image.fromarray(picture).save(root / "photo.png")
    return root


def cli(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    """The console script on the pipeline layout's model (``--model models/vqvae/model.pt``) unless the test
    names another: the default is the shipped photo codec."""
    if "--model" not in args and "--help" not in args:
        args = (args[0], "--model", "models/vqvae/model.pt", *args[1:])
    return subprocess.run([CLI, *args], cwd=cwd, capture_output=True, text=True)


def shipped(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    """The console script with no ``--model``: the photo codec in models/zoo/photo."""
    return subprocess.run([CLI, *args], cwd=cwd, capture_output=True, text=True)


def psnr(original: np.ndarray, decoded: np.ndarray) -> float:
    return 10 * np.log10(255**2 / np.mean((original - decoded) ** 2))


def test_the_shipped_photo_codec_works_with_no_model_argument(tmp_path):
    import skimage.data

    Image.fromarray(skimage.data.coffee()[100:196, 200:328]).save(tmp_path / "coffee.png")  # 128x96
    sizes = {}
    for quality in ("1", "10"):
        done = shipped("compress", "coffee.png", "-o", f"q{quality}", "--quality", quality, cwd=tmp_path)
        assert done.returncode == 0, done.stderr
        sizes[quality] = (tmp_path / f"q{quality}/coffee.svq").stat().st_size
        done = shipped("decompress", f"q{quality}/coffee.svq", "-o", f"back{quality}", cwd=tmp_path)
        assert done.returncode == 0, done.stderr
    assert sizes["1"] < sizes["10"]
    original = np.asarray(Image.open(tmp_path / "coffee.png")).astype(float)
    decoded = np.asarray(Image.open(tmp_path / "back10/coffee.png")).astype(float)
    assert psnr(original, decoded) > 24  # a real reconstruction, not noise
    done = shipped("compress", "coffee.png", "-o", "refined", "--quality", "10", "--effort", "3", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    done = shipped("decompress", "refined/coffee.svq", "-o", "back-refined", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    refined = np.asarray(Image.open(tmp_path / "back-refined/coffee.png")).astype(float)
    assert psnr(original, refined) > psnr(original, decoded)  # refinement: a better image, the same decoder
    done = shipped("compress", "coffee.png", "-o", "q0", "--quality", "0", cwd=tmp_path)
    assert done.returncode == 1 and "quality 0 is not one this model codes: 1 to 10" in done.stderr
    done = shipped("compress", "coffee.png", "-o", "x", "--model", "no-such-model", cwd=tmp_path)
    assert done.returncode == 1 and "nor a zoo model - photo -" in done.stderr


def test_every_command_has_help(trained_run):
    for command in ("compress", "decompress", "sample", "evaluate"):
        done = cli(command, "--help", cwd=trained_run)
        assert done.returncode == 0 and "--model" in done.stdout


def test_compress_then_decompress_an_image_of_any_size(trained_run):
    done = cli("compress", "photo.png", "-o", "out", cwd=trained_run)
    assert done.returncode == 0, done.stderr
    compressed = trained_run / "out/photo.svq"
    bpp = 8 * compressed.stat().st_size / (21 * 35)
    assert f"{bpp:.3f} bpp" in done.stdout
    done = cli("decompress", "out/photo.svq", "-o", "back", cwd=trained_run)
    assert done.returncode == 0, done.stderr
    with Image.open(trained_run / "back/photo.png") as image:
        assert image.size == (35, 21) and image.mode == "RGB"


def test_prior_coded_files_decompress_with_the_model_their_header_names(trained_run):
    picture = to_uint8(tiny_images(1, 16, seed=10))[0]
    Image.fromarray(picture).save(trained_run / "small.png")  # the priors' training size
    done = cli("compress", "small.png", "-o", "prior", "--entropy", "prior", cwd=trained_run)
    assert done.returncode == 0, done.stderr
    done = cli("decompress", "prior/small.svq", "-o", "prior_back", cwd=trained_run)
    assert done.returncode == 0, done.stderr
    with Image.open(trained_run / "prior_back/small.png") as image:
        assert image.size == (16, 16)
    done = cli("compress", "photo.png", "-o", "prior", "--entropy", "prior", cwd=trained_run)
    assert done.returncode == 1 and "factorised entropy model for other sizes" in done.stderr


def test_a_bad_file_among_many_is_named_and_the_others_are_written(trained_run):
    for seed in (11, 12):
        Image.fromarray(to_uint8(tiny_images(1, 16, seed=seed))[0]).save(trained_run / f"many{seed}.png")
    done = cli("compress", "many11.png", "missing.png", "many12.png", "-o", "many", "--entropy", "prior",
               cwd=trained_run)
    assert done.returncode == 1 and "missing.png: no such file" in done.stderr and "1 of 3 files failed" in done.stderr
    assert sorted(path.name for path in (trained_run / "many").iterdir()) == ["many11.svq", "many12.svq"]
    (trained_run / "many/broken.svq").write_bytes(b"SVQC" + bytes(40))
    done = cli("decompress", "many/many11.svq", "many/broken.svq", "many/many12.svq", "-o", "many_back",
               cwd=trained_run)
    assert done.returncode == 1 and "broken.svq: " in done.stderr and "1 of 3 files failed" in done.stderr
    assert sorted(path.name for path in (trained_run / "many_back").iterdir()) == ["many11.png", "many12.png"]


def test_sample_from_the_priors_and_from_random_codes(trained_run):
    for extra in ([], ["--random-codes"]):
        done = cli("sample", "-n", "4", "--temperature", "0.8", "-o", "grid.png", *extra, cwd=trained_run)
        assert done.returncode == 0, done.stderr
        assert "know no position" not in done.stderr  # a pipeline run's priors learn positions: they draw images
        with Image.open(trained_run / "grid.png") as image:
            assert np.asarray(image).std() > 0


def test_sampling_the_shipped_photo_codec_says_its_prior_is_a_coding_model(tmp_path):
    """The photo model's prior has no positions (it codes photographs of any size): its samples are textures,
    and `sample` says so rather than pass them off as pictures."""
    done = cli("sample", "--model", "photo", "-n", "1", "-o", "grid.png", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert "know no position" in done.stderr and "not pictures" in done.stderr
    assert (tmp_path / "grid.png").read_bytes()[:4] == b"\x89PNG"
    done = cli("sample", "--model", "photo", "-n", "1", "--class", "dog", "-o", "dog.png", cwd=tmp_path)
    assert done.returncode == 1 and "unknown class dog" in done.stderr and "not class-conditional" in done.stderr


def test_evaluate_reports_real_bits_per_pixel(trained_run):
    done = cli("evaluate", "--dataset", "embedded", "--image-size", "16", "--limit", "3", cwd=trained_run)
    assert done.returncode == 0, done.stderr
    assert '"images": 3' in done.stdout and '"bpp"' in done.stdout and '"ms_ssim"' in done.stdout


def test_evaluate_against_jpeg_writes_a_table_and_a_plot(trained_run):
    done = cli("evaluate", "--image-size", "16", "--limit", "2", "--references", "--entropy", "prior",
               "-o", "rd/points", cwd=trained_run)
    assert done.returncode == 0, done.stderr
    table = (trained_run / "rd/points.csv").read_text()
    assert "sparse-vqvae omp (prior)" in table and "JPEG" in table
    assert (trained_run / "rd/points.png").read_bytes()[:4] == b"\x89PNG"


@pytest.mark.parametrize("args, message", [
    (["compress", "missing.png", "-o", "out"], "no such file: missing.png"),
    (["compress", "models/prior/codec.pt", "-o", "out"], "is not an image this tool can read"),
    (["compress", "photo.png", "-o", "out", "--effort", "2"], "refinement codes residual-VQ models cut by quality"),
    (["compress", "photo.png", "-o", "out", "--effort", "-1"], "effort must be a whole number of refinement steps"),
    (["decompress", "photo.png", "-o", "out"], "not a sparse-vqvae compressed file"),
    (["compress", "photo.png", "-o", "out", "--model", "models/prior/codec.pt"], "is not a sparse-vqvae/vqvae2 checkpoint"),
])
def test_bad_input_is_one_clear_line(trained_run, args, message):
    done = cli(*args, cwd=trained_run)
    assert done.returncode == 1
    assert message in done.stderr and "Traceback" not in done.stderr
    assert len(done.stderr.strip().splitlines()) == 1
