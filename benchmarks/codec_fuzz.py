"""Corrupted and forged compressed files: every one must fail with a clear ``CodecError`` or decode to
exactly the image its intact file gives - never another exception (a crash), never another image (a
silent wrong image).

Files are made by a zoo model (default ``photo``) from random crops of the embedded photographs, with
both entropy models (the factorised frequencies at random qualities; the PixelSNAIL priors on small
crops, their decoding being sequential), then damaged one way each:

- ``truncated``: cut at a random length;
- ``bit_flip``: 1-8 random bits flipped, the file's CRC left as it is;
- ``forged_bit_flip``: the same, then the file's CRC recomputed (a deliberate forgery);
- ``forged_payload``: the payload replaced by random bytes of random length, the header's length and
  the file's CRC made consistent.

    python benchmarks/codec_fuzz.py [--files 10000] [--prior-files N] [--model photo] [--seed 0]

Writes benchmarks/results/codec_fuzz.json: counts of each outcome by entropy model and damage.
"""

from __future__ import annotations

import argparse
import random
import zlib
from collections import Counter
from pathlib import Path

import numpy as np
import torch
from _results import RESULTS, write_json
from PIL import Image
from tqdm.auto import tqdm

from sparse_vqvae.cli import resolve_model
from sparse_vqvae.codec import VERSION, Codec, CodecError
from sparse_vqvae.data import EMBEDDED_TEST, EMBEDDED_TRAIN, embedded_photo_dir, to_model_range
from sparse_vqvae.entropy_coding import load_frequencies
from sparse_vqvae.maps import prior_files
from sparse_vqvae.prior_coding import PriorEntropyModel
from sparse_vqvae.train import load_checkpoint

DAMAGES = ("truncated", "bit_flip", "forged_bit_flip", "forged_payload")
HEADER_END = 4 + 1 + 1 + 8 + 2 + 2 + 1 + 1 + 3  # then a map's sizes, the payload length, the codes' CRC


def crops(count: int, size: int, rng: random.Random) -> list[torch.Tensor]:
    photos = []
    for name in EMBEDDED_TRAIN + EMBEDDED_TEST:
        with Image.open(embedded_photo_dir() / name) as image:
            photos.append(np.asarray(image.convert("RGB")))
    result = []
    for _ in range(count):
        photo = rng.choice(photos)
        top, left = rng.randrange(photo.shape[0] - size), rng.randrange(photo.shape[1] - size)
        result.append(to_model_range(photo[top : top + size, left : left + size]))
    return result


def damaged(data: bytes, damage: str, maps: int, rng: random.Random) -> bytes:
    if damage == "truncated":
        return data[: rng.randrange(len(data))]
    if damage in ("bit_flip", "forged_bit_flip"):
        forged = bytearray(data)
        for _ in range(rng.randint(1, 8)):
            forged[rng.randrange(len(forged) - (4 if damage == "forged_bit_flip" else 0))] ^= 1 << rng.randrange(8)
        if damage == "forged_bit_flip":
            forged[-4:] = zlib.crc32(bytes(forged[:-4])).to_bytes(4, "little")
        return bytes(forged)
    start = HEADER_END + 4 * maps  # the payload length, then the codes' CRC
    payload = rng.randbytes(rng.choice([rng.randrange(0, 64), 4 * rng.randrange(1, 400)]))
    body = data[:start] + len(payload).to_bytes(4, "little") + data[start + 4 : start + 8] + payload
    return body + zlib.crc32(body).to_bytes(4, "little")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--files", type=int, default=10000, help="damaged files in all, half per entropy model")
    parser.add_argument("--prior-files", type=int, default=None,
                        help="damaged prior-coded files (default: half of --files; each forged one that reaches the "
                             "decoder costs a sequential decode, about a second here)")
    parser.add_argument("--model", default="photo", help="a zoo name (default: %(default)s)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--output", type=Path, default=RESULTS / "codec_fuzz.json")
    args = parser.parse_args(argv)
    torch.set_num_threads(2)
    rng = random.Random(args.seed)
    found = resolve_model(args.model)
    model = load_checkpoint(found["model"]).model.eval()
    codecs = {"factorised": (Codec(model, load_frequencies(found["codec_model"])), 64),
              "prior": (Codec(model, PriorEntropyModel.load(prior_files(found["priors"]))), 32)}
    outcomes: dict[str, Counter] = {}
    for kind, (codec, size) in codecs.items():
        originals = []
        for image in crops(20, size, rng):
            quality = rng.choice(codec.qualities) if kind == "factorised" else codec.qualities[-1]
            data = codec.compress(image, quality)
            originals.append((data, codec.decompress(data)))
        maps = len(model.quantizers)
        count = args.prior_files if kind == "prior" and args.prior_files is not None else args.files // 2
        for index in tqdm(range(count), desc=f"fuzz {kind}"):
            damage = DAMAGES[index % len(DAMAGES)]
            data, image = rng.choice(originals)
            forged = damaged(data, damage, maps, rng)
            try:
                decoded = codec.decompress(forged)
            except CodecError:
                outcome = "clear error"
            except Exception as error:  # noqa: BLE001 - what this benchmark counts
                outcome = f"crash: {type(error).__name__}: {error}"[:200]
            else:
                outcome = "same image" if torch.equal(decoded, image) else "SILENT WRONG IMAGE"
            outcomes.setdefault(f"{kind}/{damage}", Counter())[outcome] += 1
    crashes = sum(n for counts in outcomes.values() for o, n in counts.items() if o.startswith("crash"))
    wrong = sum(counts["SILENT WRONG IMAGE"] for counts in outcomes.values())
    total = sum(sum(counts.values()) for counts in outcomes.values())
    for key, counts in outcomes.items():
        print(f"{key:<34} " + ", ".join(f"{o}: {n}" for o, n in counts.most_common()))
    print(f"{total} damaged files: {crashes} crashes, {wrong} silent wrong images")
    write_json(args.output, {"model": args.model, "fingerprint": model.fingerprint(), "svq_version": VERSION,
                             "seed": args.seed, "files": total, "crashes": crashes, "silent_wrong_images": wrong,
                             "outcomes": {k: dict(v) for k, v in outcomes.items()}})


if __name__ == "__main__":
    main()
