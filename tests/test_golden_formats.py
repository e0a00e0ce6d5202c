"""Golden bytes: the .svq file and the code-store record of fixed codes, byte for byte.

A change to either format must bump its version (codec.VERSION, code_store.FORMAT_VERSION): the
golden files are named by version, so a changed layout under the same version fails here, and a
new version needs its golden file written (``python -m tests.test_golden_formats``) and reviewed.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from sparse_vqvae import code_store
from sparse_vqvae.codec import VERSION, read_codes, write_codes
from sparse_vqvae.codes import EMPTY, Codes
from sparse_vqvae.entropy_coding import FrequencyModel

GOLDEN = Path(__file__).parent / "golden"
SVQ = GOLDEN / f"svq_v{VERSION}.bin"
RECORD = GOLDEN / f"code_store_v{code_store.FORMAT_VERSION}.bin"


def fixed_maps() -> tuple[Codes, ...]:
    """A top map 2x2 and a bottom map 2x4 of 0..2 pairs a position (8 atoms, 4 levels), canonical order."""
    top = torch.tensor([[[[1, 5], [0, EMPTY]], [[EMPTY, EMPTY], [2, 7]]]])[0]
    bottom = torch.tensor([[[3, EMPTY], [1, 2], [6, 7], [EMPTY, EMPTY]], [[0, 4], [5, EMPTY], [2, 3], [7, EMPTY]]])
    levels = lambda atoms, seed: torch.where(atoms == EMPTY, 0, (atoms * 3 + seed) % 4)  # noqa: E731
    return Codes(top, levels(top, 1)), Codes(bottom, levels(bottom, 2))


def fixed_frequency_model() -> FrequencyModel:
    ramp = lambda n: np.arange(1, n + 1, dtype=np.float64) / (n * (n + 1) / 2)  # noqa: E731
    per_slot = lambda table: np.stack([table, table[::-1]])  # noqa: E731
    return FrequencyModel(8, 4, 2, True, "0123456789abcdef", [per_slot(ramp(8)), per_slot(ramp(8)[::-1].copy())],
                          [per_slot(ramp(4)), per_slot(ramp(4)[::-1].copy())], [np.array([0.2, 0.3, 0.5])] * 2)


def svq_bytes() -> bytes:
    return write_codes(fixed_maps(), fixed_frequency_model(), 16, 32)


def record_bytes() -> bytes:
    return code_store._encode(7, fixed_maps())


def test_the_compressed_file_format_is_pinned():
    assert SVQ.is_file(), f"no golden file for compressed-file version {VERSION}: write {SVQ.name} (see docstring)"
    assert svq_bytes() == SVQ.read_bytes()
    (height, width), maps = read_codes(SVQ.read_bytes(), fixed_frequency_model())
    assert (height, width) == (16, 32)
    assert all(got.equal(want) for got, want in zip(maps, fixed_maps()))


def test_the_code_store_record_format_is_pinned():
    assert RECORD.is_file(), f"no golden record for code-store format {code_store.FORMAT_VERSION}: write {RECORD.name}"
    assert record_bytes() == RECORD.read_bytes()
    meta = code_store.StoreMetadata(code_store.FORMAT_VERSION, "omp", 2, 8, 4, [[2, 2], [2, 4]], "0" * 16, True, 1)
    index, maps = code_store._decode(RECORD.read_bytes(), meta)
    assert index == 7 and all(got.equal(want) for got, want in zip(maps, fixed_maps()))


if __name__ == "__main__":
    GOLDEN.mkdir(exist_ok=True)
    SVQ.write_bytes(svq_bytes())
    RECORD.write_bytes(record_bytes())
    print(f"wrote {SVQ} and {RECORD}")
