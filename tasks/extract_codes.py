"""Stage 4: encode the train and test images with the trained model into LMDB code stores, on Ray Data.

A Ray Data job a split: the driver puts the prepared images into Ray's object store one batch
(``extract.batch_size`` images) at a time from the memory-mapped .npy, so it never holds more than a batch and
the workers read no file at the driver's paths; a pool of actors holding the model encodes the batches (GPU
actors where the cluster has GPUs and the ``use_gpu`` setting allows, CPU actors otherwise); the driver, the
store's one writer (LMDB has one), writes each batch's records in index order as they come back. Every batch is
encoded whole, as the in-process extraction (``sparse_vqvae.code_store.extract_codes``) encodes it, and written in
one transaction as it is: the store's bytes are that extraction's with the same model.

Where it runs is a setting (``tasks.params.RaySettings``, as stage 1's): a cluster joined by address, or a Ray
instance of its own on this machine, stopped when the stage ends. On one machine one actor encodes with the
threads this process would use (more actors would split the same cores, and the thread count can move the last
bit of a sparse code); on a cluster, ``ray.num_workers`` actors with ``cpus_per_worker`` threads or a GPU each.
"""

from __future__ import annotations

import json
import time
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
from .train_vqvae import connect, wants_gpu

STAGE = "extract_codes"


class Encoder:
    """A Ray Data actor: the model, loaded once from its checkpoint's bytes; each call encodes whole batches of
    the images (a row: the batch's number), read from the object store."""

    def __init__(self, checkpoint, batches: list, threads: int, use_gpu: bool) -> None:
        import tempfile

        import ray

        torch.set_num_threads(threads)
        self.device = torch.device("cuda" if use_gpu and torch.cuda.is_available() else "cpu")
        data = ray.get(checkpoint) if isinstance(checkpoint, ray.ObjectRef) else checkpoint
        with tempfile.TemporaryDirectory() as scratch:
            (Path(scratch) / "model.pt").write_bytes(data)
            self.model = load_checkpoint(Path(scratch) / "model.pt", self.device).model.eval()
        self.batches = batches

    def __call__(self, rows: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        import ray

        numbers, records, sizes = [], [], []
        for number in rows["id"].tolist():
            block = ray.get(self.batches[number]).copy()  # writable: the object store's is not
            images = torch.stack([to_model_range(image) for image in block])  # as the DataLoader collates them
            encoded, map_sizes = encode_images(self.model, images.to(self.device))
            numbers.append(number)
            records.append(b"".join(encoded))
            sizes.append(json.dumps([len(encoded), map_sizes]))
        return {"batch": np.array(numbers, dtype=np.int64), "records": np.array(records, dtype=object),
                "sizes": np.array(sizes, dtype=object)}


def extract_on_ray(checkpoint: Path, images: Path, store: Path, batch_size: int, actors: int, threads: int,
                   use_gpu: bool, cpus: int = 1, progress: bool = True) -> dict[str, float]:
    """One split's store from ``images`` (a prepared .npy) by ``actors`` Ray Data actors, on the Ray instance this
    process is connected to (``cpus`` reserved an actor, ``threads`` its torch threads); returns count and
    images/s."""
    import ray
    import ray.data
    from tqdm.auto import tqdm

    model = load_checkpoint(checkpoint).model  # the store's metadata: its atoms, levels, fingerprint
    pixels = ImageArray(images).images  # memory-mapped
    start = time.perf_counter()
    batches = [ray.put(np.ascontiguousarray(pixels[first : first + batch_size]))
               for first in range(0, len(pixels), batch_size)]
    context = ray.data.DataContext.get_current()
    context.execution_options.preserve_order = True  # the batches come back in index order
    context.enable_progress_bars = False
    dataset = ray.data.from_items([{"id": number} for number in range(len(batches))]).map_batches(
        Encoder, batch_size=1, compute=ray.data.ActorPoolStrategy(size=actors), num_cpus=cpus,
        num_gpus=1 if use_gpu else 0,
        fn_constructor_kwargs={"checkpoint": ray.put(checkpoint.read_bytes()), "batches": batches,
                               "threads": threads, "use_gpu": use_gpu})
    writer = StoreWriter(model, store)
    try:
        expected = 0
        for row in tqdm(dataset.iter_rows(), total=len(batches), desc=f"extract codes ({images.stem})",
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
                                   settings.cpus_per_worker)
            metrics[f"{split}_images"] = stats["images"]
            tracker.timings[f"{split}_images_per_s"] = stats["images_per_s"]
    finally:
        ray.shutdown()
    return metrics


def main() -> None:
    run_stage(STAGE, run)


if __name__ == "__main__":
    main()
