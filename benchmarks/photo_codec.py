"""The photo codec against JPEG and WebP on full-size photographs it never saw.

Our codec is a zoo model (default ``photo``, the one `sparse-vqvae` uses with no ``--model``) at every
quality it has, with its factorised entropy model; JPEG and WebP (Pillow) at their quality settings,
on the same images, in the same run. Rates are real file sizes (8 x bytes / pixels); PSNR is from
the whole set's MSE, MS-SSIM the mean over images; BD-rate compares the curves (negative: ours needs
fewer bits). Also: encode and decode speed (megapixels a second, ``--threads`` torch threads) beside
JPEG's at quality 75, and the colour error - per photograph and channel, |mean of the original -
mean of the decoded| in levels of 255.

Image sets (held out from the model's training by construction):
- ``photos``: the last 9 photographs by name of ../shared/data/photos (the recipe's test split);
- ``embedded``: the 3 embedded test photographs (scikit-image's chelsea, coffee, rocket), full size.

With ``--effort N`` (default 5; 0: none), every quality is also coded with its code refined by N steps
(``sparse-vqvae compress --effort N``: the same decoder, slower encoding): a curve of its own, with its BD-rates
against JPEG, WebP and the unrefined codes, its targets and its encoding speed.

With ``--prior-images N`` (default: all), the highest quality is also coded with the model's PixelSNAIL
prior as the entropy model (the same codes, so the same image, in fewer bits; sequential decoding): a
point of its own, with its speed.

With ``--previous FILE`` (an earlier run's JSON, e.g. the committed one before a new model ships), that run's
curves are kept beside this one's (``previous``: its model, fingerprint and points per set) and drawn with them,
and this model's BD-rate against them is reported: what the new model changed.

    python benchmarks/photo_codec.py [--model photo] [--threads 2] [--limit N] [--effort N] [--prior-images N]
                                     [--previous FILE]

Writes benchmarks/results/photo_codec.json and photo_codec_<set>.png (PSNR and MS-SSIM against bpp).
"""

from __future__ import annotations

import argparse
import json
import operator
import time
from pathlib import Path

import numpy as np
import torch
from _results import RESULTS, write_json
from PIL import Image

from sparse_vqvae.cli import resolve_model
from sparse_vqvae.codec import Codec
from sparse_vqvae.config import DataConfig
from sparse_vqvae.data import EMBEDDED_TEST, embedded_photo_dir, photo_files, to_model_range
from sparse_vqvae.entropy_coding import load_frequencies
from sparse_vqvae.maps import prior_files
from sparse_vqvae.pictures import line_plot
from sparse_vqvae.prior_coding import PriorEntropyModel
from sparse_vqvae.rate_distortion import (JPEG_QUALITIES, WEBP_QUALITIES, bd_psnr, bd_rate, codec_label,
                                          measure_point, pillow_decode, pillow_encode, pillow_points)
from sparse_vqvae.train import load_checkpoint

ROOT = Path(__file__).resolve().parents[1]
PHOTOS = ROOT.parent / "shared" / "data" / "photos"
JPEG_QUALITIES_PHOTO = (2, 3, *JPEG_QUALITIES, 95)  # photographs need lower settings to reach 0.2 bpp
WEBP_QUALITIES_PHOTO = (0, 2, *WEBP_QUALITIES, 95)
JPEG_RANGE = (26.0, 33.0)  # the PSNRs over which the BD-rate target against JPEG is set (dB)
TOP_PSNR, MIN_STEP = 33.0, 0.25  # the top quality's target (dB), and what each quality step must add (dB)
BD_RATE_VS_JPEG, BD_PSNR_VS_JPEG, BD_RATE_VS_WEBP = -15.0, 0.0, 25.0  # the targets (percent, dB, percent)
EFFORT = 5  # the refined curve's steps (sparse-vqvae compress --effort)


def read(path: Path) -> torch.Tensor:
    with Image.open(path) as image:
        return to_model_range(np.array(image.convert("RGB")))


def image_sets(limit: int) -> dict[str, list[tuple[str, torch.Tensor]]]:
    held_out = photo_files(PHOTOS)[-DataConfig().test_photos :] if PHOTOS.is_dir() else []
    sets = {"photos": [(p.name, read(p)) for p in held_out],
            "embedded": [(name, read(embedded_photo_dir() / name)) for name in EMBEDDED_TEST]}
    return {name: images[:limit] if limit else images for name, images in sets.items() if images}


def colour_error(original: torch.Tensor, decoded: torch.Tensor) -> list[float]:
    """|mean of each channel| difference in levels of 255."""
    return ((original.mean(dim=(1, 2)) - decoded.mean(dim=(1, 2))).abs() * 127.5).tolist()


def round_trips(codec: Codec, images: list[tuple[str, torch.Tensor]], quality: int,
                checked: Codec | None = None, effort: int = 0) -> tuple[list[tuple], float, float]:
    """Every image through a real file at ``quality`` (refined by ``effort`` steps): the (original, decoded, bytes)
    triples and the total encode and decode seconds. With ``checked``, each decoded image must equal that codec's
    (raises if not), and each image's rate and times are printed (the slow, prior-coded files)."""
    encode_s = decode_s = 0.0
    triples = []
    for name, image in images:
        start = time.perf_counter()
        data = codec.compress(image, quality, effort)
        middle = time.perf_counter()
        decoded = codec.decompress(data)
        end = time.perf_counter()
        encode_s, decode_s = encode_s + middle - start, decode_s + end - middle
        triples.append((image, decoded, len(data)))
        if checked is not None:
            if not torch.equal(decoded, checked.decompress(checked.compress(image, quality))):
                raise AssertionError(f"{name}: the prior-coded file decodes to another image than the factorised one")
            print(f"  priors, {name}: {8 * len(data) / (image.shape[1] * image.shape[2]):.3f} bpp "
                  f"({image.shape[2]}x{image.shape[1]}, {middle - start:.1f} s encode, {end - middle:.1f} s decode)",
                  flush=True)
    return triples, encode_s, decode_s


def ours(codec: Codec, images: list[tuple[str, torch.Tensor]], effort: int = 0) -> tuple[list[dict], dict]:
    """Every quality on every image, through real files (each code refined by ``effort`` steps); the points, and
    speed and colour error at the highest quality."""
    points = []
    megapixels = sum(image.shape[1] * image.shape[2] for _, image in images) / 1e6
    label = codec_label(codec) + (f", effort {effort}" if effort else "")
    for quality in codec.qualities:
        triples, encode_s, decode_s = round_trips(codec, images, quality, effort=effort)
        errors = [colour_error(image, decoded) for image, decoded, _ in triples]
        point = measure_point(label, quality, triples)
        point.update(encode_mp_s=megapixels / encode_s, decode_mp_s=megapixels / decode_s,
                     colour_error_mean=np.mean(errors, axis=0).tolist(), colour_error_max=float(np.max(errors)))
        print(f"  quality {quality}: {point['bpp']:.3f} bpp, {point['psnr']:.2f} dB, MS-SSIM {point['ms_ssim']:.4f}, "
              f"colour error (mean R, G, B) {', '.join(f'{e:.2f}' for e in point['colour_error_mean'])}", flush=True)
        points.append(point)
    top = points[-1]
    speed = {"encode_mp_s": top["encode_mp_s"], "decode_mp_s": top["decode_mp_s"]}
    colour = {"mean_per_channel": top["colour_error_mean"], "max": top["colour_error_max"]}
    return points, {"speed": speed, "colour_error": colour}


def prior_coded(codec: Codec, images: list[tuple[str, torch.Tensor]], factorised: Codec) -> dict:
    """The highest quality coded with the priors: real files, the same decoded images as the factorised
    files' (checked), encode and decode speed."""
    megapixels = sum(image.shape[1] * image.shape[2] for _, image in images) / 1e6
    quality = max(factorised.qualities)
    triples, encode_s, decode_s = round_trips(codec, images, quality, checked=factorised)
    point = measure_point(codec_label(codec), quality, triples)
    point.update(encode_mp_s=megapixels / encode_s, decode_mp_s=megapixels / decode_s,
                 encode_s_per_image=encode_s / len(images), decode_s_per_image=decode_s / len(images))
    return point


def comparison(codec: Codec, name: str, image: torch.Tensor, path: Path, side: int = 192) -> Path:
    """A labelled picture of a centre crop: the original, ours at the lowest, a middle and the highest
    quality, and JPEG at the rate nearest each (whole-image bpp and PSNR in the titles)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from sparse_vqvae.metrics import psnr, squared_error_255

    pixels = image.shape[1] * image.shape[2]
    top, left = (image.shape[1] - side) // 2, (image.shape[2] - side) // 2
    crop = lambda x: ((x[:, top : top + side, left : left + side].clamp(-1, 1) + 1) / 2).permute(1, 2, 0).numpy()  # noqa: E731
    quality = lambda x: psnr(float(squared_error_255(image[None], x[None])) / (3 * pixels))  # noqa: E731
    qualities = codec.qualities
    panels = [("original", image)]
    jpegs = [(q, len(data), pillow_decode(data)) for q in range(2, 96) for data in [pillow_encode(image, "JPEG", q)]]
    for q in (qualities[0], qualities[len(qualities) // 2], qualities[-1]):
        data = codec.compress(image, q)
        decoded, bpp = codec.decompress(data), 8 * len(data) / pixels
        panels.append((f"ours q{q}: {bpp:.2f} bpp, {quality(decoded):.1f} dB", decoded))
        jq, size, jpeg = min(jpegs, key=lambda j: abs(8 * j[1] / pixels - bpp))
        panels.append((f"JPEG q{jq}: {8 * size / pixels:.2f} bpp, {quality(jpeg):.1f} dB", jpeg))
    figure, axes = plt.subplots(1, len(panels), figsize=(2.6 * len(panels), 3.0), dpi=100)
    for axis, (label, picture) in zip(axes, panels):
        axis.imshow(crop(picture), interpolation="nearest")
        axis.set_title(label, fontsize=7)
        axis.axis("off")
    figure.suptitle(f"{name}: centre {side}x{side} crop", fontsize=9)
    figure.tight_layout()
    figure.savefig(path)
    plt.close(figure)
    return path


def jpeg_speed(images: list[tuple[str, torch.Tensor]]) -> dict:
    """Pillow's JPEG at quality 75: megapixels a second to encode and to decode, the same images."""
    megapixels = sum(image.shape[1] * image.shape[2] for _, image in images) / 1e6
    start = time.perf_counter()
    files = [pillow_encode(image) for _, image in images]
    encode_s = time.perf_counter() - start
    start = time.perf_counter()
    for data in files:
        pillow_decode(data)
    return {"encode_mp_s": megapixels / encode_s, "decode_mp_s": megapixels / (time.perf_counter() - start)}


_SENSES = {">=": operator.ge, "<=": operator.le}


def targets(ours: list[dict], jpeg: list[dict], webp: list[dict]) -> dict:
    """The codec's targets on a set, each with its figure and whether it is met (None: the figure is undefined):
    the top quality's PSNR, the smallest step between qualities, BD-rate against JPEG over JPEG's 26-33 dB (and
    over which PSNRs it is defined, both curves reaching only so far), BD-PSNR against JPEG, BD-rate against WebP."""
    psnrs = [p["psnr"] for p in sorted(ours, key=lambda p: p["setting"])]
    reached = (max(JPEG_RANGE[0], min(p["psnr"] for p in ours), min(p["psnr"] for p in jpeg)),
               min(JPEG_RANGE[1], max(p["psnr"] for p in ours), max(p["psnr"] for p in jpeg)))
    figures = {"top_psnr": (psnrs[-1], ">=", TOP_PSNR),
               "smallest_step_db": (min(np.diff(psnrs)) if len(psnrs) > 1 else None, ">=", MIN_STEP),
               "bd_rate_vs_jpeg_26_33": (bd_rate(jpeg, ours, within=JPEG_RANGE), "<=", BD_RATE_VS_JPEG),
               "bd_psnr_vs_jpeg": (bd_psnr(jpeg, ours), ">=", BD_PSNR_VS_JPEG),
               "bd_rate_vs_webp": (bd_rate(webp, ours), "<=", BD_RATE_VS_WEBP)}
    return {"bd_rate_vs_jpeg_psnr_range": list(reached) if reached[0] < reached[1] else None,
            **{name: {"figure": None if x is None else float(x), "target": f"{sense} {bound:g}",
                      "met": None if x is None else bool(_SENSES[sense](x, bound))}
               for name, (x, sense, bound) in figures.items()}}


def bd_summary(points: list[dict], references: tuple[tuple[str, list[dict]], ...]) -> dict:
    """BD-rate (PSNR, MS-SSIM) and BD-PSNR of a curve against each named reference curve."""
    return {**{f"bd_rate_{metric}_vs_{ref}": bd_rate(points_ref, points, quality=metric)
               for ref, points_ref in references for metric in ("psnr", "ms_ssim")},
            **{f"bd_psnr_vs_{ref}": bd_psnr(points_ref, points) for ref, points_ref in references}}


def summary_words(summary: dict) -> str:
    """'bd_rate_psnr_vs_jpeg -9.9%, ..., bd_psnr_vs_jpeg +0.01 dB'."""
    return ", ".join(f"{k} n/a" if v is None else f"{k} {v:+.2f} dB" if k.startswith("bd_psnr") else f"{k} {v:+.1f}%"
                     for k, v in summary.items())


def target_words(target: dict) -> str:
    """'30.10 (not met)'."""
    if target["figure"] is None:
        return "n/a (undefined)"
    return f"{target['figure']:.2f} ({'met' if target['met'] else 'not met'})"


def earlier_run(path: Path) -> dict:
    """An earlier run's model and its curves, set by set, from its JSON (``--previous``)."""
    try:
        run = json.loads(path.read_text())
        return {"model": run["model"], "fingerprint": run["fingerprint"],
                "sets": {name: {"images": measured["images"], "ours": measured["ours"]}
                         for name, measured in run["sets"].items()}}
    except FileNotFoundError:
        raise SystemExit(f"--previous: no file at {path}") from None
    except (json.JSONDecodeError, KeyError, TypeError) as error:
        raise SystemExit(f"--previous: {path} is not a photo_codec.py result ({error!r})") from None


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="photo", help="a zoo name or checkpoint (default: %(default)s)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--limit", type=int, default=0, help="at most this many images a set (0: all)")
    parser.add_argument("--effort", type=int, default=EFFORT,
                        help="refinement steps of the refined curve (default: %(default)s; 0: no refined curve)")
    parser.add_argument("--prior-images", type=int, default=None,
                        help="images a set also coded with the priors at the highest quality (default: all; 0: none)")
    parser.add_argument("--output", type=Path, default=RESULTS / "photo_codec.json")
    parser.add_argument("--previous", type=Path, default=None,
                        help="an earlier run's JSON: its model's curves are kept and drawn beside this one's")
    args = parser.parse_args()
    previous = earlier_run(args.previous) if args.previous else None
    torch.set_num_threads(args.threads)
    found = resolve_model(args.model)
    model = load_checkpoint(found["model"]).model.eval()
    codec = Codec(model, load_frequencies(found.get("codec_model", ROOT / "models/prior/codec.pt")))
    try:
        priors = prior_files(found.get("priors", ROOT / "models/prior"))
    except FileNotFoundError as missing:
        print(f"no prior-coded point: {missing}", flush=True)
        priors = []
    prior_codec = Codec(model, PriorEntropyModel.load(priors, fingerprint=model.fingerprint())) if priors else None
    result = {"model": args.model, "fingerprint": model.fingerprint(), "threads": args.threads,
              "qualities": list(codec.qualities), "sets": {}}
    if previous is not None:
        result["previous"] = previous
    for name, images in image_sets(args.limit).items():
        pixels = [image.shape[1] * image.shape[2] for _, image in images]
        print(f"{name}: {len(images)} images, {np.mean(pixels) / 1e6:.2f} MP on average", flush=True)
        points, extra = ours(codec, images)
        if prior_codec is not None and args.prior_images != 0:
            extra["prior"] = prior_coded(prior_codec, images[: args.prior_images], codec)
        tensors = [image for _, image in images]
        jpeg = pillow_points(tensors, "JPEG", JPEG_QUALITIES_PHOTO)
        webp = pillow_points(tensors, "WEBP", WEBP_QUALITIES_PHOTO)
        before = previous["sets"].get(name) if previous else None
        if before is not None and before["images"] != [n for n, _ in images]:
            print(f"  --previous measured other images of {name}: its curve is not compared", flush=True)
            before = None
        before = before and before["ours"]
        references = (("jpeg", jpeg), ("webp", webp), *((("previous", before),) if before else ()))
        summary = bd_summary(points, references)
        if args.effort:
            print(f"  refined, effort {args.effort}:", flush=True)
            curve, curve_extra = ours(codec, images, args.effort)
            extra["refined"] = {"effort": args.effort, "points": curve, "speed": curve_extra["speed"],
                                "summary": bd_summary(curve, (*references[:2], ("unrefined", points))),
                                "targets": targets(curve, jpeg, webp)}
        result["sets"][name] = {"images": [n for n, _ in images], "megapixels_mean": float(np.mean(pixels) / 1e6),
                                "ours": points, "jpeg": jpeg, "webp": webp, **extra,
                                "jpeg_speed": jpeg_speed(images), "summary": summary,
                                "targets": targets(points, jpeg, webp)}
        print(f"{'codec':<28} {'setting':>7} {'bpp':>7} {'PSNR':>7} {'MS-SSIM':>8}")
        refined_points = extra["refined"]["points"] if "refined" in extra else []
        for point in points + refined_points + ([extra["prior"]] if "prior" in extra else []) + jpeg + webp:
            print(f"{point['codec']:<28} {point['setting']!s:>7} {point['bpp']:7.3f} {point['psnr']:7.2f} "
                  f"{point['ms_ssim']:8.4f}")
        print("  " + summary_words(summary))
        for label, measured in (("", result["sets"][name]), (f"effort {args.effort} ", extra.get("refined"))):
            if measured:
                print(f"  {label}targets: " + ", ".join(f"{k} {target_words(t)}" for k, t in measured["targets"].items()
                                                        if isinstance(t, dict)))
        if "refined" in extra:
            print(f"  effort {args.effort}: {summary_words(extra['refined']['summary'])}; "
                  f"{extra['refined']['speed']['encode_mp_s']:.3f} MP/s encode", flush=True)
        print(f"  speed (MP/s, {args.threads} threads): ours {extra['speed']['encode_mp_s']:.3f} encode, "
              f"{extra['speed']['decode_mp_s']:.3f} decode; JPEG {result['sets'][name]['jpeg_speed']['encode_mp_s']:.1f}"
              f" / {result['sets'][name]['jpeg_speed']['decode_mp_s']:.1f}")
        if "prior" in extra:
            print(f"  priors: {extra['prior']['encode_mp_s']:.4f} MP/s encode, {extra['prior']['decode_mp_s']:.4f} MP/s "
                  f"decode ({extra['prior']['encode_s_per_image']:.1f} / {extra['prior']['decode_s_per_image']:.1f} s "
                  "an image)")
        for metric, label in (("psnr", "PSNR (dB)"), ("ms_ssim", "MS-SSIM")):
            earlier = ((f"previous model ({previous['fingerprint'][:8]})", before),) if before else ()
            series = {label_of: ([p["bpp"] for p in pts], [p[metric] for p in pts])
                      for label_of, pts in (("sparse-vqvae", points), ("sparse-vqvae, priors", [extra.get("prior")]),
                                            (f"sparse-vqvae, effort {args.effort}", refined_points or [None]),
                                            *earlier, ("JPEG", jpeg), ("WebP", webp)) if pts != [None]}
            line_plot({k: tuple(zip(*sorted(zip(*v)))) for k, v in series.items()},
                      args.output.with_name(f"photo_codec_{name}_{metric}.png"), "bits per pixel (real file sizes)",
                      label, f"{name}: {len(images)} held-out photographs, {np.mean(pixels) / 1e6:.2f} MP")
        first_name, first = images[0]
        comparison(codec, first_name, first, args.output.with_name(f"photo_codec_{name}_crops.png"))
    write_json(args.output, result)


if __name__ == "__main__":
    main()
