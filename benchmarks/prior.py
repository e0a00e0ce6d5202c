"""The PixelSNAIL prior against the factorised baseline, on real extracted codes, in one run.

For each selection_fn (vanilla, omp): train a VQ-VAE-2 briefly on a dataset, extract the train
and test codes into LMDB, fit the factorised baseline and train the top and bottom priors on the
train codes, then report the test bits per image of both (top + bottom), the prior's training
step time and its sampling time per image (top, then bottom given top, then decoding).

    python benchmarks/prior.py                  # embedded photographs (and CIFAR-10 in ../shared when present)
    python benchmarks/prior.py --quick          # a smoke run: few steps, embedded only
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from _results import RESULTS, write_json

from sparse_vqvae.code_store import CodeStore, code_batches, extract_codes
from sparse_vqvae.config import DataConfig, ModelConfig, TrainConfig
from sparse_vqvae.data import load_dataset
from sparse_vqvae.entropy_coding import FrequencyModel
from sparse_vqvae.generation import sample
from sparse_vqvae.pixelsnail import PixelSNAIL
from sparse_vqvae.prior_train import bits_per_image, prior_configs, train_prior
from sparse_vqvae.train import train

SELECTION_FNS = {"vanilla": dict(selection_fn="vanilla", num_atoms=512),  # the models its README table names
                 "omp": dict(selection_fn="omp", n_nonzero=2, num_atoms=512, coef_levels=32, coef_quantizer="uniform")}
CIFAR = Path(__file__).resolve().parents[2] / "shared" / "data" / "cifar10-jpeg" / "train"


def run_one(name: str, data: DataConfig, vqvae_steps: int, prior_steps: int, workdir: Path) -> dict:
    train_set, test_set = load_dataset(data, "train"), load_dataset(data, "test")
    model, _ = train(ModelConfig(**SELECTION_FNS[name]), TrainConfig(steps=vqvae_steps, seed=0), train_set,
                     progress=False)
    model.eval()
    extract = extract_codes(model, train_set, workdir / f"{name}-train", progress=False)
    extract_codes(model, test_set, workdir / f"{name}-test", progress=False)
    train_store = CodeStore(workdir / f"{name}-train", model.fingerprint())
    test_store = CodeStore(workdir / f"{name}-test", model.fingerprint())
    meta = train_store.meta  # the codes stream from the stores, a batch at a time

    frequencies = FrequencyModel.fit(train_store, meta)
    factorized = float(np.mean([frequencies.bits(tuple(m[i] for m in batch))
                                for batch in code_batches(test_store, 256) for i in range(batch[0].atoms.shape[0])]))
    priors, step_times, prior_bits = [], [], 0.0
    for level, config in enumerate(prior_configs(meta)):
        torch.manual_seed(0)
        prior = PixelSNAIL(config)
        stamps = [time.perf_counter()]
        train_prior(prior, train_store, level, prior_steps, batch_size=64, lr=1e-3, seed=level, progress=False,
                    on_metrics=lambda step, metrics: stamps.append(time.perf_counter()))
        step_times += [b - a for a, b in zip(stamps, stamps[1:])]
        prior_bits += bits_per_image(prior, test_store, level)
        priors.append(prior.eval())

    samples = 8
    start = time.perf_counter()
    top = sample(priors[0], samples, temperature=1.0, generator=torch.Generator().manual_seed(0))
    maps = [top] + [sample(prior, samples, condition=top, generator=torch.Generator().manual_seed(1))
                    for prior in priors[1:]]
    with torch.no_grad():
        images = model.decode_codes(tuple(maps))
    sample_seconds = (time.perf_counter() - start) / samples
    assert images.shape[0] == samples
    return {
        "prior_bits_per_image": prior_bits,
        "factorized_bits_per_image": factorized,
        "ratio_to_factorized": prior_bits / factorized,
        "train_ms_per_step": statistics.median(step_times) * 1000,
        "sample_s_per_image": sample_seconds,
        "extract_images_per_s": extract["images_per_s"],
        "vqvae_steps": vqvae_steps,
        "prior_steps": prior_steps,
        "train_images": len(train_set),
        "test_images": len(test_set),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--vqvae-steps", type=int, default=None)
    parser.add_argument("--prior-steps", type=int, default=None)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--output", type=Path, default=RESULTS / "prior.json")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    vqvae_steps = args.vqvae_steps or (20 if args.quick else 300)
    prior_steps = args.prior_steps or (20 if args.quick else 500)
    datasets = {"embedded": DataConfig()}
    if CIFAR.is_dir() and not args.quick:
        datasets["cifar10"] = DataConfig(name="imagefolder", root=str(CIFAR), test_fraction=0.02)

    results: dict[str, dict] = {}
    with tempfile.TemporaryDirectory() as workdir:
        for dataset, data in datasets.items():
            for name in SELECTION_FNS:
                key = name if dataset == "embedded" else f"{name}_{dataset}"
                results[key] = {"dataset": dataset, **run_one(name, data, vqvae_steps, prior_steps,
                                                             Path(workdir) / dataset)}
                print(f"{key}: {results[key]}", flush=True)

    header = f"{'variant':>16}  {'prior bits':>10}  {'factorized':>10}  {'ratio':>6}  {'ms/step':>8}  {'s/sample':>8}"
    print(header + "\n" + "-" * len(header))
    for key, r in results.items():
        print(f"{key:>16}  {r['prior_bits_per_image']:10.1f}  {r['factorized_bits_per_image']:10.1f}  "
              f"{r['ratio_to_factorized']:6.3f}  {r['train_ms_per_step']:8.1f}  {r['sample_s_per_image']:8.3f}")
    write_json(args.output, results)


if __name__ == "__main__":
    main()
