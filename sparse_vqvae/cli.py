"""The ``sparse-vqvae`` command: compress and decompress images, draw samples, evaluate the codec.

By default it uses the photo codec that ships with the package (the package ``sparse_vqvae.zoo``, the
repository's ``models/zoo``: folder ``photo``, the model, its frequency model and priors, and a model card), so
it works right after install.

``--model`` takes a zoo name (a folder of the zoo), a checkpoint path - a checkpoint of
``make run``'s pipeline, ``models/vqvae/model.pt``, goes with ``models/prior/codec.pt`` and
``models/prior/{top,bottom}.pt`` in the current folder unless ``--codec-model`` / ``--priors`` say
otherwise - or any reference that a model source installed in the entry-point
group ``sparse_vqvae.model_sources`` resolves: a callable ``(reference) -> dict | None`` that returns None
for references not its own, else ``{"model": path}`` plus, optionally, ``"codec_model"`` and
``"priors"`` paths, used unless ``--codec-model`` / ``--priors`` are given. The repository's pipeline
(``tasks``) registers one for MLflow run ids (a pipeline run or one of its stages): the model, frequency
model and priors that run logged, downloaded once to a cache folder. A source that cannot be loaded (the
pipeline outside its repository) is skipped with a note.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from importlib.metadata import entry_points
from importlib.resources import files
from pathlib import Path
from typing import Callable

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError
from tqdm.auto import tqdm

from .checkpoint import CheckpointError
from .codec import ENTROPY_MODELS, Codec, CodecError, bits_per_pixel, entropy_model_of, map_sizes
from .config import DATASETS, DataConfig
from .data import DatasetNotFoundError, load_dataset, to_model_range, to_uint8
from .devices import default_device
from .entropy_coding import load_frequencies, or_error
from .pictures import save_grid
from .maps import prior_files
from .generation import sample_maps
from .prior_coding import BATCH, PriorEntropyModel
from .rate_distortion import plot, reference_points, sparse_vqvae_point, write_table
from .train import load_checkpoint

DEFAULT_MODEL = "photo"
DEFAULT_CODEC_MODEL = Path("models/prior/codec.pt")
DEFAULT_PRIORS = Path("models/prior")
SUFFIX = ".svq"
MODEL_SOURCES = "sparse_vqvae.model_sources"  # entry-point group of the --model resolvers


def _zoo_folder() -> Path | None:
    """The shipped models (the package ``sparse_vqvae.zoo``): one folder each, model.pt, codec.pt, top.pt
    [bottom.pt], MODEL_CARD.md; None where it is not installed (a source tree on PYTHONPATH) or not a folder."""
    try:
        folder = files("sparse_vqvae.zoo")
    except ModuleNotFoundError:
        return None
    return folder if isinstance(folder, Path) else None


ZOO = _zoo_folder()


def zoo_names() -> list[str]:
    return sorted(folder.name for folder in ZOO.iterdir() if (folder / "model.pt").is_file()) if ZOO else []


def resolve_model(reference: str) -> dict[str, Path]:
    """``--model`` -> ``{"model": checkpoint}``, plus ``"codec_model"`` and ``"priors"`` where the zoo or a
    model source knows them: an existing path is the checkpoint itself, then zoo names, then the model
    sources."""
    if Path(reference).exists():
        return {"model": Path(reference)}
    if reference in zoo_names():
        return {"model": ZOO / reference / "model.pt", "codec_model": ZOO / reference / "codec.pt",
                "priors": ZOO / reference}
    for source in entry_points(group=MODEL_SOURCES):
        try:
            resolver = source.load()
        except (ImportError, SystemExit) as error:  # SystemExit: the pipeline's check of its interpreter
            print(f"sparse-vqvae: note: model source {source.name} ({source.value}) skipped: it cannot be loaded "
                  f"here ({error})", file=sys.stderr)
            continue
        found = resolver(reference)
        if found is not None:
            return {key: Path(value) for key, value in found.items()}
    raise FileNotFoundError(f"no such checkpoint: {reference} (nor a zoo model - {', '.join(zoo_names()) or 'none'} "
                            "- nor an MLflow run id or other reference that an installed model source knows)")


def _resolve(args: argparse.Namespace) -> None:
    """The files behind ``--model``; ``--codec-model`` and ``--priors`` when given, else the model source's or
    the defaults."""
    found = resolve_model(args.model)
    args.model = found["model"]
    for key, default in (("codec_model", DEFAULT_CODEC_MODEL), ("priors", DEFAULT_PRIORS)):
        if key in args and getattr(args, key) is None:
            setattr(args, key, found.get(key, default))


def _codec(args: argparse.Namespace, entropy: str) -> Codec:
    """The model of ``--model`` with the ``entropy`` model: "factorised" (``--codec-model``) or "prior"
    (the PixelSNAIL priors in ``--priors``)."""
    model = load_checkpoint(args.model, default_device()).model.eval()
    if entropy == "prior":
        return Codec(model, PriorEntropyModel.load(prior_files(args.priors), default_device()))
    return Codec(model, load_frequencies(args.codec_model))


def _read_image(path: Path) -> torch.Tensor:
    if not path.is_file():
        raise FileNotFoundError(f"no such file: {path}")
    try:
        with Image.open(path) as image:
            return to_model_range(np.array(image.convert("RGB")))
    except (UnidentifiedImageError, OSError) as error:
        raise ValueError(f"{path} is not an image this tool can read: {error}") from error


def cmd_compress(args: argparse.Namespace) -> None:
    codec = _codec(args, args.entropy)
    args.output.mkdir(parents=True, exist_ok=True)

    def compressed(paths: list[Path]) -> list:
        images = [or_error(_read_image, path, catch=(ValueError, FileNotFoundError)) for path in paths]
        readable = [row for row, image in enumerate(images) if not isinstance(image, Exception)]
        coded = codec.compress_many([images[row] for row in readable], args.quality, args.effort)
        for row, data in zip(readable, coded):
            images[row] = data if isinstance(data, Exception) else (data, images[row].shape[1:])
        return images

    def save(path: Path, result: tuple[bytes, tuple[int, int]]) -> None:
        data, size = result
        target = args.output / (path.stem + SUFFIX)
        target.write_bytes(data)
        print(f"{path} -> {target}: {len(data)} bytes, {bits_per_pixel(data, *size):.3f} bpp")

    _each_batch(args.images, compressed, save, "compress")


def cmd_decompress(args: argparse.Namespace) -> None:
    codecs: dict[str, Codec] = {}  # loaded on first use: each file names its entropy model
    args.output.mkdir(parents=True, exist_ok=True)

    def decompressed(paths: list[Path]) -> list:
        results = [or_error(_read_file, path, catch=FileNotFoundError) for path in paths]
        by_entropy: dict[str, list[int]] = {}
        for row, data in enumerate(results):
            entropy = data if isinstance(data, Exception) else or_error(entropy_model_of, data, catch=CodecError)
            if isinstance(entropy, Exception):
                results[row] = entropy
            else:
                by_entropy.setdefault(entropy, []).append(row)
        for entropy, rows in by_entropy.items():
            if entropy not in codecs:
                codecs[entropy] = _codec(args, entropy)
            for row, image in zip(rows, codecs[entropy].decompress_many([results[row] for row in rows])):
                results[row] = image
        return results

    def save(path: Path, image: torch.Tensor) -> None:
        target = args.output / (path.stem + ".png")
        Image.fromarray(to_uint8(image[None])[0]).save(target)
        print(f"{path} -> {target}")

    _each_batch(args.files, decompressed, save, "decompress")


def _read_file(path: Path) -> bytes:
    if not path.is_file():
        raise FileNotFoundError(f"no such file: {path}")
    return path.read_bytes()


def _each_batch(paths: list[Path], work: Callable[[list[Path]], list], save: Callable[[Path, object], None],
                desc: str) -> None:
    """``work`` on the paths, ``BATCH`` at a time (the priors code a batch together), each result saved;
    a file that fails is reported and skipped, and the command fails at the end if any did."""
    failures: list[Exception] = []
    with tqdm(total=len(paths), desc=desc, disable=len(paths) < 2) as progress:
        for start in range(0, len(paths), BATCH):
            chunk = paths[start : start + BATCH]
            for path, result in zip(chunk, work(chunk)):
                if not isinstance(result, Exception):
                    save(path, result)
                    continue
                failures.append(result)
                if len(paths) > 1:
                    print(f"sparse-vqvae {desc}: {path}: {result}", file=sys.stderr)
            progress.update(len(chunk))
    if len(paths) == 1 and failures:
        raise failures[0]
    if failures:
        raise CodecError(f"{len(failures)} of {len(paths)} files failed (each named above); the others were written")


CODING_PRIOR_NOTE = (
    "note: these priors know no position (prior.positions: none): they were trained on crops as entropy models "
    "that code photographs of any size, so their samples are local textures without a layout, not pictures. "
    "Priors trained with positions: learned at the images' own size (make run, make run-cifar10) draw images.")


@torch.no_grad()
def cmd_sample(args: argparse.Namespace) -> None:
    model = load_checkpoint(args.model, default_device()).model.eval()
    device = next(model.parameters()).device
    if args.random_codes:
        entropy = load_frequencies(args.codec_model)
        size = args.size
        maps = entropy.sample(args.n, map_sizes(model, size, size), np.random.default_rng(args.seed))
    else:
        priors = PriorEntropyModel.load(prior_files(args.priors), device, model.fingerprint()).priors
        if any(prior.config.positions == "none" for prior in priors):
            print(CODING_PRIOR_NOTE, file=sys.stderr)
        labels = priors[0].class_labels([args.class_name] * args.n) if args.class_name else None  # unknown: says which
        maps = sample_maps(priors, args.n, args.temperature, torch.Generator(device=device).manual_seed(args.seed),
                           labels=labels)
    images = model.decode_codes(tuple(m.to(device) for m in maps))
    save_grid(images, args.output, columns=math.ceil(math.sqrt(args.n)), scale=2)
    print(f"{args.n} samples -> {args.output}")


@torch.no_grad()
def cmd_evaluate(args: argparse.Namespace) -> None:
    codec = _codec(args, args.entropy)
    dataset = load_dataset(DataConfig(name=args.dataset, root=args.root, image_size=args.image_size), "test")
    images = [dataset[i] for i in range(min(len(dataset), args.limit) if args.limit else len(dataset))]
    points = [sparse_vqvae_point(codec, images, args.quality)] + (reference_points(images) if args.references else [])
    if args.output is not None:
        write_table(points, args.output.with_suffix(".csv"))
        plot(points, args.output.with_suffix(".png"), f"rate-distortion on {args.dataset} ({len(images)} images)")
    print(f"{'codec':<34} {'setting':>8} {'bpp':>7} {'PSNR':>7} {'SSIM':>6} {'MS-SSIM':>8}")
    for point in points:
        print(f"{point['codec']:<34} {point['setting']!s:>8} {point['bpp']:7.3f} {point['psnr']:7.2f} "
              f"{point['ssim']:6.3f} {point['ms_ssim']:8.3f}")
    print(json.dumps({**points[0], "selection_fn": codec.model.config.selection_fn, "dataset": args.dataset},
                     indent=2))


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="sparse-vqvae", description=__doc__.split("\n\n")[0])
    commands = parser.add_subparsers(dest="command", required=True)

    def with_model(sub: argparse.ArgumentParser) -> argparse.ArgumentParser:
        sub.add_argument("--model", default=DEFAULT_MODEL,
                         help=f"a zoo model ({', '.join(zoo_names()) or 'none installed'}), a VQ-VAE checkpoint "
                              "(make run's: models/vqvae/model.pt), or an MLflow run id (a pipeline run or one of "
                              "its stages: its model, frequency model and priors) (default: %(default)s)")
        sub.add_argument("--codec-model", type=Path, default=None,
                         help=f"frequency model of the codes (default: the --model run's, else {DEFAULT_CODEC_MODEL})")
        return sub

    def with_quality(sub: argparse.ArgumentParser) -> None:
        sub.add_argument("--quality", type=int, default=None,
                         help="1 (smallest files) to the model's highest: a residual-VQ model codes the first Q "
                              "stages, a quantised-pursuit model trained over multipliers takes 1..10 as its rate "
                              "knob; other models have one quality (default: the highest)")

    def with_entropy(sub: argparse.ArgumentParser) -> None:
        sub.add_argument("--entropy", choices=ENTROPY_MODELS, default="factorised",
                         help="entropy model: the factorised frequencies (fast, any size) or the PixelSNAIL priors "
                              "(fewer bits, sequential: slow; priors with learned positions code their training size only) "
                              "(default: %(default)s)")
        sub.add_argument("--priors", type=Path, default=None,
                         help=f"folder of the priors (top.pt, bottom.pt) (default: the --model run's, else {DEFAULT_PRIORS})")

    sub = with_model(commands.add_parser("compress", help="images -> compressed .svq files"))
    sub.add_argument("images", nargs="+", type=Path)
    with_quality(sub)
    with_entropy(sub)
    sub.add_argument("--effort", type=int, default=0,
                     help="refine each code by this many gradient steps through the decoder (a residual-VQ model's): "
                          "the same format and decoding speed, a sharper image at the same quality, encoding a "
                          "decoder pass forward and back slower a step (about 2 s a megapixel on 2 cores) "
                          "(default: %(default)s, the encoder's own code)")
    sub.add_argument("-o", "--output", type=Path, required=True, help="folder for the .svq files")
    sub.set_defaults(run=cmd_compress)

    sub = with_model(commands.add_parser("decompress", help=".svq files -> PNG images (each with its entropy model)"))
    sub.add_argument("files", nargs="+", type=Path)
    sub.add_argument("--priors", type=Path, default=None,
                     help=f"folder of the priors (top.pt, bottom.pt), for prior-coded files (default: the --model run's, else "
                          f"{DEFAULT_PRIORS})")
    sub.add_argument("-o", "--output", type=Path, required=True, help="folder for the PNG images")
    sub.set_defaults(run=cmd_decompress)

    sub = with_model(commands.add_parser("sample", help="images drawn from the PixelSNAIL priors (or random codes)"))
    sub.add_argument("-n", type=int, default=64, help="how many images (default: %(default)s)")
    sub.add_argument("--temperature", type=float, default=1.0)
    sub.add_argument("--seed", type=int, default=0)
    sub.add_argument("--priors", type=Path, default=None,
                     help=f"folder of the priors (top.pt, bottom.pt) (default: the --model run's, else {DEFAULT_PRIORS})")
    sub.add_argument("--class", dest="class_name", default=None, metavar="NAME",
                     help="draw images of this class (class-conditional priors, e.g. CIFAR-10's: dog, ship, ...)")
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
    sub.add_argument("--references", action="store_true", help="also JPEG and WebP (Pillow) on the same images")
    sub.add_argument("-o", "--output", type=Path, default=None,
                     help="write the points to OUTPUT.csv and the rate-distortion plot to OUTPUT.png")
    with_quality(sub)
    with_entropy(sub)
    sub.set_defaults(run=cmd_evaluate)
    return parser


def main(argv: list[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    try:
        _resolve(args)
        args.run(args)
    except (CodecError, CheckpointError, DatasetNotFoundError, FileNotFoundError, ValueError) as error:
        print(f"sparse-vqvae {args.command}: error: {error}", file=sys.stderr)
        sys.exit(1)


if __name__ == "__main__":
    main()
