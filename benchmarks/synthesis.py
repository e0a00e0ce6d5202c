"""Synthesis quality on CIFAR-10, measured by the project's judge (issue 30): how close a family's images
are to held-out real ones, next to the reference points that bracket them.

For each family (a trained VQ-VAE, its PixelSNAIL priors and its factorised model), against the judge's
held-out CIFAR-10 images (the reference):

- ``real``: training images (not held out): the floor, what a perfect generator would score;
- ``reconstruction``: held-out images through the VQ-VAE: what the decoder alone can reach;
- ``factorised``: codes drawn from the factorised model (``FrequencyModel.sample``: no spatial context),
  decoded: the baseline a prior must beat;
- ``pixelsnail_t<T>``: codes drawn from the priors (``generation.sample_maps``) at temperature T, decoded.

Each gets ``fd`` (the Frechet distance on the judge's features: not FID, comparable within the project
only), ``precision`` and ``recall`` (Kynkaanniemi et al. 2019, k=3), the judge's own ``score``,
``confidence`` and ``class_entropy``, and ``bpp``: the bits per pixel of the model that draws the codes,
on the held-out images' codes (priors for reconstruction and the samples, the factorised model for
its samples; none for real images). Every source has the same number of images, so the FD's bias
with the sample count is the same for all. Writes ``benchmarks/results/synthesis.json``.

    python benchmarks/synthesis.py --family vanilla=<workspace>   # a pipeline run's models/vqvae, models/prior
    python benchmarks/synthesis.py --train-tiny                    # train a small family here to exercise it

A workspace is a folder laid out as the pipeline leaves it: models/vqvae/model.pt, models/prior/top.pt,
bottom.pt and codec.pt. The judge comes from ``benchmarks/judge_train.py`` (benchmarks/.cache/judge/cifar10.pt).
"""

from __future__ import annotations

import argparse
import json
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
from _results import RESULTS, write_json
from torch.utils.data import Dataset

from sparse_vqvae.code_store import StoreMetadata
from sparse_vqvae.config import ModelConfig, TrainConfig
from sparse_vqvae.entropy_coding import FrequencyModel
from sparse_vqvae.judge import Judge, held_out_split, read_image_folder, to_model_range
from sparse_vqvae.maps import prior_file
from sparse_vqvae.pixelsnail import PixelSNAIL
from sparse_vqvae.prior_train import load_prior, prior_configs, train_prior
from sparse_vqvae.train import load_checkpoint, train
from tasks.synthesis import TEMPERATURES, Reference, encode_all, measure_model, reference

ROOT = Path(__file__).resolve().parents[1]
CACHE = ROOT / "benchmarks" / ".cache"
CIFAR = ROOT.parent / "shared" / "data" / "cifar10-jpeg" / "train"
JUDGE = CACHE / "judge" / "cifar10.pt"


@dataclass(frozen=True)
class Family:
    name: str
    vqvae: Path
    priors: Path  # folder with top.pt (and bottom.pt)
    frequency_model: Path
    trained_by: str = ""

    @classmethod
    def from_workspace(cls, name: str, root: str | Path) -> "Family":
        root = Path(root)
        return cls(name, root / "models" / "vqvae" / "model.pt", root / "models" / "prior",
                   root / "models" / "prior" / "codec.pt", f"the pipeline, workspace {root}")


class _Uint8Images(Dataset):
    def __init__(self, images: np.ndarray) -> None:
        self.images = images

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, index: int) -> torch.Tensor:
        return to_model_range(self.images[index:index + 1])[0]


def train_tiny_family(train_images: np.ndarray, folder: Path, vqvae_steps: int, prior_steps: int,
                      selection_fn: str = "vanilla", batch_size: int = 64, prior_sizes: dict | None = None,
                      **model_overrides) -> Family:
    """A small CIFAR-10 family trained with the library (resumes from ``folder``): to exercise the measure."""
    folder.mkdir(parents=True, exist_ok=True)
    model_config = ModelConfig(**{"selection_fn": selection_fn, "num_atoms": 512, **model_overrides})
    model, _ = train(model_config, TrainConfig(steps=vqvae_steps, batch_size=batch_size, seed=0),
                     _Uint8Images(train_images), checkpoint_path=folder / "vqvae.pt", progress=False)
    model.eval()
    maps = encode_all(model, to_model_range(train_images))
    meta = StoreMetadata.for_model(model, [list(m.atoms.shape[1:3]) for m in maps])
    FrequencyModel.fit(maps, meta).save(folder / "codec.pt")
    for level, config in enumerate(prior_configs(meta, **(prior_sizes or {}))):
        torch.manual_seed(level)
        prior = PixelSNAIL(config)
        train_prior(prior, maps, level, prior_steps, batch_size=batch_size, seed=level,
                    checkpoint_path=prior_file(folder, level), fingerprint=model.fingerprint(), progress=False)
    trained_by = (f"benchmarks/synthesis.py --train-tiny: sparse_vqvae.train.train ({selection_fn}, num_atoms 512, "
                  f"{vqvae_steps} steps of 64 images) and sparse_vqvae.prior_train.train_prior (defaults, {prior_steps} "
                  f"steps of 64 per map) on the judge's {len(train_images)} training images; an exercise of the "
                  "measure, not one of the study's families")
    return Family(f"tiny_{selection_fn}", folder / "vqvae.pt", folder, folder / "codec.pt", trained_by)


def measure_family(family: Family, ref: Reference, held_out: torch.Tensor, count: int,
                   temperatures: tuple[float, ...], seed: int) -> dict:
    model = load_checkpoint(family.vqvae).model.eval()
    fingerprint = model.fingerprint()
    priors = []
    for level in range(len(model.quantizers)):
        checkpoint = load_prior(prior_file(family.priors, level))
        if checkpoint.fingerprint != fingerprint:
            raise ValueError(f"{prior_file(family.priors, level)} models the codes of another VQ-VAE")
        priors.append(checkpoint.prior.eval())
    start = time.perf_counter()
    figures, _ = measure_model(model, priors, FrequencyModel.load(family.frequency_model), ref, held_out, count,
                               temperatures, seed)
    print(f"{family.name}: measured in {time.perf_counter() - start:.0f} s")
    return {"real": ref.real, **figures}


def judge_reference(judge_path: str | Path, root: str | Path, reference_count: int = 5000, real_count: int = 1000,
                    seed: int = 0) -> tuple[Reference, np.ndarray]:
    """The judge's reference (its features of the held-out images, the real training images' figures) and the
    images, uint8, in ImageFolder order."""
    images, _, _ = read_image_folder(root, cache=CACHE / "cifar10_jpeg.npz")
    train_index, held_index = held_out_split(len(images), reference_count, seed=0)
    return reference(Judge.load(judge_path), images, train_index, held_index, real_count, seed), images


def _shown(path: str | Path) -> str:
    """A path as the results file shows it: relative to the repository when inside it."""
    path = Path(path).resolve()
    return str(path.relative_to(ROOT)) if path.is_relative_to(ROOT) else str(path)


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--family", action="append", default=[], metavar="NAME=WORKSPACE",
                        help="a family's pipeline workspace (repeatable)")
    parser.add_argument("--train-tiny", action="store_true", help="train a small vanilla family here and measure it")
    parser.add_argument("--tiny-vqvae-steps", type=int, default=600)
    parser.add_argument("--tiny-prior-steps", type=int, default=400)
    parser.add_argument("--judge", default=str(JUDGE))
    parser.add_argument("--root", default=str(CIFAR))
    parser.add_argument("--images", type=int, default=1000, help="images per source")
    parser.add_argument("--reference", type=int, default=5000, help="held-out real images to compare with")
    parser.add_argument("--temperatures", default=",".join(f"{t:g}" for t in TEMPERATURES))
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--output", default=str(RESULTS / "synthesis.json"))
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    temperatures = tuple(float(t) for t in args.temperatures.split(","))

    judge_payload = json.loads((RESULTS / "judge.json").read_text()) if (RESULTS / "judge.json").is_file() else {}
    ref, images = judge_reference(args.judge, args.root, args.reference, args.images, args.seed)
    train_index, held_index = held_out_split(len(images), args.reference, seed=0)
    # The reference: the judge's held-out images. The reconstructed ones are the first `--images` of the same
    # seeded permutation: with data.seed 0 and data.test_fraction 0.02 (make run-cifar10), the VQ-VAE's own
    # test split when --images <= 1000.
    order = np.random.default_rng(0).permutation(len(images))
    held_out = to_model_range(images[order[:args.images]])

    families = [Family.from_workspace(*spec.split("=", 1)) for spec in args.family]
    if args.train_tiny:
        families.append(train_tiny_family(images[train_index], CACHE / "synthesis" / f"tiny_vanilla_{args.tiny_vqvae_steps}_{args.tiny_prior_steps}",
                                          args.tiny_vqvae_steps, args.tiny_prior_steps))
    if not families:
        parser.error("name a family (--family NAME=WORKSPACE) or --train-tiny")
    result = {
        "judge_accuracy": judge_payload.get("held_out_accuracy"),
        "judge": {"checkpoint": _shown(args.judge), "feature_dim": ref.judge.feature_dim},
        "measure": {"reference": f"{len(held_index)} held-out CIFAR-10 images (judge.held_out_split, seed 0)",
                    "images_per_source": args.images, "k": 3, "temperatures": list(temperatures),
                    "fd": "Frechet distance on the judge's penultimate features: not FID, comparable within the "
                          "project (same judge) only",
                    "bpp": "bits per pixel of the held-out images' codes under the model that draws the source's codes "
                           "(priors for reconstruction and pixelsnail; the factorised model for factorised)"},
        "trained_by": {family.name: family.trained_by for family in families},
        "cifar10": {family.name: measure_family(family, ref, held_out, args.images, temperatures, args.seed)
                    for family in families},
    }
    write_json(Path(args.output), result)
    return result


if __name__ == "__main__":
    main()
