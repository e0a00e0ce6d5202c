"""What attention over a window of rows costs the photo codec's prior in bits, and buys in speed (issue 27).

The shipped prior attends to every earlier position of the map, so a position's cost grows with its index and a
megapixel photograph takes about a minute each way (docs/photo_codec.md, "Prior-coded speed"). A prior with
``prior.attention_rows`` R attends to its own row and the R rows above: the same cost at every position. Here two
priors over the zoo model's codes are trained alike - the photo recipe's data (the 256x256 tiles of every
photograph of ../shared/data/photos but the last 9), steps, batch and seed - except for their attention: every
earlier position, and ``--rows``. Each then codes the held-out photographs (the last 9) at the top quality as real
files, timed each way; every prior-coded file must decode to the factorised codec's image. The priors are
checkpointed under benchmarks/.cache/prior_window/ (an interrupted run resumes them).

    python benchmarks/prior_window.py [--rows 4] [--steps 1000] [--images 9] [--threads 2]

Writes benchmarks/results/prior_window.json.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch
from _results import RESULTS, cpu_model, write_json
from photo_codec import PHOTOS, read, round_trips
from tqdm import tqdm

from sparse_vqvae.cli import resolve_model
from sparse_vqvae.code_store import StoreMetadata
from sparse_vqvae.codec import Codec
from sparse_vqvae.codes import Codes
from sparse_vqvae.config import DataConfig, PriorTrainConfig
from sparse_vqvae.data import PhotoTiles, photo_files
from sparse_vqvae.entropy_coding import load_frequencies
from sparse_vqvae.pixelsnail import PixelSNAIL
from sparse_vqvae.prior_coding import PriorEntropyModel
from sparse_vqvae.prior_train import prior_configs, train_prior
from sparse_vqvae.train import load_checkpoint

CACHE = Path(__file__).parent / ".cache" / "prior_window"
# The photo recipe's prior (Makefile, PHOTO_RECIPE): the defaults but these.
RECIPE = PriorTrainConfig(steps=1000, batch_size=8, positions="none")
PHOTO_DATA = DataConfig(name="photos", root=str(PHOTOS), image_size=128, tile_size=256, test_photos=9)


def training_codes(model, batch_size: int = 16) -> tuple[Codes, ...]:
    """The model's codes of the recipe's training tiles (what its extract_codes stage stores), in memory."""
    tiles = PhotoTiles(PHOTO_DATA, "train")
    chunks = []
    with torch.inference_mode():
        for first in tqdm(range(0, len(tiles), batch_size), desc="codes of the training tiles"):
            images = torch.stack([tiles[i] for i in range(first, min(first + batch_size, len(tiles)))])
            chunks.append(model.encode(images)[1])
    return tuple(Codes(torch.cat([c[level].atoms for c in chunks]).long(),
                       torch.cat([c[level].levels for c in chunks]).long()) for level in range(len(chunks[0])))


def trained(model, maps: tuple[Codes, ...], rows: int, steps: int) -> list[PixelSNAIL]:
    """One prior a map, attention over ``rows`` rows above (0: every earlier position), the recipe's training."""
    meta = StoreMetadata.for_model(model, [list(m.atoms.shape[1:3]) for m in maps])
    priors = []
    for level, config in enumerate(prior_configs(meta, channels=RECIPE.channels, blocks=RECIPE.blocks,
                                                 res_per_block=RECIPE.res_per_block, dropout=RECIPE.dropout,
                                                 positions=RECIPE.positions, attention_rows=rows)):
        torch.manual_seed(RECIPE.seed)
        prior = PixelSNAIL(config)
        path = CACHE / f"{model.fingerprint()}-rows{rows}-steps{steps}-level{level}.pt"
        path.parent.mkdir(parents=True, exist_ok=True)
        train_prior(prior, maps, level, steps, batch_size=RECIPE.batch_size, lr=RECIPE.lr, seed=RECIPE.seed,
                    checkpoint_path=path, fingerprint=model.fingerprint(), checkpoint_every=RECIPE.checkpoint_every)
        priors.append(prior.eval())
    return priors


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="photo", help="a zoo name (default: %(default)s)")
    parser.add_argument("--rows", type=int, default=4, help="the windowed prior's attention rows (default: %(default)s)")
    parser.add_argument("--steps", type=int, default=RECIPE.steps, help="training steps a prior (default: the recipe's)")
    parser.add_argument("--images", type=int, default=PHOTO_DATA.test_photos, help="held-out photographs coded")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--output", type=Path, default=RESULTS / "prior_window.json")
    args = parser.parse_args()
    if args.rows < 1:
        parser.error(f"--rows: at least 1 (0 is the reference, every earlier position, always measured); got {args.rows}")
    torch.set_num_threads(args.threads)
    found = resolve_model(args.model)
    model = load_checkpoint(found["model"]).model.eval()
    factorised = Codec(model, load_frequencies(found["codec_model"]))
    files = photo_files(PHOTOS)[-PHOTO_DATA.test_photos :][: args.images]
    images = [(path.name, read(path)) for path in files]
    megapixels = sum(image.shape[1] * image.shape[2] for _, image in images) / 1e6
    maps = training_codes(model)
    quality = max(factorised.qualities)
    results = {}
    for rows in (0, args.rows):
        codec = Codec(model, PriorEntropyModel(trained(model, maps, rows, args.steps), model.fingerprint()))
        print(f"attention {'over every earlier position' if not rows else f'over {rows} rows above'}:", flush=True)
        triples, encode_s, decode_s = round_trips(codec, images, quality, checked=factorised)
        results[str(rows)] = {"bpp": 8 * sum(size for _, _, size in triples) / (megapixels * 1e6),
                              "bpp_per_image": [8 * size / (image.shape[1] * image.shape[2])
                                                for image, _, size in triples],
                              "encode_s_per_mp": encode_s / megapixels, "decode_s_per_mp": decode_s / megapixels}
    factorised_bpp = 8 * sum(len(factorised.compress(image, quality)) for _, image in images) / (megapixels * 1e6)
    full, window = results["0"], results[str(args.rows)]
    summary = {"bits_vs_full_attention": window["bpp"] / full["bpp"] - 1,
               "speedup_encode": full["encode_s_per_mp"] / window["encode_s_per_mp"],
               "speedup_decode": full["decode_s_per_mp"] / window["decode_s_per_mp"]}
    write_json(args.output, {
        "model": args.model, "fingerprint": model.fingerprint(), "quality": quality, "rows": args.rows,
        "steps": args.steps, "recipe": {"batch_size": RECIPE.batch_size, "lr": RECIPE.lr, "seed": RECIPE.seed},
        "threads": args.threads, "machine": cpu_model(), "images": [name for name, _ in images],
        "megapixels_mean": megapixels / len(images),
        "factorised_bpp": factorised_bpp, "by_rows": results, "summary": summary})
    print(f"\n{len(images)} held-out photographs ({megapixels / len(images):.2f} MP each), quality {quality}, "
          f"{args.threads} threads")
    print("| attention | bpp | encode s/MP | decode s/MP |\n|---|---|---|---|")
    print(f"| factorised (no prior) | {factorised_bpp:.3f} | | |")
    for rows, point in results.items():
        label = "every earlier position" if rows == "0" else f"{rows} rows above"
        print(f"| {label} | {point['bpp']:.3f} | {point['encode_s_per_mp']:.1f} | {point['decode_s_per_mp']:.1f} |")
    print(f"window: {100 * summary['bits_vs_full_attention']:+.1f}% bits, {summary['speedup_encode']:.1f}x encode, "
          f"{summary['speedup_decode']:.1f}x decode; wrote {args.output}")


if __name__ == "__main__":
    main()
