"""Train the sample-quality judge (``sparse_vqvae.judge``) on CIFAR-10 and record its figures.

    python benchmarks/judge_train.py [--root ../shared/data/cifar10-jpeg/train] [--epochs 30] [--width 24]

Reads the ImageFolder tree once into ``benchmarks/.cache/cifar10_jpeg.npz``, holds out a seeded
5,000 images (``judge.held_out_split``: the rule of ``data.load_dataset``'s imagefolder split, so a
VQ-VAE's test split of the same folder at seed 0 lies inside it), trains on the other 45,000 with one
thread, and resumes from ``benchmarks/.cache/judge/cifar10.pt`` when interrupted (run the same command
again). The held-out accuracy after each epoch is logged, never used to pick anything: the final
epoch's judge is the judge. Writes ``benchmarks/results/judge.json`` and publishes the finished judge's
weights (no optimizer state) to ``benchmarks/judge/cifar10.pt``, committed with the figures it measured:
an FD is comparable only under the same judge, so every checkout measures with this one instead of
training its own (an hour or two of one core). Run on a finished checkpoint, it publishes again.
"""

from __future__ import annotations

import argparse
import json
from dataclasses import asdict
from pathlib import Path

import torch
from _results import cpu_model, file_sha256, shown_path

from sparse_vqvae.atomic import atomic_write
from sparse_vqvae.checkpoint import load_payload, save_payload
from sparse_vqvae.judge import (JUDGE_FORMAT, JUDGE_VERSION, JudgeConfig, JudgeTrainConfig, accuracy, held_out_split,
                                read_image_folder, to_model_range, train_judge)

ROOT = Path(__file__).resolve().parents[1]

CACHE = ROOT / "benchmarks" / ".cache"
DEFAULT_CHECKPOINT = CACHE / "judge" / "cifar10.pt"
RESULT = ROOT / "benchmarks" / "results" / "judge.json"
PUBLISHED = ROOT / "benchmarks" / "judge" / "cifar10.pt"
"""The judge the committed synthesis figures were measured with (``--judge`` of synthesis.py and the study)."""


def publish(checkpoint: str | Path, published: str | Path) -> str:
    """Copy the finished judge of ``checkpoint`` to ``published`` without its optimizer state; its SHA-256."""
    payload = load_payload(checkpoint, JUDGE_FORMAT, JUDGE_VERSION)
    save_payload(published, {key: payload[key] for key in ("format", "version", "model_args", "train_config",
                                                            "model", "epoch", "history", "classes")})
    return file_sha256(published)


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--root", default=str(ROOT.parent / "shared" / "data" / "cifar10-jpeg" / "train"))
    parser.add_argument("--checkpoint", default=str(DEFAULT_CHECKPOINT))
    parser.add_argument("--epochs", type=int, default=JudgeTrainConfig.epochs)
    parser.add_argument("--width", type=int, default=JudgeConfig.width)
    parser.add_argument("--held-out", type=int, default=5000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--max-epochs", type=int, default=None, help="stop after this many epochs (resume later)")
    parser.add_argument("--fp32", action="store_true", help="no bfloat16 autocast (CPUs without AVX512-BF16)")
    parser.add_argument("--result", default=str(RESULT))
    parser.add_argument("--publish", default=str(PUBLISHED), help="where the finished judge's weights go")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)

    images, labels, classes = read_image_folder(args.root, cache=CACHE / "cifar10_jpeg.npz")
    train_index, held_index = held_out_split(len(images), args.held_out, args.seed)
    config = JudgeConfig(width=args.width, num_classes=len(classes))
    train_config = JudgeTrainConfig(epochs=args.epochs, seed=args.seed, bf16=not args.fp32)
    Path(args.checkpoint).parent.mkdir(parents=True, exist_ok=True)
    judge, summary = train_judge(images[train_index], labels[train_index], config, train_config, args.checkpoint,
                                 eval_images=images[held_index], eval_labels=labels[held_index],
                                 max_epochs=args.max_epochs)
    if summary["epochs"] < args.epochs:
        print(f"stopped after {summary['epochs']} of {args.epochs} epochs; run again to resume")
        return summary
    sha256 = publish(args.checkpoint, args.publish)
    held_x = to_model_range(images[held_index])
    held_y = torch.as_tensor(labels[held_index])
    plain = accuracy(judge, held_x, held_y)
    result = {
        "what": "the sample-quality judge (sparse_vqvae.judge.Judge, ResNet-9 layout) trained on CIFAR-10",
        "data": {"root": "../shared/data/cifar10-jpeg/train (JPEG quality 75 copies of the training split)",
                 "train_images": int(len(train_index)), "held_out_images": int(len(held_index)),
                 "held_out_rule": f"judge.held_out_split(50000, {args.held_out}, seed={args.seed})"},
        "model": asdict(config), "parameters": sum(p.numel() for p in judge.parameters()),
        "feature_dim": judge.feature_dim, "training": asdict(train_config),
        "held_out_accuracy": round(plain, 4),
        "target": 0.85, "target_met": plain >= 0.85,
        "epochs": summary["epochs"], "train_seconds": summary["seconds"],
        "threads": args.threads, "machine": cpu_model(), "torch": torch.__version__,
        "checkpoint": shown_path(args.checkpoint),
        "published": {"path": shown_path(args.publish), "sha256": sha256},
        "history": summary["history"],
    }
    Path(args.result).parent.mkdir(parents=True, exist_ok=True)
    with atomic_write(args.result, "w") as handle:
        json.dump(result, handle, indent=2)
        handle.write("\n")
    print(json.dumps({key: result[key] for key in ("held_out_accuracy", "epochs", "train_seconds", "machine")}))
    return result


if __name__ == "__main__":
    main()
