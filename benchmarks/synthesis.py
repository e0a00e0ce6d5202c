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
bottom.pt and codec.pt. The judge is the one ``benchmarks/judge_train.py`` published (benchmarks/judge/cifar10.pt).

What holds the samples back (issue 30, part 3): ``--train-tiny`` trains a small VQ-VAE for each of
``--tiny-vqvae-steps`` and its code maps, then priors of each ``--tiny-prior-steps`` on those same codes (family
``tiny_vanilla<vqvae steps>_prior<steps>``) and, with ``--class-conditional``, a class-conditional prior of the
steps whose samples scored best (``..._prior<steps>_class``: samples drawn with the classes spread evenly), so the
variants of one VQ-VAE differ in the prior alone, and those of one prior budget in the VQ-VAE's training.
``verdict`` says, per family, its best PixelSNAIL FD over factorised's and whether it is <= 0.5x.
"""

from __future__ import annotations

import argparse
import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, NamedTuple

import numpy as np
import torch
from _results import RESULTS, file_sha256, shown_path, write_json
from judge_train import PUBLISHED as JUDGE
from torch.utils.data import Dataset

from sparse_vqvae.code_store import StoreMetadata
from sparse_vqvae.codes import Codes
from sparse_vqvae.config import ModelConfig, PriorTrainConfig, TrainConfig
from sparse_vqvae.entropy_coding import FrequencyModel, load_frequencies
from sparse_vqvae.judge import Judge, held_out_split, read_image_folder, to_model_range
from sparse_vqvae.maps import prior_file
from sparse_vqvae.pixelsnail import PixelSNAIL
from sparse_vqvae.prior_train import load_prior, prior_configs, train_prior
from sparse_vqvae.train import load_checkpoint, train
from sparse_vqvae.vqvae import encode_all
from tasks.synthesis import TEMPERATURES, Reference, measure_model, reference

ROOT = Path(__file__).resolve().parents[1]
CACHE = ROOT / "benchmarks" / ".cache"
CIFAR = ROOT.parent / "shared" / "data" / "cifar10-jpeg" / "train"
_PRIOR = PriorTrainConfig()  # the priors' training defaults (label dropout)


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


class TinyCodes(NamedTuple):
    """A small VQ-VAE's codes of its training images: what every prior variant of a tiny family trains on."""

    maps: tuple[Codes, ...]
    meta: StoreMetadata
    fingerprint: str
    trained_by: str


def train_tiny_vqvae(train_images: np.ndarray, folder: Path, vqvae_steps: int, selection_fn: str = "vanilla",
                     batch_size: int = 64, **model_overrides) -> TinyCodes:
    """A small CIFAR-10 VQ-VAE trained with the library (resumes from ``folder``), its factorised model and its
    codes of ``train_images``."""
    folder.mkdir(parents=True, exist_ok=True)
    model_config = ModelConfig(**{"selection_fn": selection_fn, "num_atoms": 512, **model_overrides})
    model, _ = train(model_config, TrainConfig(steps=vqvae_steps, batch_size=batch_size, seed=0),
                     _Uint8Images(train_images), checkpoint_path=folder / "vqvae.pt", progress=False)
    model.eval()
    maps = encode_all(model, to_model_range(train_images))
    meta = StoreMetadata.for_model(model, [list(m.atoms.shape[1:3]) for m in maps])
    FrequencyModel.fit(maps, meta).save(folder / "codec.pt")
    trained_by = (f"benchmarks/synthesis.py --train-tiny: sparse_vqvae.train.train ({selection_fn}, num_atoms 512, "
                  f"{vqvae_steps} steps of {batch_size} images) on the judge's {len(train_images)} training images")
    return TinyCodes(maps, meta, model.fingerprint(), trained_by)


def train_tiny_priors(codes: TinyCodes, folder: Path, steps: int, batch_size: int = 64,
                      prior_sizes: dict | None = None, labels: np.ndarray | None = None,
                      classes: tuple[str, ...] = ()) -> str:
    """The priors of a tiny family's codes in ``folder`` (resumed there), class-conditional where ``classes`` are
    given (``labels``: the training images' classes, row by row of the codes; the default label dropout). Returns
    how they were trained."""
    sizes = {**(prior_sizes or {}), **({"classes": classes} if classes else {})}
    for level, config in enumerate(prior_configs(codes.meta, **sizes)):
        torch.manual_seed(level)
        train_prior(PixelSNAIL(config), codes.maps, level, steps, batch_size=batch_size, seed=level,
                    checkpoint_path=prior_file(folder, level), fingerprint=codes.fingerprint, progress=False,
                    labels=torch.as_tensor(labels) if classes else None)
    conditioned = (f", conditioned on the {len(classes)} classes, label dropout {_PRIOR.label_dropout}" if classes
                   else "")
    return (f"sparse_vqvae.prior_train.train_prior (default sizes{conditioned}, {steps} steps of {batch_size} per "
            "map)")


def train_tiny_family(train_images: np.ndarray, folder: Path, vqvae_steps: int, prior_steps: int,
                      selection_fn: str = "vanilla", batch_size: int = 64, prior_sizes: dict | None = None,
                      **model_overrides) -> Family:
    """A small CIFAR-10 family trained with the library (resumes from ``folder``): to exercise the measure."""
    codes = train_tiny_vqvae(train_images, folder, vqvae_steps, selection_fn, batch_size, **model_overrides)
    priors = train_tiny_priors(codes, folder, prior_steps, batch_size, prior_sizes)
    return Family(f"tiny_{selection_fn}", folder / "vqvae.pt", folder, folder / "codec.pt",
                  f"{codes.trained_by}; {priors}; an exercise of the measure, not one of the study's families")


def tiny_variants(train_images: np.ndarray, labels: np.ndarray, classes: tuple[str, ...], folder: Path,
                  vqvae_steps: int, prior_steps: tuple[int, ...], class_conditional: bool,
                  measure: Callable[[Family], dict]) -> dict[str, tuple[Family, dict]]:
    """One tiny VQ-VAE and its codes, priors of each of ``prior_steps`` on them, and (``class_conditional``) a
    class-conditional prior of the steps whose samples scored best: the families and their figures, by name. Only
    the prior differs between them, so their FDs say what the prior's training and a class change."""
    codes = train_tiny_vqvae(train_images, folder, vqvae_steps)
    prefix = f"tiny_vanilla{vqvae_steps}"

    def variant(name: str, steps: int, classes: tuple[str, ...] = ()) -> tuple[Family, dict]:
        priors = folder / name
        how = train_tiny_priors(codes, priors, steps, labels=labels, classes=classes)
        family = Family(f"{prefix}_{name}", folder / "vqvae.pt", priors, folder / "codec.pt",
                        f"{codes.trained_by}; {how}; an exercise of the measure, not one of the study's families")
        return family, measure(family)

    results = {f"{prefix}_prior{steps}": variant(f"prior{steps}", steps) for steps in prior_steps}
    if class_conditional:
        best = min(prior_steps, key=lambda steps: best_pixelsnail(results[f"{prefix}_prior{steps}"][1])[1])
        results[f"{prefix}_prior{best}_class"] = variant(f"prior{best}_class", best, classes)
    return results


def best_pixelsnail(figures: dict) -> tuple[str, float]:
    """A family's PixelSNAIL source of the lowest FD (the best temperature), and that FD."""
    source = min((name for name in figures if name.startswith("pixelsnail_")), key=lambda name: figures[name]["fd"])
    return source, figures[source]["fd"]


def verdict(figures: dict, target: float = 0.5) -> dict:
    """The issue's target for one family: its best PixelSNAIL FD <= ``target`` x the factorised model's. With the
    reconstructions' FD: what the decoder alone reaches, about the floor of samples from a perfect prior."""
    source, fd = best_pixelsnail(figures)
    factorised = figures["factorised"]["fd"]
    return {"best_source": source, "fd": fd, "factorised_fd": factorised, "ratio": fd / factorised, "target": target,
            "met": fd / factorised <= target, "reconstruction_fd": figures["reconstruction"]["fd"],
            "reconstruction_ratio": figures["reconstruction"]["fd"] / factorised}


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
    figures, _ = measure_model(model, priors, load_frequencies(family.frequency_model), ref, held_out, count,
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


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--family", action="append", default=[], metavar="NAME=WORKSPACE",
                        help="a family's pipeline workspace (repeatable)")
    parser.add_argument("--train-tiny", action="store_true", help="train a small vanilla family here and measure it")
    parser.add_argument("--tiny-vqvae-steps", default="600",
                        help="comma-separated: a tiny VQ-VAE (and its prior variants) for each stage-1 budget")
    parser.add_argument("--tiny-prior-steps", default="400",
                        help="comma-separated: a prior variant of each, on the same VQ-VAE and codes")
    parser.add_argument("--class-conditional", action="store_true",
                        help="with --train-tiny: also a class-conditional prior of the best variant's steps")
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

    if not args.family and not args.train_tiny:
        parser.error("name a family (--family NAME=WORKSPACE) or --train-tiny")

    def measure(family: Family) -> dict:
        return measure_family(family, ref, held_out, args.images, temperatures, args.seed)

    measured = {family.name: (family, measure(family))
                for family in (Family.from_workspace(*spec.split("=", 1)) for spec in args.family)}
    if args.train_tiny:
        _, labels, classes = read_image_folder(args.root, cache=CACHE / "cifar10_jpeg.npz")
        prior_steps = tuple(int(steps) for steps in args.tiny_prior_steps.split(","))
        for vqvae_steps in (int(steps) for steps in args.tiny_vqvae_steps.split(",")):
            measured |= tiny_variants(images[train_index], labels[train_index], classes,
                                      CACHE / "synthesis" / f"tiny_vanilla_{vqvae_steps}", vqvae_steps, prior_steps,
                                      args.class_conditional, measure)
    result = {
        "judge_accuracy": judge_payload.get("held_out_accuracy"),
        "judge": {"checkpoint": shown_path(args.judge), "sha256": file_sha256(args.judge),
                  "feature_dim": ref.judge.feature_dim},
        "measure": {"reference": f"{len(held_index)} held-out CIFAR-10 images (judge.held_out_split, seed 0)",
                    "images_per_source": args.images, "k": 3, "temperatures": list(temperatures),
                    "fd": "Frechet distance on the judge's penultimate features: not FID, comparable within the "
                          "project (same judge) only",
                    "bpp": "bits per pixel of the held-out images' codes under the model that draws the source's codes "
                           "(priors for reconstruction and pixelsnail, a class-conditional one's with no class, as "
                           "coding has it; the factorised model for factorised)"},
        "trained_by": {name: family.trained_by for name, (family, _) in measured.items()},
        "cifar10": {name: figures for name, (_, figures) in measured.items()},
        "verdict": {name: verdict(figures) for name, (_, figures) in measured.items()},
    }
    write_json(Path(args.output), result)
    for name, v in result["verdict"].items():
        print(f"{name}: best {v['best_source']} FD {v['fd']:.1f}, factorised {v['factorised_fd']:.1f}, "
              f"{v['ratio']:.2f}x ({'met' if v['met'] else 'not met'}: <= {v['target']}x); reconstructions "
              f"{v['reconstruction_fd']:.1f} ({v['reconstruction_ratio']:.2f}x)")
    return result


if __name__ == "__main__":
    main()
