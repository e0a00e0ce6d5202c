"""Stage 3: train the VQ-VAE-2 on Ray Train, from the pretrained model.

``TorchTrainer`` runs ``train_worker`` on ``ray.num_workers`` workers (GPU workers when the
cluster has GPUs and the ``use_gpu`` setting allows, else CPU workers with DDP over gloo); the quantizers
all-reduce their EMA and dictionary statistics themselves. Rank 0 alone logs to MLflow and writes
checkpoints; every worker reports to Ray the same number of times.

Where it runs is a setting, not a parameter (``tasks.params.RaySettings``: $SPARSE_VQVAE_RAY_ADDRESS and
the others), so pointing it at a cluster reruns nothing. Workers read no file at the driver's paths: the
pretrained model reaches them through Ray's object store; the prepared images and the checkpoints through the
storage that one setting names (``storage_path``: a folder every node sees, or an s3://, gs:// URI; by default
the project's ``checkpoints/``); the code, when they join a cluster, as Ray ``py_modules`` (``ship_code``; or an
installed copy on every node). The driver puts the prepared arrays into ``<storage>/<run key>/images`` once
(``share_files``: a hard link on the same file system, else a streamed copy) and removes them when the run has
finished; each worker memory-maps them there (or, from an s3://, gs:// storage, from its own disk, fetched a
chunk at a time), so no process holds a split: a batch is read when it is drawn, as in one process.

Resuming: rank 0 writes ``<storage>/<run key>/last.pt`` (atomically) before it reports each checkpoint to
Ray, and a worker starts from that file when it exists - after Ray restarts failed workers
(``max_failures``) and after the whole ``dvc repro`` was killed, since the folder is not a DVC out. The
run key hashes the data, model and training parameters and the pretrained model, so other settings start
afresh. (Ray's own restore of a run of the same name is not used for this: a checkpoint reported just
before a kill may not be registered yet, and the file always is.)
"""

from __future__ import annotations

import csv
import hashlib
import json
import os
import shutil
import tempfile
import uuid
from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch

from sparse_vqvae.atomic import atomic_write, write_json
from sparse_vqvae.data import ImageArray, training_images
from sparse_vqvae.pictures import line_plot
from sparse_vqvae.provenance import source_fingerprint
from sparse_vqvae.train import load_checkpoint, make_optimizer, run_training, save_checkpoint

from .layout import PLOTS, PRETRAINED, TEST_IMAGES, TRAIN_IMAGES, VQVAE, VQVAE_DIR, checkpoints, project_root
from .params import PipelineParams, RaySettings, parse_params, ray_settings
from .pictures import dictionary_pictures
from .stage import run_stage
from .tracking import StageTracker

STAGE = "train_vqvae"
CURVES = PLOTS / "train_vqvae.csv"
TEST_CURVES = PLOTS / "test_psnr.csv"
CURVE_KEYS = ("loss", "reconstruction_mse", "latent_loss")


def run_key(params: PipelineParams) -> str:
    """Which run a checkpoint belongs to: the data, model and optimisation settings, the starting
    model and the library's source. Not the step count nor the eval/checkpoint cadence: a run asked
    to go on longer resumes; one of other code starts afresh."""
    train = {key: getattr(params.train, key) for key in ("batch_size", "lr", "seed")}
    settings = json.dumps({"data": asdict(params.data), "model": asdict(params.model), "train": train,
                           "source": source_fingerprint()}, sort_keys=True)
    return hashlib.sha256(settings.encode() + PRETRAINED.read_bytes()).hexdigest()[:16]


def storage_uri(settings: RaySettings) -> str:
    """The checkpoints' storage: the setting (a relative path is the project's), else <project>/checkpoints."""
    if settings.storage_path is None:
        return str(checkpoints())
    if "://" in settings.storage_path:
        return settings.storage_path.rstrip("/")
    return str((project_root() / settings.storage_path).resolve())


def read_stored(uri: str, name: str) -> bytes | None:
    """File ``name`` of storage folder ``uri`` (a path or s3://, gs://... through pyarrow, as Ray's own), or None."""
    import pyarrow.fs

    fs, base = pyarrow.fs.FileSystem.from_uri(uri)
    if fs.get_file_info(f"{base}/{name}").type == pyarrow.fs.FileType.NotFound:
        return None
    with fs.open_input_stream(f"{base}/{name}") as stream:
        return stream.readall()


def write_stored(uri: str, name: str, data: bytes) -> None:
    """Write ``name`` into storage folder ``uri`` whole or not at all (a temporary name, then a move)."""
    import pyarrow.fs

    fs, base = pyarrow.fs.FileSystem.from_uri(uri)
    fs.create_dir(base, recursive=True)
    scratch = f"{base}/.{name}.{uuid.uuid4().hex}"
    with fs.open_output_stream(scratch) as stream:
        stream.write(data)
    fs.move(scratch, f"{base}/{name}")


def remove_stored(folder: str, name: str) -> None:
    """Delete file or folder ``name`` of storage folder ``folder``, if there."""
    import pyarrow.fs

    fs, base = pyarrow.fs.FileSystem.from_uri(folder)
    found = fs.get_file_info(f"{base}/{name}").type
    if found == pyarrow.fs.FileType.Directory:
        fs.delete_dir(f"{base}/{name}")
    elif found != pyarrow.fs.FileType.NotFound:
        fs.delete_file(f"{base}/{name}")


SHARED = "shared.json"  # share_files' marker: which files the folder holds, written once they are whole


def share_files(paths: list[Path], folder: str) -> None:
    """Put local files into storage folder ``folder`` for the workers, unless its marker says they are there
    already (a resumed run copies nothing). Each is a hard link where the storage is this file system (no byte
    copied: the prepared files are replaced, never rewritten in place), else a streamed copy (pyarrow's, a chunk
    at a time): no file is read into memory."""
    import pyarrow.fs

    marker = json.dumps([[path.name, path.stat().st_size, path.stat().st_mtime_ns] for path in paths]).encode()
    if read_stored(folder, SHARED) == marker:
        return
    remove_stored(folder, SHARED)  # until the files are whole again
    fs, base = pyarrow.fs.FileSystem.from_uri(folder)
    fs.create_dir(base, recursive=True)
    for path in paths:
        if not _hard_link(path, fs, f"{base}/{path.name}"):
            pyarrow.fs.copy_files(str(path.resolve()), f"{base}/{path.name}", destination_filesystem=fs)
    write_stored(folder, SHARED, marker)


def _hard_link(path: Path, fs: Any, target: str) -> bool:
    """Link ``path`` at ``target`` where ``fs`` is this machine's file system and the link can be made there."""
    import pyarrow.fs

    if not isinstance(fs, pyarrow.fs.LocalFileSystem):
        return False
    Path(target).unlink(missing_ok=True)
    try:
        os.link(path, target)
    except OSError:  # another device, or a file system without hard links
        return False
    return True


def stored_file(folder: str, name: str, local: Path) -> Path:
    """File ``name`` of storage folder ``folder`` at a path of this node: where it is, on a file system this node
    mounts; else fetched (streamed) into the folder ``local``."""
    import pyarrow.fs

    fs, base = pyarrow.fs.FileSystem.from_uri(folder)
    if isinstance(fs, pyarrow.fs.LocalFileSystem):
        return Path(base) / name
    pyarrow.fs.copy_files(f"{base}/{name}", str(local / name), source_filesystem=fs)
    return local / name


def stored_step(uri: str) -> int:
    """The step of the run's last checkpoint in storage (0: none)."""
    data = read_stored(uri, "last.pt")
    if data is None:
        return 0
    with tempfile.TemporaryDirectory() as scratch:
        (Path(scratch) / "last.pt").write_bytes(data)
        return load_checkpoint(Path(scratch) / "last.pt").step


def runtime_env(settings: RaySettings) -> dict[str, Any] | None:
    """What a cluster's workers get with the job: this copy of sparse_vqvae/ and tasks/ as py_modules (the
    compiled extensions included: nodes of the driver's platform and Python) unless the nodes have the project
    installed (``ship_code: false``). Their Python packages (torch, ray, mlflow...) must be installed there."""
    ship = settings.ship_code if settings.ship_code != "auto" else settings.address is not None
    if not ship:
        return None
    import sparse_vqvae

    import tasks

    return {"py_modules": [str(Path(sparse_vqvae.__file__).parent), str(Path(tasks.__file__).parent)],
            "env_vars": {"RAY_TRAIN_ENABLE_PRINT_PATCH": "0"}}


def connect(settings: RaySettings, num_workers: int) -> None:
    """Join the cluster at the ``address`` setting, or start a local Ray instance on this machine's CPUs."""
    import ray

    # Errors only from Ray's own processes: without the dashboard (not in ray[train]) its
    # placement-group monitor warns every second that the state API is unavailable.
    quiet = ray.LoggingConfig(log_level="ERROR")
    os.environ.setdefault("RAY_TRAIN_ENABLE_PRINT_PATCH", "0")  # workers' prints reach the driver once, as printed
    if settings.address:
        ray.init(address=settings.address, logging_config=quiet, runtime_env=runtime_env(settings))
    else:  # "local": a new instance of our own, never a cluster some other process left running here
        ray.init(address="local", num_cpus=max(os.cpu_count() or 1, num_workers * settings.cpus_per_worker),
                 include_dashboard=False, logging_config=quiet, runtime_env=runtime_env(settings))


def wants_gpu(settings: RaySettings, num_workers: int) -> bool:
    import ray

    if settings.use_gpu == "auto":
        return ray.cluster_resources().get("GPU", 0) >= num_workers
    return bool(settings.use_gpu)


def live_tracking(uri: str, settings: RaySettings) -> bool:
    """Whether rank 0 can log to the tracking store itself: a server, or a local store on this machine's Ray.
    On a cluster, rank 0 may run on a node that has no such file: the driver logs the history afterwards."""
    local_store = uri.startswith(("sqlite:", "file:")) or "://" not in uri
    return not (local_store and settings.address)


def train_worker(loop: dict[str, Any]) -> None:
    """One Ray Train worker: resume or start from the pretrained model, train, report checkpoints."""
    import ray
    import ray.train
    import ray.train.torch

    context = ray.train.get_context()
    rank, world_size = context.get_world_rank(), context.get_world_size()
    params = parse_params(loop["params"])
    settings = RaySettings(**loop["settings"])
    torch.set_num_threads(settings.cpus_per_worker)
    torch.manual_seed(params.train.seed)
    device = ray.train.torch.get_device()
    stored = loop["storage"]
    local = Path(tempfile.mkdtemp(prefix="sparse-vqvae-worker-"))  # this worker's copies of what it reads
    try:
        last = read_stored(stored, "last.pt")
        resumed = last is not None
        (local / "start.pt").write_bytes(last if resumed else ray.get(loop["pretrained"]))
        checkpoint = load_checkpoint(local / "start.pt", device)
        history_data = read_stored(stored, "history.json") if resumed else None
        history = [row for row in json.loads(history_data) if row["step"] <= checkpoint.step] if history_data else []
        train = stored_file(loop["images"], TRAIN_IMAGES.name, local)
        test = stored_file(loop["images"], TEST_IMAGES.name, local) if rank == 0 else None
        _train(loop, params, checkpoint, history, local, rank, world_size, resumed, train, test)
    finally:
        shutil.rmtree(local, ignore_errors=True)


def _train(loop: dict[str, Any], params: PipelineParams, checkpoint: Any, history: list[dict], local: Path,
           rank: int, world_size: int, resumed: bool, train: Path, test: Path | None) -> None:
    import ray.train
    import ray.train.torch

    model = checkpoint.model
    optimizer = make_optimizer(model, params.train.lr)
    if resumed and checkpoint.optimizer_state is not None:
        optimizer.load_state_dict(checkpoint.optimizer_state)
    if rank == 0:
        print(f"starting at step {checkpoint.step}" + (f" of {loop['storage']}/last.pt" if resumed
                                                         else " (pretrained model)"), flush=True)
        print(f"worker code: {Path(__file__).resolve().parent}", flush=True)  # a shipped copy, on a cluster
    wrapped = ray.train.torch.prepare_model(model, parallel_strategy_kwargs={"forward_sync_buffers": False})
    tracker = StageTracker(loop["tracking_uri"], loop["run_id"]) if rank == 0 and loop["live_tracking"] else None
    run_config = {"params": params.for_outputs()}
    latest: dict[str, float] = {}

    def on_metrics(step: int, metrics: dict[str, float]) -> None:
        latest.update(metrics)
        if rank == 0 and (step % params.mlflow.log_every == 0 or "test_psnr" in metrics or step == params.train.steps):
            history.append({"step": step, **metrics})
            if tracker is not None:
                tracker.log_metrics(metrics, step)

    def on_checkpoint(step: int, epoch: int) -> None:
        report = {"step": step, **{k: v for k, v in latest.items() if isinstance(v, float)}}
        if rank != 0:
            ray.train.report(report)
            return
        folder = local / f"step{step}"
        folder.mkdir(parents=True, exist_ok=True)
        save_checkpoint(folder / "model.pt", model, optimizer, step, epoch, run_config)
        write_json(folder / "history.json", history)
        write_stored(loop["storage"], "history.json", (folder / "history.json").read_bytes())  # rows <= step kept
        write_stored(loop["storage"], "last.pt", (folder / "model.pt").read_bytes())
        print(f"checkpoint saved at step {step}", flush=True)
        ray.train.report(report, checkpoint=ray.train.Checkpoint.from_directory(str(folder)))
        shutil.rmtree(folder, ignore_errors=True)

    run_training(wrapped, optimizer, training_images(train, params.data), params.train,
                 step=checkpoint.step, rank=rank, world_size=world_size,
                 test_set=ImageArray(test) if test is not None else None,
                 progress=rank == 0, on_metrics=on_metrics, on_checkpoint=on_checkpoint)
    if checkpoint.step >= params.train.steps:  # resumed a finished run: report its checkpoint once more
        on_checkpoint(checkpoint.step, checkpoint.epoch)


def run(params: PipelineParams, tracker: StageTracker) -> dict[str, Any]:
    import ray
    from ray.train import CheckpointConfig, FailureConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer

    settings = ray_settings()
    workers = params.ray.num_workers
    key = run_key(params)
    storage = storage_uri(settings)
    start_step = stored_step(f"{storage}/{key}")
    print(f"[{STAGE}] run {key}: checkpoints in {storage}/{key}" + (f" (resuming at step {start_step})" if start_step else ""))
    live = live_tracking(tracker.uri, settings)
    share_files([TRAIN_IMAGES, TEST_IMAGES], f"{storage}/{key}/images")
    connect(settings, workers)
    try:
        loop = {"params": asdict(params), "settings": asdict(settings), "storage": f"{storage}/{key}",
                "pretrained": ray.put(PRETRAINED.read_bytes()), "images": f"{storage}/{key}/images",
                "tracking_uri": tracker.uri, "run_id": tracker.run_id, "live_tracking": live}
        use_gpu = wants_gpu(settings, workers)
        resources = {"CPU": settings.cpus_per_worker} | ({"GPU": 1} if use_gpu else {})
        trainer = TorchTrainer(
            train_worker,
            train_loop_config=loop,
            scaling_config=ScalingConfig(num_workers=workers, use_gpu=use_gpu, resources_per_worker=resources),
            run_config=RunConfig(name=key, storage_path=f"{storage}/ray",
                                 checkpoint_config=CheckpointConfig(num_to_keep=1),
                                 failure_config=FailureConfig(max_failures=settings.max_failures)),
        )
        result = trainer.fit()
    finally:
        ray.shutdown()
    remove_stored(f"{storage}/{key}", "images")  # a finished run's: a failed one keeps them to resume with
    with result.checkpoint.as_directory() as reported:
        with atomic_write(VQVAE) as handle:
            handle.write((Path(reported) / "model.pt").read_bytes())
        history = json.loads((Path(reported) / "history.json").read_text())
    if not live:  # rank 0 could not reach the store: its history, logged now
        tracker.log_history(history)
    figures = _publish(history, params, tracker)
    tracker.timings["gpu_workers"] = int(use_gpu)
    return figures | {"start_step": start_step, "steps_trained": figures["steps"] - start_step, "workers": workers,
                      "source": source_fingerprint()}  # the library that trained it: the zoo card names it


def _publish(history: list[dict], params: PipelineParams, tracker: StageTracker) -> dict[str, Any]:
    """Curves (CSV for DVC plots, PNG for MLflow), dictionary pictures; the final figures."""
    PLOTS.mkdir(parents=True, exist_ok=True)
    with atomic_write(CURVES, "w") as handle:
        writer = csv.writer(handle)
        writer.writerow(("step",) + CURVE_KEYS)
        writer.writerows([row["step"]] + [row.get(key, "") for key in CURVE_KEYS] for row in history)
    tests = [row for row in history if "test_psnr" in row]
    with atomic_write(TEST_CURVES, "w") as handle:
        writer = csv.writer(handle)
        writer.writerow(("step", "test_psnr", "baseline_psnr"))
        writer.writerows((row["step"], row["test_psnr"], row["baseline_psnr"]) for row in tests)
    steps = [row["step"] for row in history]
    pictures = [
        line_plot({key: (steps, [row[key] for row in history]) for key in CURVE_KEYS}, VQVAE_DIR / "training_loss.png",
                  "step", "loss", f"stage 1 ({params.model.selection_fn})", logy=True),
        line_plot({"test PSNR": ([r["step"] for r in tests], [r["test_psnr"] for r in tests]),
                   "mean-colour baseline": ([r["step"] for r in tests], [r["baseline_psnr"] for r in tests])},
                  VQVAE_DIR / "test_psnr.png", "step", "dB", "test PSNR"),
    ]
    model = load_checkpoint(VQVAE).model
    pictures += dictionary_pictures(model, VQVAE_DIR, "dictionary")
    for path in pictures:
        tracker.log_artifact(path, "pictures")
    tracker.log_artifact(VQVAE, "checkpoints")
    final = tests[-1] if tests else {}
    return {"steps": history[-1]["step"] if history else 0,
            **{key: final[key] for key in ("test_psnr", "test_ssim", "test_mse", "baseline_psnr") if key in final}}


def main() -> None:
    run_stage(STAGE, run)


if __name__ == "__main__":
    main()
