"""VQ-VAE-2 training cost and quality per quantizer, measured in one run.

1. Step time: forward + backward + optimizer step on 32x32 images, batch 128, for vanilla,
   residual VQ (K=2), OMP (K=1, K=2, K=4) and the LASSO ("lasso", default alpha), the same model otherwise; median of
   several steps after warm-up, and the ratio to vanilla.
2. Quality: each variant trained for the same short budget on the embedded photographs, test
   PSNR (from the whole-set MSE) beside the mean-colour baseline; and OMP K=2 with its dictionary
   frozen after the data initialisation, same seed and budget, to show what learning it buys.

    python benchmarks/train_step.py               # 300 training steps per variant
    python benchmarks/train_step.py --quick       # timing only, and 30 training steps
    python benchmarks/train_step.py --defaults --variants omp_k1 --output benchmarks/results/omp_k1_defaults_vs_vanilla.json
                                                  # issue 26's check: the pipeline's own model (256 atoms, 8 learned
                                                  # levels), OMP K=1 against vanilla from scratch
"""

from __future__ import annotations

import argparse
import statistics
import time
from dataclasses import asdict
from pathlib import Path

import torch
from _results import RESULTS, write_json

from sparse_vqvae.config import DataConfig, ModelConfig, TrainConfig
from sparse_vqvae.data import load_dataset
from sparse_vqvae.train import evaluate, make_optimizer, train_step
from sparse_vqvae.vqvae import VQVAE2

# Every variant over 512 atoms (codebook entries), sparse coefficients on 32 uniform levels: the
# comparison this benchmark has always made, whatever the pipeline's default model.
_COMMON = dict(num_atoms=512, coef_levels=32, coef_quantizer="uniform")
VARIANTS = {
    "vanilla": dict(_COMMON, selection_fn="vanilla"),
    "rvq_k2": dict(_COMMON, selection_fn="rvq", stages=2),
    "omp_k1": dict(_COMMON, selection_fn="omp", n_nonzero=1),
    "qmp_k1": dict(_COMMON, selection_fn="qmp", n_nonzero=1),  # the (atom, level) pair chosen together
    "omp_k2": dict(_COMMON, selection_fn="omp", n_nonzero=2),
    "omp_k4": dict(_COMMON, selection_fn="omp", n_nonzero=4),
    "lasso": dict(_COMMON, selection_fn="lasso"),
}


def step_time(config: ModelConfig, images: torch.Tensor, warmup: int, repeats: int,
              device: torch.device = torch.device("cpu")) -> float:
    """Median milliseconds of one training step after ``warmup`` steps (the device synchronised)."""
    torch.manual_seed(0)
    model = VQVAE2(config).to(device)
    images = images.to(device)
    optimizer = make_optimizer(model, 3e-4)
    times = []
    for i in range(warmup + repeats):
        start = time.perf_counter()
        train_step(model, images, optimizer)
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        if i >= warmup:
            times.append(time.perf_counter() - start)
    return statistics.median(times) * 1000


def train_briefly(config: ModelConfig, steps: int, train_set, test_set, freeze_dictionary: bool = False) -> dict:
    torch.manual_seed(0)
    model = VQVAE2(config)
    optimizer = make_optimizer(model, TrainConfig().lr)
    loader = torch.utils.data.DataLoader(train_set, batch_size=128, shuffle=True, drop_last=True,
                                         generator=torch.Generator().manual_seed(0))
    step, start = 0, time.perf_counter()
    while step < steps:
        for images in loader:
            metrics = train_step(model, images, optimizer)
            step += 1
            if freeze_dictionary and step == 1:  # keep the data-initialised dictionary as it is
                for quantizer in model.quantizers:
                    quantizer.dictionary.requires_grad_(False)
                    quantizer.restart_dead = False
            if step == steps:
                break
    result = evaluate(model, test_set)
    result.update(train_seconds=time.perf_counter() - start, train_loss=metrics["loss"])
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="fewer timed steps and 30 training steps")
    parser.add_argument("--steps", type=int, default=None, help="training steps per variant for the quality part")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--variants", default=",".join(VARIANTS), help="comma-separated subset (vanilla always runs)")
    parser.add_argument("--output", type=Path, default=RESULTS / "train_step.json")
    parser.add_argument("--defaults", action="store_true",
                        help="every variant on the pipeline's default model (params.yaml's atoms and levels), not on "
                             "512 atoms with 32 uniform levels")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    steps = args.steps or (30 if args.quick else 300)
    warmup, repeats = (1, 3) if args.quick else (2, 7)

    data = DataConfig()
    train_set, test_set = load_dataset(data, "train"), load_dataset(data, "test")
    images = torch.stack([train_set[i] for i in range(128)])
    unknown = set(args.variants.split(",")) - set(VARIANTS)
    if unknown:
        parser.error(f"--variants: unknown {sorted(unknown)}; choose from {', '.join(VARIANTS)}")
    variants = {name: VARIANTS[name] for name in VARIANTS if name == "vanilla" or name in args.variants.split(",")}
    if args.defaults:
        variants = {name: {k: v for k, v in overrides.items() if k not in _COMMON} for name, overrides in variants.items()}
    results: dict[str, dict] = {}
    for name, overrides in variants.items():
        results[name] = {"ms_per_step": step_time(ModelConfig(**overrides), images, warmup, repeats)}
    for name in variants:
        results[name]["ratio_to_vanilla"] = results[name]["ms_per_step"] / results["vanilla"]["ms_per_step"]
        quality = train_briefly(ModelConfig(**variants[name]), steps, train_set, test_set)
        results[name].update({k: quality[k] for k in ("test_mse", "test_psnr", "baseline_psnr", "train_seconds")})
    if "omp_k2" in variants:
        frozen = train_briefly(ModelConfig(**VARIANTS["omp_k2"]), steps, train_set, test_set, freeze_dictionary=True)
        results["omp_k2"]["frozen_dictionary_test_psnr"] = frozen["test_psnr"]
        results["omp_k2"]["frozen_dictionary_test_mse"] = frozen["test_mse"]

    print(f"32x32 embedded crops, batch 128, {torch.get_num_threads()} threads; quality after {steps} steps")
    header = f"{'variant':>8}  {'ms/step':>8}  {'x vanilla':>9}  {'test PSNR':>9}  {'baseline':>8}"
    print(header + "\n" + "-" * len(header))
    for name, row in results.items():
        print(f"{name:>8}  {row['ms_per_step']:8.0f}  {row['ratio_to_vanilla']:9.2f}  {row['test_psnr']:9.2f}  "
              f"{row['baseline_psnr']:8.2f}")
    if "omp_k2" in variants:
        print(f"omp_k2 with the dictionary frozen after initialisation: test PSNR {frozen['test_psnr']:.2f} dB "
              f"(learned: {results['omp_k2']['test_psnr']:.2f} dB)")
    model = {k: v for k, v in asdict(ModelConfig(**variants["vanilla"])).items() if k in _COMMON}
    out = {"steps": steps, "batch_size": 128, "image_size": 32, "threads": torch.get_num_threads(), "model": model,
           **results}
    write_json(args.output, out)


if __name__ == "__main__":
    main()
