"""Stage 5: the PixelSNAIL priors over the extracted codes - the top map's, then the bottom map's conditioned on
the top codes - on Ray Train, and the compressed-file format's frequency model.

``TorchTrainer`` runs ``prior_worker`` on W workers (DDP over gloo on CPU workers; GPU workers where the cluster
has GPUs and the ``use_gpu`` setting allows). The codes stream: a step's rows are drawn from (seed, step) alone
and each worker reads its W-th of them from the store (``sparse_vqvae.prior_train``), so memory holds a batch.
The store reaches the workers through the checkpoints' storage (``storage_path``, as stage 1's: a folder every
node sees, or an s3://, gs:// URI whose copy each worker fetches to its disk): the driver copies it to
``<storage>/prior/<run key>/codes`` (once; removed when the stage ends). Rank 0 alone logs to MLflow and writes.

Resuming: rank 0 writes each prior's ``<storage>/prior/<run key>/<map>.pt`` (atomically; the format of
``models/prior/``, which gets a copy when the prior is trained), with every worker's random state beside it
(``<map>.<step>.rng``: the dropout masks to come; the checkpoint's own step, so a run killed between writing a
later checkpoint's states and its prior still finds the states of the prior it resumes) and the curve so far, and a
worker resumes from them - after Ray
restarts failed workers (``max_failures``) and after a killed ``dvc repro`` (the folder is no DVC out) - as if
never interrupted. The run key hashes the prior settings, the VQ-VAE and the library's source, as before Ray.

With one worker the priors, curves and figures are those of ``train_prior`` in one process, bit for bit (the
worker computes with the threads this process would use). More workers draw their own dropout masks and sum the
gradients in another order: the worker count changes the priors, so it is a parameter (``prior.num_workers``).

``prior.class_conditional`` conditions both priors on the image's class, as VQ-VAE-2 conditions its ImageNet priors:
the classes are prepare_data's (the summary's class names, ``<split>_labels.npy`` row by row of the code store), and
``prior.label_dropout`` of each batch trains as "no class", what coding and the bits per image use.
"""

from __future__ import annotations

import csv
import hashlib
import json
import shutil
import tempfile
import uuid
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np
import torch

from sparse_vqvae.atomic import atomic_write
from sparse_vqvae.code_store import CodeStore
from sparse_vqvae.codec import fit_frequencies
from sparse_vqvae.data import ImageArray
from sparse_vqvae.maps import prior_file
from sparse_vqvae.pictures import line_plot
from sparse_vqvae.pixelsnail import PixelSNAIL
from sparse_vqvae.prior_train import (PriorLoss, batch_bits, check_resumable, load_prior, mean_bits, prior_configs,
                                      run_prior_training, save_prior)
from sparse_vqvae.provenance import source_fingerprint
from sparse_vqvae.train import load_checkpoint

from .layout import (DATA_SUMMARY, FREQUENCY_MODEL, MAP_NAMES, PLOTS, PRIORS, TRAIN_CODES, TRAIN_IMAGES, VQVAE, labels_path,
                     prior_path)
from .params import PipelineParams, RaySettings, parse_params, ray_settings
from .stage import run_stage
from .tracking import StageTracker
from .train_vqvae import (connect, live_tracking, read_stored, remove_stored, storage_uri, wants_gpu,
                          write_stored)

STAGE = "train_prior"
CURVES = PLOTS / "prior.csv"
STORE_FILES = ("data.mdb", "manifest.json")


def training_labels(params: PipelineParams, count: int) -> tuple[np.ndarray, tuple[str, ...]] | None:
    """The training images' class labels and the class names, for a class-conditional prior (None otherwise): what
    prepare_data kept, where the source has classes."""
    if not params.prior.class_conditional:
        return None
    path = labels_path("train")
    classes = json.loads(DATA_SUMMARY.read_text()).get("classes") if DATA_SUMMARY.is_file() else None
    if not path.is_file() or not classes:
        raise ValueError(f"prior.class_conditional needs the training images' classes; {path} and the class names in "
                         f"{DATA_SUMMARY} are missing: data.name {params.data.name!r} has none (labelled sources: "
                         "cifar10, cifar100, imagefolder, imagenet)")
    labels = np.load(path)
    if len(labels) != count:
        raise ValueError(f"{path} holds {len(labels)} labels for the {count} images of {TRAIN_CODES}: rerun "
                         "prepare_data and the stages after it")
    return labels, tuple(classes)


def run_key(params: PipelineParams, fingerprint: str) -> str:
    """Which run a prior checkpoint belongs to: a checkpoint of other settings, another VQ-VAE or other library code
    is not resumed."""
    return hashlib.sha256(json.dumps([asdict(params.prior), fingerprint, source_fingerprint()], sort_keys=True)
                          .encode()).hexdigest()[:16]


def worker_threads(settings: RaySettings, workers: int) -> int:
    """Each worker's torch threads: on this machine, this process's threads shared by the workers (one worker
    computes as ``train_prior`` in this process would, whose last bits depend on them); on a cluster,
    ``cpus_per_worker``."""
    if settings.address:
        return settings.cpus_per_worker
    return max(settings.cpus_per_worker, torch.get_num_threads() // workers)


def share_store(store: CodeStore, folder: str) -> None:
    """Copy the store to ``<folder>/codes`` in the storage, unless the copy there is of this store already (its
    marker, written last, names the store's manifest and metadata)."""
    import pyarrow.fs

    marker = json.dumps({"manifest": (store.path / "manifest.json").read_text(), "meta": asdict(store.meta)},
                        sort_keys=True).encode()
    if read_stored(f"{folder}/codes", "copied.json") == marker:
        return
    remove_stored(f"{folder}/codes", "copied.json")  # until the copy is whole again
    fs, base = pyarrow.fs.FileSystem.from_uri(f"{folder}/codes")
    fs.create_dir(base, recursive=True)
    for name in STORE_FILES:
        pyarrow.fs.copy_files(str((store.path / name).resolve()), f"{base}/{name}", destination_filesystem=fs)
    write_stored(f"{folder}/codes", "copied.json", marker)


def open_shared_store(folder: str, local: Path, fingerprint: str) -> CodeStore:
    """The store of ``share_store``: read where it is on a file system this node mounts, else fetched to ``local``."""
    import pyarrow.fs

    fs, base = pyarrow.fs.FileSystem.from_uri(f"{folder}/codes")
    if isinstance(fs, pyarrow.fs.LocalFileSystem):
        return CodeStore(base, fingerprint)
    (local / "codes").mkdir(parents=True)
    for name in STORE_FILES:
        pyarrow.fs.copy_files(f"{base}/{name}", str(local / "codes" / name), source_filesystem=fs)
    return CodeStore(local / "codes", fingerprint)


def prior_worker(loop: dict[str, Any]) -> None:
    """One Ray Train worker: each map's prior in turn, resumed or from its seed; then its bits per training image."""
    import ray.train

    context = ray.train.get_context()
    rank, world_size = context.get_world_rank(), context.get_world_size()
    torch.set_num_threads(loop["threads"])
    local = Path(tempfile.mkdtemp(prefix="sparse-vqvae-prior-"))  # this worker's copies of what it reads
    try:
        store = open_shared_store(loop["storage"], local, loop["fingerprint"])
        tracker = StageTracker(loop["tracking_uri"], loop["run_id"]) if rank == 0 and loop["live_tracking"] else None
        history_data = read_stored(loop["storage"], "history.json")
        history = json.loads(history_data) if history_data else []
        figures: dict[str, Any] = {}
        for level, config in enumerate(prior_configs(store.meta, **loop["sizes"])):
            figures |= _train_map(loop, store, level, config, history, tracker, local, rank, world_size)
        if rank == 0:
            write_stored(loop["storage"], loop["figures"], json.dumps(figures).encode())
    finally:
        shutil.rmtree(local, ignore_errors=True)


def _train_map(loop: dict[str, Any], store: CodeStore, level: int, config: Any, history: list[dict],
               tracker: StageTracker | None, local: Path, rank: int, world_size: int) -> dict[str, Any]:
    import ray.train.torch

    params = parse_params(loop["params"])
    prior_params, name, device = params.prior, MAP_NAMES[level], ray.train.torch.get_device()
    torch.manual_seed(prior_params.seed + level)
    prior = PixelSNAIL(config).to(device)
    optimizer = torch.optim.Adam(prior.parameters(), lr=prior_params.lr)
    resume, step = prior_file(local, level), 0
    stored = read_stored(loop["storage"], resume.name)
    if stored is not None:
        resume.write_bytes(stored)
        resumed = load_prior(resume)
        prior.load_state_dict(resumed.prior.state_dict())
        if resumed.optimizer_state is not None:
            optimizer.load_state_dict(resumed.optimizer_state)
        step = resumed.step
        _restore_random_state(read_stored(loop["storage"], random_state_file(name, step)), step, rank, world_size,
                              device)
    kept_states = [random_state_file(name, step)] if stored is not None else []  # the resumable checkpoint's
    start, metric = step, f"{name}_bits_per_image"
    history[:] = [row for row in history if metric not in row or row["step"] <= start]  # rows past a checkpoint: redone
    if rank == 0:
        print(f"map {name}: starting at step {start}" + (" (resumed)" if stored is not None else ""), flush=True)

    def on_metrics(step: int, values: dict[str, float]) -> None:
        if rank == 0 and (step % params.mlflow.log_every == 0 or step == prior_params.steps):
            history.append({"step": step, metric: values["bits_per_image"]})
            if tracker is not None:
                tracker.log_metrics({metric: values["bits_per_image"]}, step)

    def on_checkpoint(step: int) -> None:
        states = _gather(_random_state(device), world_size)  # a collective: every worker checkpoints at this step
        if rank != 0:
            return
        buffer = local / random_state_file(name, step)
        torch.save({"step": step, "states": states}, buffer)
        write_stored(loop["storage"], buffer.name, buffer.read_bytes())
        write_stored(loop["storage"], "history.json", json.dumps(history).encode())
        save_prior(resume, prior, optimizer, step, loop["fingerprint"])
        write_stored(loop["storage"], resume.name, resume.read_bytes())  # last: the step a resume starts from
        for old in kept_states:  # the previous checkpoint's states: no prior resumes from them now
            if old != buffer.name:
                remove_stored(loop["storage"], old)
        kept_states[:] = [buffer.name]
        print(f"checkpoint saved at step {step} (map {name})", flush=True)

    model = ray.train.torch.prepare_model(PriorLoss(prior), parallel_strategy_kwargs={"find_unused_parameters": True})
    labels = torch.as_tensor(loop["labels"]) if loop["labels"] is not None else None
    run_prior_training(model, optimizer, store, level, prior_params.steps, batch_size=prior_params.batch_size,
                       seed=prior_params.seed + level, step=step, rank=rank, world_size=world_size, labels=labels,
                       label_dropout=prior_params.label_dropout, checkpoint_every=prior_params.checkpoint_every,
                       progress=rank == 0, on_metrics=on_metrics, on_checkpoint=on_checkpoint)
    if len(set(_gather(_digest(prior), world_size))) > 1:  # DDP keeps them equal; a worker that trained alone would not
        raise RuntimeError(f"the workers' {name} priors differ after training: their gradients were not averaged")
    sums = {}
    for part in _gather(batch_bits(prior, store, level, rank=rank, world_size=world_size), world_size):
        sums |= part
    return {f"{name}_start_step": start, f"{name}_steps_trained": max(prior_params.steps - start, 0),
            f"{name}_train_bits_per_image": mean_bits(sums, len(store))}  # also when resumed finished


def _digest(prior: PixelSNAIL) -> str:
    return hashlib.sha256(b"".join(value.detach().cpu().numpy().tobytes() for value in prior.state_dict().values())
                          ).hexdigest()


def random_state_file(name: str, step: int) -> str:
    """The workers' random states at map ``name``'s checkpoint of ``step``, in the run's storage folder."""
    return f"{name}.{step}.rng"


def _random_state(device: torch.device) -> dict[str, torch.Tensor]:
    state = {"cpu": torch.get_rng_state()}
    if device.type == "cuda":
        state["cuda"] = torch.cuda.get_rng_state(device)
    return state


def _restore_random_state(data: bytes | None, step: int, rank: int, world_size: int, device: torch.device) -> None:
    """The worker's random state at the checkpoint of ``step``, when it was written by as many workers."""
    if data is None:
        return
    with tempfile.TemporaryDirectory() as scratch:
        (Path(scratch) / "state.rng").write_bytes(data)
        saved = torch.load(Path(scratch) / "state.rng", weights_only=True)
    if saved["step"] != step or len(saved["states"]) != world_size:
        return
    state = saved["states"][rank]
    torch.set_rng_state(state["cpu"])
    if "cuda" in state and device.type == "cuda":
        torch.cuda.set_rng_state(state["cuda"], device)


def _gather(value: Any, world_size: int) -> list[Any]:
    """Every worker's ``value``, in rank order (a collective)."""
    if world_size == 1:
        return [value]
    gathered = [None] * world_size
    torch.distributed.all_gather_object(gathered, value)
    return gathered


def run(params: PipelineParams, tracker: StageTracker, workers: int | None = None) -> dict[str, Any]:
    """The stage on ``workers`` Ray Train workers (default: ``prior.num_workers``)."""
    import ray
    from ray.train import FailureConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer

    config = params.prior
    settings, workers = ray_settings(), workers or config.num_workers
    if config.batch_size % workers:
        raise ValueError(f"prior.batch_size ({config.batch_size}) must be a multiple of the workers ({workers})")
    model = load_checkpoint(VQVAE).model
    fingerprint = model.fingerprint()
    store = CodeStore(TRAIN_CODES, expected_fingerprint=fingerprint)
    key = run_key(params, fingerprint)
    folder = f"{storage_uri(settings)}/prior/{key}"
    sizes = dict(channels=config.channels, blocks=config.blocks, res_per_block=config.res_per_block,
                 dropout=config.dropout, positions=config.positions, attention_rows=config.attention_rows)
    labelled = training_labels(params, len(store))
    if labelled is not None:
        sizes["classes"] = labelled[1]
    for level, prior_config in enumerate(prior_configs(store.meta, **sizes)):  # a foreign checkpoint fails here
        data = read_stored(folder, prior_file("", level).name)
        if data is not None:
            with tempfile.TemporaryDirectory() as scratch:
                (Path(scratch) / "prior.pt").write_bytes(data)
                check_resumable(load_prior(Path(scratch) / "prior.pt"), PixelSNAIL(prior_config).arguments, fingerprint,
                                f"{folder}/{prior_file('', level).name}")
    threads = worker_threads(settings, workers)
    print(f"[{STAGE}] run {key}: checkpoints in {folder}; {workers} worker(s), {threads} thread(s) each")
    share_store(store, folder)
    live = live_tracking(tracker.uri, settings)
    figures_name = f"figures-{uuid.uuid4().hex}.json"
    connect(settings, workers)
    try:
        use_gpu = wants_gpu(settings, workers)
        loop = {"params": asdict(params), "storage": folder, "fingerprint": fingerprint, "sizes": sizes,
                "threads": threads, "tracking_uri": tracker.uri, "run_id": tracker.run_id, "live_tracking": live,
                "figures": figures_name, "labels": labelled[0] if labelled is not None else None}
        trainer = TorchTrainer(
            prior_worker,
            train_loop_config=loop,
            scaling_config=ScalingConfig(num_workers=workers, use_gpu=use_gpu,
                                         resources_per_worker={"CPU": settings.cpus_per_worker}
                                         | ({"GPU": 1} if use_gpu else {})),
            run_config=RunConfig(name=f"prior-{key}", storage_path=f"{storage_uri(settings)}/ray",
                                 failure_config=FailureConfig(max_failures=settings.max_failures)),
        )
        trainer.fit()
    finally:
        ray.shutdown()
    metrics = json.loads(read_stored(folder, figures_name))
    history = json.loads(read_stored(folder, "history.json") or b"[]")
    for name in (figures_name, "codes"):  # what only this run reads
        remove_stored(folder, name)
    PRIORS.mkdir(parents=True, exist_ok=True)
    levels = len(store.meta.map_sizes)
    for level in range(levels):
        with atomic_write(prior_path(level)) as handle:
            handle.write(read_stored(folder, prior_file("", level).name))
    if not live:  # rank 0 could not reach the tracking store: its history, logged now
        tracker.log_history(history)
    _publish(history, tracker)
    tracker.timings["gpu_workers"] = int(use_gpu) * workers
    # The codec's entropy model: atom / level / count frequencies of the training codes (a rate-controlled model's
    # per quality).
    fit_frequencies(model, store, store.meta, ImageArray(TRAIN_IMAGES)).save(FREQUENCY_MODEL)
    for path in (*map(prior_path, range(levels)), FREQUENCY_MODEL):  # for `sparse-vqvae --model <run id>`
        tracker.log_artifact(path, PRIORS.as_posix())
    return metrics


def _publish(history: list[dict], tracker: StageTracker) -> None:
    curves: dict[int, dict[str, float]] = {}
    for row in history:
        for name in MAP_NAMES:
            if f"{name}_bits_per_image" in row:
                curves.setdefault(row["step"], {})[f"{name}_bits"] = row[f"{name}_bits_per_image"]
    columns = [f"{name}_bits" for name in MAP_NAMES]
    with atomic_write(CURVES, "w") as handle:
        writer = csv.writer(handle)
        writer.writerow(["step"] + columns)
        writer.writerows([step] + [curves[step].get(c, "") for c in columns] for step in sorted(curves))
    series = {c: ([s for s in sorted(curves) if c in curves[s]], [curves[s][c] for s in sorted(curves) if c in curves[s]])
              for c in columns}
    picture = line_plot({c: xy for c, xy in series.items() if xy[0]}, PRIORS / "training_bits.png", "step",
                        "bits per image", "prior training")
    tracker.log_artifact(picture, "pictures")


def main() -> None:
    run_stage(STAGE, run)


if __name__ == "__main__":
    main()
