"""Stage 4: encode the train and test images with the trained model into LMDB code stores, on Ray Data.

One Ray Data job for both splits: the driver puts each split's prepared .npy into the storage that stage 1's
checkpoints use (``storage_path``; ``share_files``: a hard link on the same file system, else a streamed copy;
removed when the job ends), and one pool of actors holding the model (GPU actors where the cluster has GPUs and
the ``use_gpu`` setting allows, CPU actors otherwise) reads from there the rows of the batches it is given
(``extract.batch_size`` images, a range read of the file), two batches at most queued an actor; the driver, a
store's one writer (LMDB has one), writes each batch's records in index order as they come back, the train split's
store then the test split's. No process holds more than a few batches of images, the actors load the model once,
and the workers read no file at the driver's paths. Every batch is encoded whole, as the in-process extraction
(``sparse_vqvae.code_store.extract_codes``) encodes it, and written in one transaction as it is: the stores' bytes
are that extraction's with the same model.

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
from contextlib import ExitStack, contextmanager
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
    """A Ray Data actor: the model, loaded once from its checkpoint's bytes; each call encodes whole batches (a row:
    a split's number in ``images`` and the batch's), read from the storage's copy of that split."""

    def __init__(self, checkpoint, images: list[StoredImages], batch_size: int, threads: int, use_gpu: bool) -> None:
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
        records, sizes = [], []
        for split, number in zip(rows["split"].tolist(), rows["batch"].tolist()):
            block = self.images[split].rows(number * self.batch_size, (number + 1) * self.batch_size)
            images = torch.stack([to_model_range(image) for image in block])  # as the DataLoader collates them
            encoded, map_sizes = encode_images(self.model, images.to(self.device))
            records.append(b"".join(encoded))
            sizes.append(json.dumps([len(encoded), map_sizes]))
        return {"split": rows["split"], "batch": rows["batch"], "records": np.array(records, dtype=object),
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


def extract_on_ray(checkpoint: Path, splits: list[tuple[Path, Path]], batch_size: int, actors: int, threads: int,
                   use_gpu: bool, storage: str, cpus: int = 1, progress: bool = True) -> list[dict[str, float]]:
    """Each split's store (``(images, store)``: a prepared .npy, shared through ``storage``, and the store's folder)
    by one pool of ``actors`` Ray Data actors, on the Ray instance this process is connected to (``cpus`` reserved
    an actor, ``threads`` its torch threads); returns each split's count and images/s (since the previous split
    was done)."""
    import ray
    import ray.data
    from tqdm.auto import tqdm

    model = load_checkpoint(checkpoint).model  # the stores' metadata: its atoms, levels, fingerprint
    start = time.perf_counter()
    context = ray.data.DataContext.get_current()
    context.execution_options.preserve_order = True  # the batches come back in order
    context.enable_progress_bars = False
    with ExitStack() as shared:
        stored = [shared.enter_context(shared_images(images, storage)) for images, _ in splits]
        batches = [-(-images.shape[0] // batch_size) for images in stored]
        due = [{"split": split, "batch": number} for split, count in enumerate(batches) for number in range(count)]
        # A block a batch, made here: no read tasks, which would wait for CPUs the actors hold.
        dataset = ray.data.from_items(due, override_num_blocks=len(due)).map_batches(
            Encoder, batch_size=1, num_cpus=cpus, num_gpus=1 if use_gpu else 0,
            compute=ray.data.ActorPoolStrategy(size=actors, max_tasks_in_flight_per_actor=BATCHES_AN_ACTOR),
            fn_constructor_kwargs={"checkpoint": ray.put(checkpoint.read_bytes()), "images": stored,
                                   "batch_size": batch_size, "threads": threads, "use_gpu": use_gpu})
        stats, writer, since = [], None, start
        try:
            for row, expected in zip(tqdm(dataset.iter_rows(), total=len(due), desc="extract codes",
                                          disable=not progress), due, strict=True):
                split, number = int(row["split"]), int(row["batch"])
                if {"split": split, "batch": number} != expected:
                    raise RuntimeError(f"Ray Data gave batch {number} of split {split} where {expected} was due")
                if number == 0:
                    writer = StoreWriter(model, splits[split][1])
                count, map_sizes = json.loads(row["sizes"])
                size = len(row["records"]) // count
                writer.write([row["records"][i * size : (i + 1) * size] for i in range(count)], map_sizes)
                if number == batches[split] - 1:  # the split's store is whole
                    done, now = writer.finish(), time.perf_counter()
                    stats.append({"images": done, "images_per_s": done / (now - since)})
                    writer, since = None, now
        except BaseException:
            if writer is not None:
                writer.close()
            raise
    return stats


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
        splits = {"train": (TRAIN_IMAGES, TRAIN_CODES), "test": (TEST_IMAGES, TEST_CODES)}
        stats = extract_on_ray(VQVAE, list(splits.values()), params.extract.batch_size, actors, threads, use_gpu,
                               storage_uri(settings), settings.cpus_per_worker)
        for split, figures in zip(splits, stats):
            metrics[f"{split}_images"] = figures["images"]
            tracker.timings[f"{split}_images_per_s"] = figures["images_per_s"]
    finally:
        ray.shutdown()
    return metrics


def main() -> None:
    run_stage(STAGE, run)


if __name__ == "__main__":
    main()
