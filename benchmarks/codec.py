"""Codec throughput: encode and decode speed of our compressed files beside Pillow's JPEG and WebP
(quality 75) on the same images, on this machine, in one run - with the factorised frequency model, and
with the PixelSNAIL priors as the entropy model (sequential decoding): one image at a time, and the
32x32 crops also all in one call (files coded together, as the CLI codes many files).

Two models: what `make run` trained (models/vqvae/model.pt, models/prior/) on the embedded test crops
(32x32, its priors' training size), and the shipped photo model (models/zoo/photo) on 768x512 centre
crops of the held-out photographs (the last 9 of ../shared/data/photos; the embedded test photographs
when that folder is absent).

    python benchmarks/codec.py [--threads 2] [--images 256] [--prior-images 32] [--photos 9] [--prior-photos 3]
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

import numpy as np
import torch
from _results import RESULTS, write_json
from PIL import Image

from sparse_vqvae.cli import resolve_model
from sparse_vqvae.codec import Codec, qualities
from sparse_vqvae.config import DataConfig
from sparse_vqvae.data import EMBEDDED_TEST, embedded_photo_dir, load_dataset, photo_files, to_model_range
from sparse_vqvae.entropy_coding import load_frequencies
from sparse_vqvae.maps import prior_files
from sparse_vqvae.prior_coding import PriorEntropyModel
from sparse_vqvae.rate_distortion import pillow_decode, pillow_encode
from sparse_vqvae.train import load_checkpoint

ROOT = Path(__file__).resolve().parents[1]
PHOTOS = ROOT.parent / "shared" / "data" / "photos"


def timed(function, items) -> tuple[float, list]:
    """Median seconds per item over the items (after one warm-up), and the outputs."""
    function(items[0])
    seconds, outputs = [], []
    for item in items:
        start = time.perf_counter()
        outputs.append(function(item))
        seconds.append(time.perf_counter() - start)
    return statistics.median(seconds), outputs


def measure(name: str, images: list[torch.Tensor], codec: Codec, together: bool = False) -> dict:
    """One image at a time (median); with ``together``, also all of them in one call (``compress_many``, as the
    CLI codes many files), whose files must be the same bytes."""
    megapixels = images[0].shape[1] * images[0].shape[2] / 1e6
    ours_encode, files = timed(codec.compress, images)
    ours_decode, _ = timed(codec.decompress, files)
    row = {"images": len(images), "size": list(images[0].shape[1:]), "entropy": codec.entropy.kind,
           "encode_images_per_s": 1 / ours_encode, "decode_images_per_s": 1 / ours_decode,
           "encode_mp_per_s": megapixels / ours_encode, "decode_mp_per_s": megapixels / ours_decode,
           "bpp": 8 * statistics.mean(len(f) for f in files) / (images[0].shape[1] * images[0].shape[2])}
    if together:
        encode_s, batch_files = timed(codec.compress_many, [images])
        decode_s, decoded = timed(codec.decompress_many, [batch_files[0]])
        if batch_files[0] != files or not all(torch.equal(a, codec.decompress(f)) for a, f in zip(decoded[0], files)):
            raise AssertionError(f"{name}: files coded together differ from the files coded alone")
        row |= {"together_encode_images_per_s": len(images) / encode_s,
                "together_decode_images_per_s": len(images) / decode_s, "together_same_bytes": True}
    for reference in ("JPEG", "WEBP"):
        encode_s, references = timed(lambda image: pillow_encode(image, reference), images)
        decode_s, _ = timed(pillow_decode, references)
        key = reference.lower()
        row |= {f"{key}_encode_images_per_s": 1 / encode_s, f"{key}_decode_images_per_s": 1 / decode_s,
                f"encode_x_{key}": encode_s / ours_encode, f"decode_x_{key}": decode_s / ours_decode,
                f"{key}_q75_bpp": 8 * statistics.mean(len(f) for f in references) / (images[0].shape[1] * images[0].shape[2])}
    print(f"{name:>22}: ours {row['bpp']:.3f} bpp, encode {row['encode_images_per_s']:8.2f} img/s "
          f"({row['encode_mp_per_s']:.3f} MP/s), decode {row['decode_images_per_s']:8.2f} img/s "
          f"({row['decode_mp_per_s']:.3f} MP/s); JPEG {row['jpeg_encode_images_per_s']:.0f} / "
          f"{row['jpeg_decode_images_per_s']:.0f} img/s, WebP {row['webp_encode_images_per_s']:.0f} / "
          f"{row['webp_decode_images_per_s']:.0f} img/s", flush=True)
    if together:
        print(f"{name:>22}: ours, {len(images)} in one call: encode {row['together_encode_images_per_s']:8.2f} img/s, "
              f"decode {row['together_decode_images_per_s']:8.2f} img/s (same bytes as one at a time)", flush=True)
    return row


def held_out_photos(count: int, size: tuple[int, int] = (512, 768)) -> list[torch.Tensor]:
    """Centre crops (height, width) of the held-out photographs, or of the embedded test photographs."""
    paths = photo_files(PHOTOS)[-DataConfig().test_photos :] if PHOTOS.is_dir() else [
        embedded_photo_dir() / name for name in EMBEDDED_TEST]
    crops = []
    for path in paths[:count]:
        with Image.open(path) as image:
            array = np.array(image.convert("RGB"))
        height, width = min(size[0], array.shape[0] // 8 * 8), min(size[1], array.shape[1] // 8 * 8)
        top, left = (array.shape[0] - height) // 2, (array.shape[1] - width) // 2
        crops.append(to_model_range(array[top : top + height, left : left + width]))
    return crops


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--images", type=int, default=256, help="32x32 crops timed")
    parser.add_argument("--prior-images", type=int, default=32, help="of those, coded with the priors")
    parser.add_argument("--photos", type=int, default=9, help="768x512 photographs timed (photo model)")
    parser.add_argument("--prior-photos", type=int, default=3, help="of those, coded with the priors")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    result: dict = {"threads": args.threads}
    if (ROOT / "models/vqvae/model.pt").exists():
        model = load_checkpoint(ROOT / "models/vqvae/model.pt").model.eval()
        crops = load_dataset(DataConfig(test_count=args.images), "test")
        crops = [crops[i] for i in range(len(crops))]
        priors = prior_files(ROOT / "models/prior")
        result["pipeline_model"] = {"selection_fn": model.config.selection_fn, "fingerprint": model.fingerprint()}
        result["crops_32"] = measure("32x32", crops, Codec(model, load_frequencies(ROOT / "models/prior/codec.pt")))
        result["crops_32_prior"] = measure("32x32 (priors)", crops[: args.prior_images],
                                           Codec(model, PriorEntropyModel.load(priors, fingerprint=model.fingerprint())),
                                           together=True)
    else:
        print("models/vqvae/model.pt is missing (run `make run`): the 32x32 rows are left out")
    found = resolve_model("photo")
    photo = load_checkpoint(found["model"]).model.eval()
    photos = held_out_photos(args.photos)
    result["photo_model"] = {"fingerprint": photo.fingerprint(), "quality": max(qualities(photo))}
    result["photos_768x512"] = measure("768x512", photos, Codec(photo, load_frequencies(found["codec_model"])))
    prior = PriorEntropyModel.load(prior_files(found["priors"]), fingerprint=photo.fingerprint())
    result["photos_768x512_prior"] = measure("768x512 (priors)", photos[: args.prior_photos], Codec(photo, prior))
    write_json(RESULTS / "codec.json", result)


if __name__ == "__main__":
    main()
