"""Codec throughput: encode and decode speed of our compressed files beside Pillow's JPEG on the
same images, on this machine, in one run - with the factorised frequency model, and with the
PixelSNAIL priors as the entropy model (sequential decoding; the priors' training size only).

Uses what `make run` trained (models/vqvae/model.pt, models/prior/) on the embedded test
photographs, at two sizes: the 32x32 test crops, and whole photographs downscaled to 256 px.

    python benchmarks/codec.py [--threads 2] [--images 256] [--prior-images 32]
"""

from __future__ import annotations

import argparse
import io
import statistics
import time
from pathlib import Path

import numpy as np
import torch
from _results import RESULTS, write_json
from PIL import Image

from sparse_vqvae.codec import Codec
from sparse_vqvae.config import DataConfig
from sparse_vqvae.data import EMBEDDED_TEST, downscaled_photo, embedded_photo_dir, load_dataset, to_model_range, to_uint8
from sparse_vqvae.entropy_coding import FrequencyModel
from sparse_vqvae.prior_coding import PriorEntropyModel
from sparse_vqvae.train import load_checkpoint

ROOT = Path(__file__).resolve().parents[1]


def timed(function, items) -> tuple[float, list]:
    """Median seconds per item over the items (after one warm-up), and the outputs."""
    function(items[0])
    seconds, outputs = [], []
    for item in items:
        start = time.perf_counter()
        outputs.append(function(item))
        seconds.append(time.perf_counter() - start)
    return statistics.median(seconds), outputs


def jpeg_encode(image: torch.Tensor) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(to_uint8(image[None])[0]).save(buffer, format="JPEG", quality=75)
    return buffer.getvalue()


def jpeg_decode(data: bytes) -> torch.Tensor:
    with Image.open(io.BytesIO(data)) as image:
        return to_model_range(np.array(image.convert("RGB")))


def measure(name: str, images: list[torch.Tensor], codec: Codec) -> dict:
    megapixels = images[0].shape[1] * images[0].shape[2] / 1e6
    ours_encode, files = timed(codec.compress, images)
    ours_decode, _ = timed(codec.decompress, files)
    jpeg_enc, jpegs = timed(jpeg_encode, images)
    jpeg_dec, _ = timed(jpeg_decode, jpegs)
    row = {"images": len(images), "size": list(images[0].shape[1:]),
           "encode_images_per_s": 1 / ours_encode, "decode_images_per_s": 1 / ours_decode,
           "encode_mp_per_s": megapixels / ours_encode, "decode_mp_per_s": megapixels / ours_decode,
           "jpeg_encode_images_per_s": 1 / jpeg_enc, "jpeg_decode_images_per_s": 1 / jpeg_dec,
           "encode_x_jpeg": jpeg_enc / ours_encode, "decode_x_jpeg": jpeg_dec / ours_decode,
           "bpp": 8 * statistics.mean(len(f) for f in files) / (images[0].shape[1] * images[0].shape[2]),
           "jpeg_q75_bpp": 8 * statistics.mean(len(j) for j in jpegs) / (images[0].shape[1] * images[0].shape[2])}
    print(f"{name:>16}: ours encode {row['encode_images_per_s']:8.1f} img/s ({row['encode_mp_per_s']:.3f} MP/s), "
          f"decode {row['decode_images_per_s']:8.1f} img/s; JPEG encode {row['jpeg_encode_images_per_s']:8.1f}, "
          f"decode {row['jpeg_decode_images_per_s']:8.1f} img/s; ratios {row['encode_x_jpeg']:.3f}x / "
          f"{row['decode_x_jpeg']:.3f}x")
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--images", type=int, default=256, help="32x32 crops timed")
    parser.add_argument("--prior-images", type=int, default=32, help="of those, coded with the priors")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    model = load_checkpoint(ROOT / "models/vqvae/model.pt").model.eval()
    codec = Codec(model, FrequencyModel.load(ROOT / "models/prior/codec.pt"))
    prior_codec = Codec(model, PriorEntropyModel.load([ROOT / f"models/prior/level{level}.pt"
                                                       for level in range(model.config.levels)]))
    crops = load_dataset(DataConfig(test_count=args.images), "test")
    crops = [crops[i] for i in range(len(crops))]
    photos = [to_model_range(np.array(downscaled_photo(embedded_photo_dir() / name, 256))[:256, :256])
              for name in EMBEDDED_TEST]
    result = {"model": model.config.selection_fn, "threads": args.threads,
              "crops_32": measure("32x32", crops, codec),
              "crops_32_prior": measure("32x32 (prior)", crops[: args.prior_images], prior_codec),
              "photos_256": measure("256x256", photos, codec)}
    write_json(RESULTS / "codec.json", result)


if __name__ == "__main__":
    main()
