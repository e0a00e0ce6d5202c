"""Installs anywhere: the library without its C extensions (their PyTorch forms, one warning, the same codes and
files)."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch

from sparse_vqvae import _native
from sparse_vqvae.code_store import CodeStore, extract_codes
from sparse_vqvae.codec import Codec
from sparse_vqvae.config import TrainConfig
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

