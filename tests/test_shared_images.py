"""Files that Ray workers read reach them through the storage that one setting names (``storage_path``): shared
once (a hard link on this file system, a streamed copy elsewhere), and the images read a batch at a time."""

from __future__ import annotations

import os
import tempfile
import tracemalloc
from pathlib import Path

import numpy as np
import pytest

from sparse_vqvae.data import ImageArray, to_uint8
from tasks.extract_codes import StoredImages, shared_images
from tasks.train_vqvae import SHARED, share_files, stored_file

from .tiny import tiny_images


def prepared(path: Path, count: int, seed: int = 5) -> np.ndarray:
    """A prepared split of ``count`` 16x16 images, written as prepare_data writes it (a new file, renamed)."""
    images = to_uint8(tiny_images(count, 16, seed=seed))
    np.save(path.with_suffix(".new.npy"), images)
    os.replace(path.with_suffix(".new.npy"), path)
    return images


def test_a_file_on_this_file_system_is_shared_by_a_hard_link_once(tmp_path):
    images = tmp_path / "train.npy"
    prepared(images, 10)
    folder = str(tmp_path / "storage" / "images")
    share_files([images], folder)
    shared = tmp_path / "storage" / "images" / "train.npy"
    assert shared.stat().st_ino == images.stat().st_ino  # no byte copied
    marker = (shared.parent / SHARED).stat().st_mtime_ns
    share_files([images], folder)  # a resumed run: nothing redone
    assert (shared.parent / SHARED).stat().st_mtime_ns == marker
    again = prepared(images, 12, seed=6)  # prepared anew: shared anew
    share_files([images], folder)
    assert shared.stat().st_ino == images.stat().st_ino
    assert np.array_equal(np.load(stored_file(folder, "train.npy", tmp_path / "local")), again)
    assert stored_file(folder, "train.npy", tmp_path / "local") == shared  # read where it is: no fetch
    assert not (tmp_path / "local").exists()


def test_a_file_on_another_file_system_is_copied(tmp_path):
    images = tmp_path / "train.npy"
    prepared(images, 10)
    other = Path(tempfile.mkdtemp(prefix="svq-shared-", dir="/dev/shm"))
    try:
        if other.stat().st_dev == tmp_path.stat().st_dev:
            pytest.skip("/dev/shm is on the same file system as the tests' temporary folder here")
        share_files([images], str(other / "images"))
        shared = other / "images" / "train.npy"
        assert shared.stat().st_ino != images.stat().st_ino
        assert shared.read_bytes() == images.read_bytes()
    finally:
        for path in sorted(other.rglob("*"), reverse=True):
            path.unlink() if path.is_file() else path.rmdir()
        other.rmdir()


def test_stored_images_are_the_prepared_rows_read_a_batch_at_a_time(tmp_path):
    """The rows asked for (the last batch short), in memory for those rows alone: the same traced peak from a
    file ten times larger."""
    peaks = {}
    for count in (40, 400):
        path = tmp_path / f"images-{count}.npy"
        images = prepared(path, count)
        header = ImageArray(path).images
        stored = StoredImages(str(path), header.offset, header.shape)
        assert np.array_equal(stored.rows(8, 16), images[8:16])
        assert np.array_equal(stored.rows(count - 8, count + 8), images[-8:])
        tracemalloc.start()
        try:
            stored.rows(16, 24)
            peaks[count] = tracemalloc.get_traced_memory()[1]
        finally:
            tracemalloc.stop()
    batch = images[16:24].nbytes
    assert peaks[400] <= peaks[40] + 1024 and peaks[400] < 2 * batch, (peaks, batch)


def test_extraction_shares_the_images_for_its_run_alone(tmp_path):
    images = tmp_path / "train.npy"
    prepared(images, 10)
    storage = tmp_path / "storage"
    with shared_images(images, str(storage)) as stored:
        (folder,) = storage.iterdir()  # a folder of its own: concurrent extractions do not meet
        assert Path(stored.uri) == folder / "train.npy" and stored.shape == (10, 16, 16, 3)
    assert list(storage.iterdir()) == []
