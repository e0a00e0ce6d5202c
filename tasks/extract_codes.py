"""Stage 4: encode the train and test images with the trained model into LMDB code stores, on Ray Data.

A Ray Data job a split: the driver puts the prepared .npy into the storage that stage 1's checkpoints use
(``storage_path``; ``share_files``: a hard link on the same file system, else a streamed copy; removed when the
split is done), and a pool of actors holding the model (GPU actors where the cluster has GPUs and the ``use_gpu``
setting allows, CPU actors otherwise) reads from there the rows of the batches it is given (``extract.batch_size``
images, a range read of the file), two batches at most queued an actor; the driver, the store's one writer (LMDB
has one), writes each batch's records in index order as they come back. No process holds more than a few batches
of images, and the workers read no file at the driver's paths. Every batch is encoded whole, as the in-process
extraction (``sparse_vqvae.code_store.extract_codes``) encodes it, and written in one transaction as it is: the
store's bytes are that extraction's with the same model.

Where it runs is a setting (``tasks.params.RaySettings``, as stage 1's): a cluster joined by address, or a Ray
instance of its own on this machine, stopped when the stage ends. On one machine one actor encodes with the
threads this process would use (more actors would split the same cores, and the thread count can move the last
bit of a sparse code); on a cluster, ``ray.num_workers`` actors with ``cpus_per_worker`` threads or a GPU each.
"""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from sparse_vqvae.code_store import StoreWriter, check_store_path, encode_images
from sparse_vqvae.data import ImageArray, to_model_range
from sparse_vqvae.train import load_checkpoint

from .layout import TEST_CODES, TEST_IMAGES, TRAIN_CODES, TRAIN_IMAGES, VQVAE
from .params import PipelineParams, RaySettings, ray_settings
from .stage import run_stage
from .tracking import StageTracker
from .train_vqvae import connect, remove_stored, share_files, storage_uri, wants_gpu

STAGE = "extract_codes"
BATCHES_AN_ACTOR = 2  # batch numbers given an actor at once (its images are read when it encodes them)


@dataclass(frozen=True)
class StoredImages:
    """The images of a prepared .npy (``ImageArray``'s format) in storage, read some rows at a time."""

    uri: str  # the file: a path, or an s3://, gs:// URI
    offset: int  # the first row's byte, past the .npy header
    shape: tuple[int, ...]  # [N, H, W, 3]

    def rows(self, first: int, last: int) -> np.ndarray:
        """Images ``first`` to ``last - 1`` (fewer at the end), one range read: memory for those alone."""
        import pyarrow.fs

        fs, path = pyarrow.fs.FileSystem.from_uri(self.uri)
        images = np.empty((min(last, self.shape[0]) - first, *self.shape[1:]), dtype=np.uint8)
        with fs.open_input_file(path) as stream:
            stream.seek(self.offset + first * images[0].nbytes)
            if stream.readinto(images) != images.nbytes:
                raise EOFError(f"{self.uri} ends before image {first + len(images) - 1}")
        return images


class Encoder:
    """A Ray Data actor: the model, loaded once from its checkpoint's bytes; each call encodes whole batches of
    the images (a row: the batch's number), read from the storage's copy of the images."""

    def __init__(self, checkpoint, images: StoredImages, batch_size: int, threads: int, use_gpu: bool) -> None:
        import tempfile

        import ray

        torch.set_num_threads(threads)
        self.device = torch.device("cuda" if use_gpu and torch.cuda.is_available() else "cpu")
        data = ray.get(checkpoint) if isinstance(checkpoint, ray.ObjectRef) else checkpoint
        with tempfile.TemporaryDirectory() as scratch:
            (Path(scratch) / "model.pt").write_bytes(data)
            self.model = load_checkpoint(Path(scratch) / "model.pt", self.device).model.eval()
        self.images, self.batch_size = images, batch_size

    def __call__(self, rows: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        numbers, records, sizes = [], [], []
        for number in rows["item"].tolist():
            block = self.images.rows(number * self.batch_size, (number + 1) * self.batch_size)
            images = torch.stack([to_model_range(image) for image in block])  # as the DataLoader collates them
            encoded, map_sizes = encode_images(self.model, images.to(self.device), number * self.batch_size)
            numbers.append(number)
            records.append(b"".join(encoded))
            sizes.append(json.dumps([len(encoded), map_sizes]))
        return {"batch": np.array(numbers, dtype=np.int64), "records": np.array(records, dtype=object),
                "sizes": np.array(sizes, dtype=object)}


@contextmanager
def shared_images(images: Path, storage: str) -> Iterator[StoredImages]:
    """``images`` (a prepared .npy) in a folder of their own in ``storage`` (a path every node sees, or an s3://,
    gs:// URI) while the block runs; removed after."""
    header = ImageArray(images).images  # checks the file; its rows' offset and shape (memory-mapped: none read)
    folder = f"extract-{uuid.uuid4().hex}"
    share_files([images], f"{storage}/{folder}")
    try:
        yield StoredImages(f"{storage}/{folder}/{images.name}", header.offset, header.shape)
    finally:
        remove_stored(storage, folder)


def extract_on_ray(checkpoint: Path, images: Path, store: Path, batch_size: int, actors: int, threads: int,
                   use_gpu: bool, storage: str, cpus: int = 1, progress: bool = True) -> dict[str, float]:
    """One split's store from ``images`` (a prepared .npy, shared through ``storage``) by ``actors`` Ray Data
    actors, on the Ray instance this process is connected to (``cpus`` reserved an actor, ``threads`` its torch
    threads); returns count and images/s."""
    import ray
    import ray.data
    from tqdm.auto import tqdm

    model = load_checkpoint(checkpoint).model  # the store's metadata: its atoms, levels, fingerprint
    start = time.perf_counter()
    context = ray.data.DataContext.get_current()
    context.execution_options.preserve_order = True  # the batches come back in index order
    context.enable_progress_bars = False
    with shared_images(images, storage) as stored:
        batches = -(-stored.shape[0] // batch_size)
        # A block a batch number, made here: no read tasks, which would wait for CPUs the actors hold.
        dataset = ray.data.from_items(list(range(batches)), override_num_blocks=batches).map_batches(
            Encoder, batch_size=1, num_cpus=cpus, num_gpus=1 if use_gpu else 0,
            compute=ray.data.ActorPoolStrategy(size=actors, max_tasks_in_flight_per_actor=BATCHES_AN_ACTOR),
            fn_constructor_kwargs={"checkpoint": ray.put(checkpoint.read_bytes()), "images": stored,
                                   "batch_size": batch_size, "threads": threads, "use_gpu": use_gpu})
        writer = StoreWriter(model, store)
        try:
            expected = 0
            for row in tqdm(dataset.iter_rows(), total=batches, desc=f"extract codes ({images.stem})",
                            disable=not progress):
                if row["batch"] != expected:
                    raise RuntimeError(f"Ray Data gave batch {row['batch']} where batch {expected} was due")
                count, map_sizes = json.loads(row["sizes"])
                size = len(row["records"]) // count
                writer.write([row["records"][i * size : (i + 1) * size] for i in range(count)], map_sizes)
                expected += 1
        except BaseException:
            writer.close()
            raise
    count = writer.finish()
    seconds = time.perf_counter() - start
    return {"images": count, "images_per_s": count / seconds if seconds > 0 else float("inf")}


def placement(settings: RaySettings, workers: int) -> tuple[int, int]:
    """Actors and each one's threads: on this machine one actor with this process's threads (what an extraction in
    one process computes with); on a cluster ``workers`` actors of ``cpus_per_worker`` threads."""
    if settings.address:
        return workers, settings.cpus_per_worker
    return 1, torch.get_num_threads()


def run(params: PipelineParams, tracker: StageTracker) -> dict[str, Any]:
    import ray

    for store in (TRAIN_CODES, TEST_CODES):  # both checked before any work
        check_store_path(store)
    settings = ray_settings()
    actors, threads = placement(settings, params.ray.num_workers)
    connect(settings, actors)
    metrics: dict[str, Any] = {}
    try:
        use_gpu = wants_gpu(settings, actors)
        tracker.timings["gpu_workers"] = int(use_gpu) * actors
        print(f"[{STAGE}] {actors} {'GPU' if use_gpu else 'CPU'} actor(s), {threads} thread(s) each")
        for split, images, store in (("train", TRAIN_IMAGES, TRAIN_CODES), ("test", TEST_IMAGES, TEST_CODES)):
            stats = extract_on_ray(VQVAE, images, store, params.extract.batch_size, actors, threads, use_gpu,
                                   storage_uri(settings), settings.cpus_per_worker)
            metrics[f"{split}_images"] = stats["images"]
            tracker.timings[f"{split}_images_per_s"] = stats["images_per_s"]
    finally:
        ray.shutdown()
    return metrics


def main() -> None:
    run_stage(STAGE, run)


if __name__ == "__main__":
    main()
