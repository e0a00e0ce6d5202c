"""Stage 3: train the VQ-VAE-2 on Ray Train, from the pretrained model.

``TorchTrainer`` runs ``train_worker`` on ``ray.num_workers`` workers (GPU workers when the
cluster has GPUs and ``ray.use_gpu`` allows, else CPU workers with DDP over gloo); the quantizers
all-reduce their EMA and dictionary statistics themselves. Rank 0 alone logs to MLflow and writes
checkpoints; every worker reports to Ray the same number of times.

Resuming: rank 0 writes ``checkpoints/<run key>/last.pt`` (atomically) before it reports each
checkpoint to Ray, and a worker starts from that file when it exists - after Ray restarts failed
workers (``ray.max_failures``) and after the whole ``dvc repro`` was killed, since the folder is not
a DVC out. The run key hashes the data, model and training parameters and the pretrained model, so
other settings start afresh. (Ray's own restore of a run of the same name is not used for this: a
checkpoint reported just before a kill may not be registered yet, and the file always is.)
"""

from __future__ import annotations

import csv
import hashlib
import json
import os
import shutil
from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch

from sparse_vqvae.atomic import atomic_write, write_json
from sparse_vqvae.data import ImageArray, training_images
from sparse_vqvae.pictures import line_plot
from sparse_vqvae.provenance import source_fingerprint
from sparse_vqvae.train import load_checkpoint, make_optimizer, run_training, save_checkpoint

from .layout import CHECKPOINTS, PLOTS, PRETRAINED, TEST_IMAGES, TRAIN_IMAGES, VQVAE, VQVAE_DIR
from .params import PipelineParams, RayConfig, parse_params
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


def connect(config: RayConfig) -> None:
    """Join the cluster at ``ray.address``, or start a local Ray instance on this machine's CPUs."""
    import ray

    # Errors only from Ray's own processes: without the dashboard (not in ray[train]) its
    # placement-group monitor warns every second that the state API is unavailable.
    quiet = ray.LoggingConfig(log_level="ERROR")
    os.environ.setdefault("RAY_TRAIN_ENABLE_PRINT_PATCH", "0")  # workers' prints reach the driver once, as printed
    if config.address:
        ray.init(address=config.address, logging_config=quiet)
    else:  # "local": a new instance of our own, never a cluster some other process left running here
        ray.init(address="local", num_cpus=max(os.cpu_count() or 1, config.num_workers * config.cpus_per_worker),
                 include_dashboard=False, logging_config=quiet)


def wants_gpu(config: RayConfig) -> bool:
    import ray

    if config.use_gpu == "auto":
        return ray.cluster_resources().get("GPU", 0) >= config.num_workers
    return bool(config.use_gpu)


def train_worker(loop: dict[str, Any]) -> None:
    """One Ray Train worker: resume or start from the pretrained model, train, report checkpoints."""
    import ray.train
    import ray.train.torch

    context = ray.train.get_context()
    rank, world_size = context.get_world_rank(), context.get_world_size()
    params = parse_params(loop["params"])
    torch.set_num_threads(params.ray.cpus_per_worker)
    torch.manual_seed(params.train.seed)
    device = ray.train.torch.get_device()
    last, history_file = Path(loop["last"]), Path(loop["last"]).with_suffix(".json")
    resumed = last.is_file()
    checkpoint = load_checkpoint(last if resumed else loop["pretrained"], device)
    history = [row for row in json.loads(history_file.read_text()) if row["step"] <= checkpoint.step] \
        if resumed and history_file.is_file() else []
    model = checkpoint.model
    optimizer = make_optimizer(model, params.train.lr)
    if resumed and checkpoint.optimizer_state is not None:
        optimizer.load_state_dict(checkpoint.optimizer_state)
    if rank == 0:
        print(f"starting at step {checkpoint.step}" + (f" of {last}" if resumed else " (pretrained model)"), flush=True)
    wrapped = ray.train.torch.prepare_model(model, parallel_strategy_kwargs={"forward_sync_buffers": False})
    tracker = StageTracker(loop["tracking_uri"], loop["run_id"]) if rank == 0 else None
    run_config = {"params": params.for_outputs()}
    latest: dict[str, float] = {}

    def on_metrics(step: int, metrics: dict[str, float]) -> None:
        latest.update(metrics)
        if rank == 0 and (step % params.mlflow.log_every == 0 or "test_psnr" in metrics or step == params.train.steps):
            history.append({"step": step, **metrics})
            tracker.log_metrics(metrics, step)

    def on_checkpoint(step: int, epoch: int) -> None:
        report = {"step": step, **{k: v for k, v in latest.items() if isinstance(v, float)}}
        if rank != 0:
            ray.train.report(report)
            return
        write_json(history_file, history)
        save_checkpoint(last, model, optimizer, step, epoch, run_config)
        print(f"checkpoint saved at step {step}", flush=True)
        folder = Path(loop["scratch"]) / f"step{step}"
        folder.mkdir(parents=True, exist_ok=True)
        shutil.copy2(last, folder / "model.pt")
        shutil.copy2(history_file, folder / "history.json")
        ray.train.report(report, checkpoint=ray.train.Checkpoint.from_directory(str(folder)))
        shutil.rmtree(folder, ignore_errors=True)

    run_training(wrapped, optimizer, training_images(loop["train_images"], params.data), params.train, step=checkpoint.step, rank=rank,
                 world_size=world_size, test_set=ImageArray(loop["test_images"]) if rank == 0 else None,
                 progress=rank == 0, on_metrics=on_metrics, on_checkpoint=on_checkpoint)
    if checkpoint.step >= params.train.steps:  # resumed a finished run: report its checkpoint once more
        on_checkpoint(checkpoint.step, checkpoint.epoch)


def run(params: PipelineParams, tracker: StageTracker) -> dict[str, Any]:
    import ray
    from ray.train import CheckpointConfig, FailureConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer

    key = run_key(params)
    folder = (CHECKPOINTS / key).resolve()
    last = folder / "last.pt"
    loop = {"params": asdict(params),
            "pretrained": str(PRETRAINED.resolve()), "last": str(last),
            "scratch": str(folder / "scratch"), "train_images": str(TRAIN_IMAGES.resolve()),
            "test_images": str(TEST_IMAGES.resolve()), "tracking_uri": tracker.uri, "run_id": tracker.run_id}
    start_step = load_checkpoint(last).step if last.is_file() else 0
    print(f"[{STAGE}] run {key}: checkpoints in {folder}" + (f" (resuming at step {start_step})" if start_step else ""))
    connect(params.ray)
    try:
        use_gpu = wants_gpu(params.ray)
        resources = {"CPU": params.ray.cpus_per_worker} | ({"GPU": 1} if use_gpu else {})
        trainer = TorchTrainer(
            train_worker,
            train_loop_config=loop,
            scaling_config=ScalingConfig(num_workers=params.ray.num_workers, use_gpu=use_gpu,
                                         resources_per_worker=resources),
            run_config=RunConfig(name=key, storage_path=str(folder.parent / "ray"),
                                 checkpoint_config=CheckpointConfig(num_to_keep=1),
                                 failure_config=FailureConfig(max_failures=params.ray.max_failures)),
        )
        result = trainer.fit()
    finally:
        ray.shutdown()
    with result.checkpoint.as_directory() as reported:
        with atomic_write(VQVAE) as handle:
            handle.write((Path(reported) / "model.pt").read_bytes())
        history = json.loads((Path(reported) / "history.json").read_text())
    figures = _publish(history, params, tracker)
    return figures | {"start_step": start_step, "steps_trained": figures["steps"] - start_step,
                      "workers": params.ray.num_workers, "gpu_workers": int(use_gpu)}


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
