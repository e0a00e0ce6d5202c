"""The GPU figures in one run of a few minutes, for when a CUDA device is at hand.

1. Sparse coding on 131,072 signals (d=64, N=512, as benchmarks/sparse_coding.py): OMP K=3/5/8 and the
   LASSO solvers on the GPU, beside the same solvers on this machine's CPU (a slice of the signals, all
   cores) as the reference of the same run.
2. One stage-1 training step per quantizer (32x32 images, batch 128), and the ratio to vanilla.
3. PixelSNAIL sampling, and the codec (factorised and prior-coded files) against Pillow's JPEG.
   The model has params.yaml's shape, trained 300 steps on the embedded photographs' crops;
   the priors are untrained (speed does not depend on their weights). Priors without position
   embeddings (``prior.positions: none``) prior-code 128x128 crops: the coder's time per position.
4. A few stage-1 steps through Ray Train, the workers asking for GPUs as ``ray.use_gpu: auto`` does
   (when Ray is installed).

    python benchmarks/gpu.py                       # on a CUDA machine: about 3 minutes
    python benchmarks/gpu.py --device cpu --quick  # the same code path on a CPU, small sizes
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import tempfile
import time
import traceback
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from _results import RESULTS, write_json
from codec import measure
from sparse_coding import run as sparse_coding_run
from train_step import VARIANTS, step_time

from sparse_vqvae.code_store import CodeStore, extract_codes
from sparse_vqvae.codec import Codec, map_sizes
from sparse_vqvae.config import DataConfig, ModelConfig, TrainConfig
from sparse_vqvae.data import EMBEDDED_TEST, embedded_photo_dir, load_dataset, save_image_array
from sparse_vqvae.data import ImageArray, to_model_range
from sparse_vqvae.entropy_coding import FrequencyModel
from sparse_vqvae.generation import sample_maps
from sparse_vqvae.pixelsnail import PixelSNAIL
from sparse_vqvae.prior_coding import PriorEntropyModel
from sparse_vqvae.prior_train import prior_configs
from sparse_vqvae.train import make_optimizer, run_training
from sparse_vqvae.vqvae import VQVAE2


# The model of the codec and Ray rows: OMP with the defaults' other settings (the project's quantizer; `make run`'s
# default was OMP until it moved to vanilla, so a rerun still measures a sparse code)
MODEL = ModelConfig(selection_fn="omp")


def sparse_coding(device: torch.device, signals: int, cpu_signals: int) -> dict[str, Any]:
    """Every solver on ``device`` and on the CPU; the speed-up is the ratio of signals per second against the
    same variant on the CPU (``homotopy``: each device's default form) and against the CPU's per-signal OMP
    (``rows``, its default) for the OMP rows."""
    on_device = sparse_coding_run(signals, device, with_references=False)
    on_cpu = sparse_coding_run(cpu_signals, torch.device("cpu"), with_references=False)
    cpu = {(row["method"], row["k"], row["variant"]): row["signals_per_s"] for row in on_cpu["rows"]}
    rows = []
    for row in on_device["rows"]:
        same = cpu[row["method"], row["k"], row["variant"]]
        rows.append({**row, "ms": 1000 * signals / row["signals_per_s"], "cpu_signals_per_s": same,
                     "speed_ratio_vs_cpu": row["signals_per_s"] / same})
        if (row["method"], row["k"], "rows") in cpu:
            rows[-1]["speed_ratio_vs_cpu_rows"] = row["signals_per_s"] / cpu[row["method"], row["k"], "rows"]
    return {"signals": signals, "cpu_signals": cpu_signals, "rows": rows,
            "matmul_peak_gflops": on_device["matmul_peak_gflops"]}


def stage1_steps(device: torch.device, images: torch.Tensor, repeats: int) -> dict[str, dict[str, float]]:
    """benchmarks/train_step.py's timing, on ``device``."""
    rows = {name: {"ms_per_step": step_time(ModelConfig(**overrides), images, 2, repeats, device)}
            for name, overrides in VARIANTS.items()}
    for row in rows.values():
        row["ratio_to_vanilla"] = row["ms_per_step"] / rows["vanilla"]["ms_per_step"]
    return rows


def prior_and_codec(device: torch.device, train_set, workdir: Path, steps: int, images: int,
                    prior_images: int, photo_size: tuple[int, int], prior_crop: int) -> dict[str, Any]:
    """A briefly trained model, its code store and entropy models; sampling and file throughput."""
    torch.manual_seed(0)
    model = VQVAE2(MODEL).to(device)
    run_training(model, make_optimizer(model, TrainConfig().lr), train_set, TrainConfig(steps=steps), progress=False)
    model.eval()
    extract_codes(model, train_set, workdir / "codes", batch_size=256, progress=False)
    store = CodeStore(workdir / "codes", model.fingerprint())
    meta = store.meta
    frequencies = FrequencyModel.fit(store, meta)  # a batch of codes at a time
    priors = []
    for level, config in enumerate(prior_configs(meta)):
        torch.manual_seed(level)
        priors.append(PixelSNAIL(config).to(device).eval())

    samples = 8
    generator = torch.Generator(device=device).manual_seed(0)
    sample_maps(priors, 1, generator=generator)  # warm-up
    start = time.perf_counter()
    with torch.no_grad():
        decoded = model.decode_codes(sample_maps(priors, samples, generator=generator))
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    sample_seconds = (time.perf_counter() - start) / samples
    assert decoded.shape[0] == samples

    crops = [train_set[i] for i in range(images)]
    height, width = photo_size
    photos = [to_model_range(np.array(Image.open(embedded_photo_dir() / name).convert("RGB"))[:height, :width])
              for name in EMBEDDED_TEST]  # the embedded test photographs, cut to one size
    codec = Codec(model, frequencies)
    prior_codec = Codec(model, PriorEntropyModel(priors, model.fingerprint()))
    # Priors without position embeddings code any size: the prior coder's time per position on bigger crops.
    any_size = [PixelSNAIL(config).eval() for config in prior_configs(meta, positions="none")]
    any_size_codec = Codec(model, PriorEntropyModel(any_size, model.fingerprint()))
    side = prior_crop
    prior_crops = [photo[:, :side, :side] for photo in photos]
    return {"model_steps": steps, "sample_s_per_image": sample_seconds, "sample_batch": samples,
            "crops_32": measure("32x32", crops, codec),
            "crops_32_prior": measure("32x32 (prior)", crops[:prior_images], prior_codec),
            "photos": measure(f"{height}x{width} photos", photos, codec),
            f"crops_{side}_prior_any_size": {
                **measure(f"{side}x{side} (any-size priors)", prior_crops, any_size_codec),
                "positions": sum(h * w for h, w in map_sizes(model, side, side))}}


def ray_worker(loop: dict[str, Any]) -> None:
    """One Ray Train worker: the stage's training loop (run_training) for a few steps, timed per step."""
    import ray.train
    import ray.train.torch

    device = ray.train.torch.get_device()
    context = ray.train.get_context()
    torch.manual_seed(0)
    model = VQVAE2(ModelConfig(**loop["model"])).to(device)
    optimizer = make_optimizer(model, TrainConfig().lr)
    wrapped = ray.train.torch.prepare_model(model, parallel_strategy_kwargs={"forward_sync_buffers": False})
    stamps: list[float] = []

    def on_metrics(step: int, metrics: dict[str, Any]) -> None:
        stamps.append(time.perf_counter())  # the step's losses are floats: the device has finished it

    run_training(wrapped, optimizer, ImageArray(loop["images"]), TrainConfig(steps=loop["steps"]),
                 rank=context.get_world_rank(), world_size=context.get_world_size(), progress=False,
                 on_metrics=on_metrics)
    gaps = [b - a for a, b in zip(stamps[2:], stamps[3:])]  # after two warm-up steps
    with tempfile.TemporaryDirectory() as folder:  # Ray keeps the metrics of a report with a checkpoint
        ray.train.report({"ms_per_step": 1000 * statistics.median(gaps), "device": str(device)},
                         checkpoint=ray.train.Checkpoint.from_directory(folder))


def ray_train(images_file: Path, steps: int, workdir: Path) -> dict[str, Any]:
    """Stage-1 steps through Ray Train's TorchTrainer on a local Ray instance; GPU workers when it has GPUs."""
    try:
        import ray
        from ray.train import RunConfig, ScalingConfig
        from ray.train.torch import TorchTrainer
    except ImportError as error:
        return {"skipped": f"Ray is not installed here ({error})"}
    ray.init(address="local", include_dashboard=False, logging_config=ray.LoggingConfig(log_level="ERROR"))
    try:
        from tasks.params import RayConfig
        from tasks.train_vqvae import wants_gpu

        use_gpu = wants_gpu(RayConfig(num_workers=1))  # ray.use_gpu: auto, one worker
        start = time.perf_counter()
        result = TorchTrainer(ray_worker, train_loop_config={"model": asdict(MODEL), "images": str(images_file),
                                                             "steps": steps},
                              scaling_config=ScalingConfig(num_workers=1, use_gpu=use_gpu),
                              run_config=RunConfig(name="gpu-benchmark", storage_path=str(workdir / "ray"))).fit()
        seconds = time.perf_counter() - start
    finally:
        ray.shutdown()
    return {"use_gpu": use_gpu, "steps": steps, "fit_seconds": seconds, **result.metrics}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--quick", action="store_true", help="small sizes: to try the code path on a CPU")
    parser.add_argument("--output", type=Path, default=RESULTS / "gpu.json")
    args = parser.parse_args()
    device = torch.device(args.device)
    torch.set_num_threads(os.cpu_count() or 1)
    sizes = (dict(signals=4096, cpu_signals=2048, repeats=2, codec_steps=5, images=8, prior_images=2,
                  photo=(64, 64), prior_crop=32, ray_steps=6) if args.quick else
             dict(signals=131072, cpu_signals=16384, repeats=10, codec_steps=300, images=256, prior_images=16,
                  photo=(288, 448), prior_crop=128, ray_steps=50))

    data = DataConfig()
    train_set = load_dataset(data, "train")
    batch = torch.stack([train_set[i] for i in range(128)])
    started = time.perf_counter()
    result: dict[str, Any] = {
        "device": str(device), "gpu": torch.cuda.get_device_name(device) if device.type == "cuda" else None,
        "torch": torch.__version__, "cpu_count": os.cpu_count(), "machine": platform.processor() or platform.machine(),
        "quick": args.quick,
    }
    print(f"{device} ({result['gpu'] or result['machine']}), torch {torch.__version__}", flush=True)

    def section(name: str, measure_it, report) -> None:
        """One part of the run; a failure is recorded with its message and the other parts still run."""
        try:
            result[name] = measure_it()
            report(result[name])
        except Exception as error:  # noqa: BLE001 - a lent GPU's minutes are few: keep the other figures
            result[name] = {"error": f"{type(error).__name__}: {error}"}
            traceback.print_exc()
        write_json(args.output, result)  # after every part: what finished survives a time-out

    section("sparse_coding", lambda: sparse_coding(device, sizes["signals"], sizes["cpu_signals"]),
            print_sparse_coding)
    section("stage1_step", lambda: stage1_steps(device, batch, sizes["repeats"]), print_stage1)
    with tempfile.TemporaryDirectory() as workdir:
        section("prior_and_codec", lambda: prior_and_codec(device, train_set, Path(workdir), sizes["codec_steps"],
                                                           sizes["images"], sizes["prior_images"], sizes["photo"],
                                                           sizes["prior_crop"]),
                lambda r: print(f"PixelSNAIL sampling: {r['sample_s_per_image']:.3f} s an image", flush=True))
        images_file = Path(workdir) / "train.npy"
        save_image_array(train_set, images_file)
        section("ray_train", lambda: ray_train(images_file, sizes["ray_steps"], Path(workdir)),
                lambda r: print(f"Ray Train: {r}", flush=True))
    result["seconds"] = time.perf_counter() - started
    print(f"{result['seconds']:.0f} s in all")
    write_json(args.output, result)


def print_sparse_coding(part: dict[str, Any]) -> None:
    print(f"{'method':>6} {'K':>2} {'variant':>16} {'ms':>9} {'signals/s':>12} {'x CPU':>7} {'x rows':>7} "
          f"{'rel err':>8}")
    for row in part["rows"]:
        rows = f"{row['speed_ratio_vs_cpu_rows']:7.1f}" if "speed_ratio_vs_cpu_rows" in row else f"{'-':>7}"
        print(f"{row['method']:>6} {row['k']:>2} {row['variant']:>16} {row['ms']:9.2f} {row['signals_per_s']:12,.0f} "
              f"{row['speed_ratio_vs_cpu']:7.1f} {rows} {row['relative_error']:8.4f}", flush=True)


def print_stage1(part: dict[str, dict[str, float]]) -> None:
    for name, row in part.items():
        print(f"stage-1 step {name:>8}: {row['ms_per_step']:7.1f} ms ({row['ratio_to_vanilla']:.2f}x vanilla)",
              flush=True)


if __name__ == "__main__":
    main()
