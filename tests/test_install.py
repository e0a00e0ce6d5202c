"""Installs anywhere: the library without its C extensions (their PyTorch forms, one warning, the same codes and
files), a resolver of ``--model`` that cannot be loaded, the pipeline's check of its interpreter, and a wheel
installed without the source tree compressing a photograph with the shipped model."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import textwrap
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import sparse_vqvae
from sparse_vqvae import _native, cli
from sparse_vqvae.code_store import CodeStore, extract_codes
from sparse_vqvae.codec import Codec
from sparse_vqvae.config import TrainConfig
from sparse_vqvae.data import to_uint8
from sparse_vqvae.entropy_coding import FrequencyModel
from sparse_vqvae.maps import prior_file, prior_files
from sparse_vqvae.pixelsnail import PixelSNAIL
from sparse_vqvae.prior_coding import PriorEntropyModel
from sparse_vqvae.prior_train import load_maps, prior_configs, save_prior
from sparse_vqvae.sparse_coding import lasso, omp
from sparse_vqvae.train import load_checkpoint, train

from .tiny import Images, tiny_config, tiny_images

REPO = Path(__file__).resolve().parents[1]
EXTENSIONS = sorted(_native.EXTENSIONS.values())

# A meta-path finder that refuses the C extensions: the library as a failed compile leaves it.
HIDE = textwrap.dedent(f"""
    import sys

    class _Refuse:
        def find_spec(self, name, path=None, target=None):
            if name in {EXTENSIONS!r}:
                raise ModuleNotFoundError(f"No module named {{name!r}}", name=name)

    sys.meta_path.insert(0, _Refuse())
""")
WITHOUT_EXTENSIONS = HIDE + textwrap.dedent("""
    import json, warnings
    from pathlib import Path

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        from tests.test_install import code_without_extensions

        code_without_extensions(Path(sys.argv[1]))
    ours = [str(w.message) for w in caught if w.category is RuntimeWarning and "sparse_vqvae" in str(w.message)]
    Path(sys.argv[1], "warnings.json").write_text(json.dumps(ours))
""")


def _encoded(model, images: torch.Tensor) -> list[list[int]]:
    with torch.no_grad():
        codes = model.eval().encode(images)[1]
    return [c.atoms.flatten().tolist() + c.levels.flatten().tolist() for c in codes]


def code_without_extensions(folder: Path) -> None:
    """Run in a process without the C extensions: train a tiny OMP model, encode, and compress and decompress with
    the factorised model and with a tiny prior; everything it makes is written to ``folder`` for the compiled forms
    to compare with."""
    assert _native.incremental is None and _native.rowwise is None
    x = torch.randn(6, 8, dtype=torch.float64)
    dictionary = torch.nn.functional.normalize(torch.randn(8, 20, dtype=torch.float64), dim=0)
    for coder in (lambda form: omp(x, dictionary, 2, form=form), lambda form: lasso(x, dictionary, 0.1, form=form)):
        coder("auto")  # the batched form
        with pytest.raises(ImportError, match="form='rows' needs the C extension sparse_vqvae.sparse_coding._rowwise"):
            coder("rows")

    images = Images(tiny_images(16, 16, seed=1))
    model, _ = train(tiny_config("omp"), TrainConfig(steps=2, batch_size=8), images,
                     checkpoint_path=folder / "model.pt", progress=False)
    extract_codes(model, images, folder / "codes", progress=False)
    store = CodeStore(folder / "codes", model.fingerprint())
    FrequencyModel.fit(load_maps(store), store.meta).save(folder / "codec.pt")
    torch.manual_seed(0)
    for level, config in enumerate(prior_configs(store.meta, channels=8, blocks=1, res_per_block=1)):
        save_prior(prior_file(folder, level), PixelSNAIL(config), None, 0, model.fingerprint())
    photos = [image for image in tiny_images(3, 16, seed=5)]
    results = {"codes": _encoded(model, torch.stack(photos))}
    for entropy, codec in _codecs(folder).items():
        files = codec.compress_many(photos)
        decoded = codec.decompress_many(files)
        np.save(folder / f"{entropy}.npy", torch.stack(decoded).numpy())
        for i, data in enumerate(files):
            (folder / f"{entropy}{i}.svq").write_bytes(data)
    (folder / "results.json").write_text(json.dumps(results))


def _codecs(folder: Path) -> dict[str, Codec]:
    model = load_checkpoint(folder / "model.pt").model.eval()
    return {"factorised": Codec(model, FrequencyModel.load(folder / "codec.pt")),
            "prior": Codec(model, PriorEntropyModel.load(prior_files(folder)))}


def test_without_the_c_extensions_the_pytorch_forms_give_the_same_codes_and_files(tmp_path):
    """One RuntimeWarning names both extensions; a tiny model trains, encodes and codes; and the compiled forms, here,
    give the same codes and the same bytes (the prior's logits agree to 1e-12 and are rounded to 2^-10 before the
    softmax, so only a logit within 1e-12 of a grid step could tell them apart), and decode the other's files."""
    done = subprocess.run([sys.executable, "-c", WITHOUT_EXTENSIONS, str(tmp_path)], cwd=REPO, capture_output=True,
                          text=True)
    assert done.returncode == 0, done.stderr[-4000:]
    warned = json.loads((tmp_path / "warnings.json").read_text())
    assert len(warned) == 1, warned
    assert all(name in warned[0] for name in EXTENSIONS) and "PyTorch forms" in warned[0]

    assert _native.incremental is not None and _native.rowwise is not None  # here: the compiled forms
    results = json.loads((tmp_path / "results.json").read_text())
    model = load_checkpoint(tmp_path / "model.pt").model
    photos = [image for image in tiny_images(3, 16, seed=5)]
    assert _encoded(model, torch.stack(photos)) == results["codes"]
    for entropy, codec in _codecs(tmp_path).items():
        theirs = [(tmp_path / f"{entropy}{i}.svq").read_bytes() for i in range(len(photos))]
        assert codec.compress_many(photos) == theirs, entropy
        decoded = torch.stack(codec.decompress_many(theirs)).numpy()
        np.testing.assert_array_equal(decoded, np.load(tmp_path / f"{entropy}.npy"))


def test_a_model_source_that_cannot_be_loaded_is_skipped_with_a_note(tmp_path, monkeypatch, capsys):
    """A distribution on the path registers a resolver whose module is missing (the pipeline's, outside its
    repository): --model still resolves checkpoints and zoo names, and an unknown reference fails as before."""
    info = tmp_path / "elsewhere-1.0.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: elsewhere\nVersion: 1.0\n")
    (info / "entry_points.txt").write_text(f"[{cli.MODEL_SOURCES}]\nlost = no_such_package.sources:resolve\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    assert cli.resolve_model("photo")["model"] == cli.ZOO / "photo" / "model.pt"
    with pytest.raises(FileNotFoundError, match="no such checkpoint: nothing-by-this-name"):
        cli.resolve_model("nothing-by-this-name")
    notes = capsys.readouterr().err.strip().splitlines()
    assert notes == ["sparse-vqvae: note: model source lost (no_such_package.sources:resolve) skipped: it cannot be "
                     "loaded here (No module named 'no_such_package')"]


def test_the_pipeline_on_an_interpreter_without_its_extra_names_the_extra(tmp_path):
    """An interpreter with the library's packages but not the pipeline's (stand-ins for torch and lmdb; no yaml,
    mlflow, ray): the stages' check names the `pipeline` extra."""
    for name in ("torch", "lmdb"):
        (tmp_path / name).mkdir()
        (tmp_path / name / "__init__.py").write_text("")
    env = {**os.environ, "PYTHONPATH": str(tmp_path)}
    done = subprocess.run([sys.executable, "-S", "-c", "import tasks"], cwd=REPO, env=env, capture_output=True,
                          text=True)
    assert done.returncode == 1
    assert done.stderr.strip().splitlines() == [
        f"error: {sys.executable} lacks yaml, mlflow, ray, which the pipeline needs; install the library's pipeline "
        f"extra into it: pip install -e '.[pipeline]' in the repository, or run the stages with "
        f"{REPO / '.venv/bin/python'} (or run 'make run')"]


def test_the_version_is_written_once():
    """In sparse_vqvae/__init__.py: pyproject.toml reads it from there, and the installed metadata has it."""
    from importlib.metadata import version

    tomllib = pytest.importorskip("tomllib")
    project = tomllib.loads((REPO / "pyproject.toml").read_text())
    assert "version" not in project["project"] and "version" in project["project"]["dynamic"]
    assert project["tool"]["setuptools"]["dynamic"]["version"] == {"attr": "sparse_vqvae.__version__"}
    assert version("sparse-vqvae") == sparse_vqvae.__version__


def _source_copy(target: Path) -> Path:
    """What a wheel is built from (pyproject.toml, README.md, sparse_vqvae/, models/zoo/), without built
    binaries: a build writes build/ and *.egg-info beside its sources, and the repository is shared."""
    target.mkdir()
    shutil.copy(REPO / "pyproject.toml", target)
    shutil.copy(REPO / "README.md", target)
    ignore = shutil.ignore_patterns("*.so", "__pycache__")
    shutil.copytree(REPO / "sparse_vqvae", target / "sparse_vqvae", ignore=ignore)
    shutil.copytree(REPO / "models" / "zoo", target / "models" / "zoo", ignore=ignore)
    return target


def _wheel(source: Path, out: Path, **env: str) -> Path:
    done = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-w", str(out),
                           "."], cwd=source, env={**os.environ, **env}, capture_output=True, text=True)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    (wheel,) = out.glob("sparse_vqvae-*.whl")
    return wheel


@pytest.mark.slow  # builds a wheel (compiling the C extensions) and runs the CLI's processes: about a minute
def test_a_wheel_installed_without_the_source_tree_compresses_a_photo(tmp_path):
    source = _source_copy(tmp_path / "source")
    wheel = _wheel(source, tmp_path / "dist")
    assert wheel.name.startswith(f"sparse_vqvae-{sparse_vqvae.__version__}-")
    names = zipfile.ZipFile(wheel).namelist()
    tops = {name.split("/")[0] for name in names if not name.split("/")[0].endswith(".dist-info")}
    assert tops == {"sparse_vqvae"}  # no tasks, flows or tests
    library = {p.relative_to(REPO).as_posix() for p in (REPO / "sparse_vqvae").rglob("*.py")}
    assert library <= set(names)
    assert {f"sparse_vqvae/zoo/photo/{n}" for n in ("model.pt", "codec.pt", "top.pt", "MODEL_CARD.md")} <= set(names)
    assert sum(name.endswith(".so") for name in names) == 2

    site = tmp_path / "site"
    done = subprocess.run([sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--target", str(site),
                           str(wheel)], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-3000:]
    work = tmp_path / "work"
    work.mkdir()
    # The dependencies are this interpreter's; the library and its zoo are the wheel's, from a folder that is
    # not the repository's.
    env = {**os.environ, "PYTHONPATH": str(site)}
    found = subprocess.run([sys.executable, "-c", "import sparse_vqvae, sparse_vqvae.cli as c; "
                            "print(sparse_vqvae.__file__); print(c.ZOO)"], cwd=work, env=env, capture_output=True,
                           text=True)
    assert found.stdout.splitlines() == [str(site / "sparse_vqvae/__init__.py"), str(site / "sparse_vqvae/zoo")]

    Image.fromarray(to_uint8(tiny_images(1, 64, seed=3))[0]).save(work / "photo.png")
    command = [sys.executable, "-m", "sparse_vqvae.cli"]
    done = subprocess.run([*command, "compress", "photo.png", "-o", "out"], cwd=work, env=env, capture_output=True,
                          text=True)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "RuntimeWarning" not in done.stderr  # its own compiled extensions
    done = subprocess.run([*command, "decompress", "out/photo.svq", "-o", "back"], cwd=work, env=env,
                          capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-3000:]
    with Image.open(work / "back/photo.png") as image:
        assert image.size == (64, 64)


@pytest.mark.slow  # builds a wheel
def test_a_compiler_that_rejects_the_extensions_does_not_fail_the_build(tmp_path):
    """`CC=false`: every compile fails, as MSVC's or an old GCC's would; the wheel builds, without them."""
    wheel = _wheel(_source_copy(tmp_path / "source"), tmp_path / "dist", CC="false")
    names = zipfile.ZipFile(wheel).namelist()
    assert "sparse_vqvae/cli.py" in names and not [name for name in names if name.endswith(".so")]


@pytest.mark.slow  # compiles both extensions (seconds)
def test_an_experiment_copy_builds_the_extensions_it_imports(tmp_path):
    """`dvc exp run --temp`/`--queue` run the stages in a copy under .dvc/tmp/exps/ without the git-ignored
    compiled extensions: importing tasks there builds them, so the copy's library runs the C forms."""
    copy = tmp_path / "project" / ".dvc" / "tmp" / "exps" / "tmpexp"
    shutil.copytree(REPO, copy, ignore=shutil.ignore_patterns(".venv", ".git", ".dvc", "*.so", "__pycache__", "build",
                                                              "checkpoints", "mlflow.db", "mlartifacts", "benchmarks"))
    environment = {**os.environ, "PYTHONPATH": str(copy)}
    check = ("import warnings; warnings.simplefilter('error');"
             "import tasks, sparse_vqvae._native as n, sparse_vqvae;"
             "print(sparse_vqvae.__file__, n.incremental is not None, n.rowwise is not None)")
    out = subprocess.run([sys.executable, "-c", check], cwd=copy, env=environment, capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == [str(copy / "sparse_vqvae" / "__init__.py"), "True", "True"]
