"""The ``sparse-vqvae`` command: compress and decompress images, draw samples, evaluate the codec.

By default it uses what ``make run`` (``dvc repro``) trained last, in the current folder:
``models/vqvae/model.pt``, ``models/prior/codec.pt`` (the frequency model) and
``models/prior/level*.pt`` (the PixelSNAIL priors).
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError
from tqdm.auto import tqdm

from .checkpoint import CheckpointError
from .codec import Codec, CodecError, bits_per_pixel, map_sizes
from .config import DATASETS, DataConfig
from .data import DatasetNotFoundError, load_dataset, to_model_range, to_uint8
from .devices import default_device
from .entropy_coding import FrequencyModel
from .metrics import psnr, squared_error_255, ssim
from .pictures import save_grid
from .prior_train import load_prior
from .train import load_checkpoint

DEFAULT_MODEL = Path("models/vqvae/model.pt")
DEFAULT_CODEC_MODEL = Path("models/prior/codec.pt")
DEFAULT_PRIORS = Path("models/prior")
SUFFIX = ".svq"


def _load(args: argparse.Namespace) -> Codec:
    model = load_checkpoint(args.model, default_device()).model.eval()
    return Codec(model, FrequencyModel.load(args.codec_model))


def _read_image(path: Path) -> torch.Tensor:
    if not path.is_file():
        raise FileNotFoundError(f"no such file: {path}")
    try:
        with Image.open(path) as image:
            return to_model_range(np.array(image.convert("RGB")))
    except (UnidentifiedImageError, OSError) as error:
        raise ValueError(f"{path} is not an image this tool can read: {error}") from error


def cmd_compress(args: argparse.Namespace) -> None:
    codec = _load(args)
    args.output.mkdir(parents=True, exist_ok=True)
    for path in tqdm(args.images, desc="compress", disable=len(args.images) < 2):
        image = _read_image(path)
        data = codec.compress(image)
        target = args.output / (path.stem + SUFFIX)
        target.write_bytes(data)
        print(f"{path} -> {target}: {len(data)} bytes, {bits_per_pixel(data, *image.shape[1:]):.3f} bpp")


def cmd_decompress(args: argparse.Namespace) -> None:
    codec = _load(args)
    args.output.mkdir(parents=True, exist_ok=True)
    for path in tqdm(args.files, desc="decompress", disable=len(args.files) < 2):
        if not path.is_file():
            raise FileNotFoundError(f"no such file: {path}")
        image = codec.decompress(path.read_bytes())
        target = args.output / (path.stem + ".png")
        Image.fromarray(to_uint8(image[None])[0]).save(target)
        print(f"{path} -> {target}")


@torch.no_grad()
def cmd_sample(args: argparse.Namespace) -> None:
    model = load_checkpoint(args.model, default_device()).model.eval()
    device = next(model.parameters()).device
    if args.random_codes:
        entropy = FrequencyModel.load(args.codec_model)
        size = args.size
        maps = entropy.sample(args.n, map_sizes(model, size, size), np.random.default_rng(args.seed))
    else:
        priors = [load_prior(path, device).prior.eval() for path in sorted(args.priors.glob("level*.pt"))]
        if not priors:
            raise FileNotFoundError(f"no priors (level*.pt) in {args.priors}: run the train_prior stage first")
        generator = torch.Generator(device=device).manual_seed(args.seed)
        top = priors[0].sample(args.n, args.temperature, generator=generator)
        maps = (top, *(p.sample(args.n, args.temperature, condition=top, generator=generator) for p in priors[1:]))
    images = model.decode_codes(tuple(m.to(device) for m in maps))
    save_grid(images, args.output, columns=math.ceil(math.sqrt(args.n)), scale=2)
    print(f"{args.n} samples -> {args.output}")


@torch.no_grad()
def cmd_evaluate(args: argparse.Namespace) -> None:
    codec = _load(args)
    data = DataConfig(name=args.dataset, root=args.root, image_size=args.image_size)
    dataset = load_dataset(data, "test")
    count = min(len(dataset), args.limit) if args.limit else len(dataset)
    error = ssim_sum = bits = 0.0
    pixels = 0
    for i in tqdm(range(count), desc="evaluate codec"):
        image = dataset[i]
        encoded = codec.compress(image)
        decoded = codec.decompress(encoded)
        error += float(squared_error_255(image[None], decoded[None]))
        ssim_sum += float(ssim(image[None], decoded[None]))
        bits += 8 * len(encoded)
        pixels += image.shape[1] * image.shape[2]
    result = {"images": count, "bpp": bits / pixels, "psnr": psnr(error / (3 * pixels)), "ssim": ssim_sum / count,
              "selection_fn": codec.model.config.selection_fn, "dataset": args.dataset}
    print(json.dumps(result, indent=2))


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="sparse-vqvae", description=__doc__.split("\n\n")[0])
    commands = parser.add_subparsers(dest="command", required=True)

    def with_model(sub: argparse.ArgumentParser, codec: bool = True) -> argparse.ArgumentParser:
        sub.add_argument("--model", type=Path, default=DEFAULT_MODEL, help="VQ-VAE checkpoint (default: %(default)s)")
        if codec:
            sub.add_argument("--codec-model", type=Path, default=DEFAULT_CODEC_MODEL,
                             help="frequency model of the codes (default: %(default)s)")
        return sub

    sub = with_model(commands.add_parser("compress", help="images -> compressed .svq files"))
    sub.add_argument("images", nargs="+", type=Path)
    sub.add_argument("-o", "--output", type=Path, required=True, help="folder for the .svq files")
    sub.set_defaults(run=cmd_compress)

    sub = with_model(commands.add_parser("decompress", help=".svq files -> PNG images"))
    sub.add_argument("files", nargs="+", type=Path)
    sub.add_argument("-o", "--output", type=Path, required=True, help="folder for the PNG images")
    sub.set_defaults(run=cmd_decompress)

    sub = with_model(commands.add_parser("sample", help="images drawn from the PixelSNAIL priors (or random codes)"))
    sub.add_argument("-n", type=int, default=64, help="how many images (default: %(default)s)")
    sub.add_argument("--temperature", type=float, default=1.0)
    sub.add_argument("--seed", type=int, default=0)
    sub.add_argument("--priors", type=Path, default=DEFAULT_PRIORS, help="folder of level*.pt priors")
    sub.add_argument("--random-codes", action="store_true",
                     help="draw codes from the atom/level frequencies instead of the priors (decoder only)")
    sub.add_argument("--size", type=int, default=32, help="image side for --random-codes (default: %(default)s)")
    sub.add_argument("-o", "--output", type=Path, required=True, help="PNG grid to write")
    sub.set_defaults(run=cmd_sample)

    sub = with_model(commands.add_parser("evaluate", help="PSNR, SSIM and real bits per pixel of the codec"))
    sub.add_argument("--dataset", choices=DATASETS, default="embedded")
    sub.add_argument("--root", default=None, help="dataset folder (cifar10, cifar100, imagefolder)")
    sub.add_argument("--image-size", type=int, default=32)
    sub.add_argument("--limit", type=int, default=0, help="at most this many test images (0: all)")
    sub.set_defaults(run=cmd_evaluate)
    return parser


def main(argv: list[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    try:
        args.run(args)
    except (CodecError, CheckpointError, DatasetNotFoundError, FileNotFoundError, ValueError) as error:
        print(f"sparse-vqvae {args.command}: error: {error}", file=sys.stderr)
        sys.exit(1)


if __name__ == "__main__":
    main()
