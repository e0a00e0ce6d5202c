"""Ship a pipeline run as a zoo model: ``python -m tasks.export_zoo NAME`` in a workspace that ran
``dvc repro`` (e.g. ``make photo-model``) writes ``models/zoo/NAME/``, which ``sparse-vqvae
--model NAME`` uses (and ``photo`` is the default). The folder models/zoo is the package
``sparse_vqvae.zoo`` (pyproject.toml), so a wheel carries what is written there:

- ``model.pt``: the trained VQ-VAE without its optimizer state;
- ``codec.pt``: the frequency model, fitted anew to the run's training codes by this code (so a
  model trained before a change of the entropy coder ships with the current one);
- ``top.pt`` [``bottom.pt``]: the PixelSNAIL priors without their optimizer states, in half precision (they
  are the larger part; coding computes with float64 copies of whatever weights ship, on both sides);
- ``MODEL_CARD.md``: the data, settings, steps, wall times and figures of the run, and the library that trained
  it (its source fingerprint, which stage 1 records; ``--trained-by`` names it for a run that did not).

The files are checked to belong together (the model's fingerprint) and to fit ``--limit-mb``.
"""

from __future__ import annotations

import argparse
import json
import re
from dataclasses import asdict
from pathlib import Path
from typing import Any

from sparse_vqvae.atomic import atomic_write
from sparse_vqvae.code_store import CodeStore
from sparse_vqvae.config import ModelConfig
from sparse_vqvae.codec import fit_frequencies
from sparse_vqvae.data import ImageArray
from sparse_vqvae.maps import prior_file, prior_files
from sparse_vqvae.prior_train import load_prior, save_prior
from sparse_vqvae.train import load_checkpoint, save_checkpoint

from .layout import METRICS, PRIORS, TIMINGS, TRAIN_CODES, TRAIN_IMAGES, VQVAE
from .params import PipelineParams, load_params

ZOO = Path(__file__).resolve().parents[1] / "models" / "zoo"
BENCHMARK = Path(__file__).resolve().parents[1] / "benchmarks" / "results" / "photo_codec.json"
STAGES = ("prepare_data", "pretrain_dictionary", "train_vqvae", "extract_codes", "train_prior", "evaluate")


def export(name: str, output: Path = ZOO, limit_mb: float = 25.0, trained_by: str | None = None) -> Path:
    """Write the zoo folder ``output/name`` from the current workspace's pipeline outputs; ``trained_by`` names the
    code that trained them where stage 1's metrics do not (a library source fingerprint, a commit)."""
    if not re.fullmatch(r"[a-z0-9][a-z0-9_-]*", name):
        raise ValueError(f"zoo names are lower-case letters, digits, - and _; got {name!r}")
    params = load_params()
    checkpoint = load_checkpoint(VQVAE)
    model, fingerprint = checkpoint.model, checkpoint.model.fingerprint()
    folder = output / name
    folder.mkdir(parents=True, exist_ok=True)
    save_checkpoint(folder / "model.pt", model, None, checkpoint.step, checkpoint.epoch, checkpoint.config)
    store = CodeStore(TRAIN_CODES, fingerprint)
    fit_frequencies(model, store, store.meta, ImageArray(TRAIN_IMAGES)).save(folder / "codec.pt")
    for level, path in enumerate(prior_files(PRIORS)):
        prior = load_prior(path)
        if prior.fingerprint != fingerprint:
            raise ValueError(f"{path} was trained on the codes of model {prior.fingerprint}, not of "
                             f"{VQVAE} ({fingerprint}): rerun the pipeline (dvc repro)")
        save_prior(prior_file(folder, level), prior.prior.half(), None, prior.step, fingerprint)
    sizes = {path.name: path.stat().st_size for path in sorted(folder.glob("*.pt"))}
    total = sum(sizes.values()) / 2**20
    if total > limit_mb:
        raise ValueError(f"the zoo files of {name} hold {total:.1f} MB, over the {limit_mb} MB limit")
    with atomic_write(folder / "MODEL_CARD.md", "w") as handle:
        handle.write(model_card(name, params, checkpoint.step, sizes, fingerprint, trained_by))
    return folder


def _json(path: Path) -> dict[str, Any]:
    return json.loads(path.read_text()) if path.is_file() else {}


def _library(source: str | None) -> str:
    return "not recorded" if source is None else f"library source `{source}` (`sparse_vqvae.provenance`)"


def _resumed(stage: str) -> str:
    """A resumed stage's time covers its last run only: say where that run started (no total is kept)."""
    starts = [f"{key.removesuffix('start_step').replace('_', ' ')}at step {value}"
              for key, value in _json(METRICS / f"{stage}.json").items() if key.endswith("start_step") and value]
    return f" (its last run only, resumed {', '.join(starts)})" if starts else ""


def model_card(name: str, params: PipelineParams, steps: int, sizes: dict[str, int], fingerprint: str,
               trained_by: str | None = None) -> str:
    """The card: what the model saw, how it was trained, by which code and how long it took, and what it measures
    (the stage-1 test figures of this run; the photo benchmark's, when it measured this model)."""
    data, defaults = params.data, asdict(ModelConfig())
    settings = {k: v for k, v in asdict(params.model).items() if v != defaults[k]}
    prepared = _json(METRICS / "prepare_data.json")
    train, benchmark = _json(METRICS / "train_vqvae.json"), _json(BENCHMARK)
    seconds = {stage: _json(TIMINGS / f"{stage}.json").get("seconds") for stage in STAGES}
    lines = [
        f"# Zoo model `{name}`",
        "",
        f"Made by `python -m tasks.export_zoo {name}` from a `dvc repro` of this project's pipeline.",
        "",
        "## Data",
        f"- dataset `{data.name}`, root `{data.root}`; training reads random {data.image_size}x{data.image_size} "
        "crops (and flips), drawn afresh each epoch" + (f" inside {data.tile_size}x{data.tile_size} tiles; the last "
                                                        f"{data.test_photos} photographs by name are held out"
                                                        if data.name == "photos" else ""),
        f"- prepared: {prepared.get('train_images', '?')} training and {prepared.get('test_images', '?')} test images",
        "",
        "## Model",
        f"- settings that differ from the defaults: `{json.dumps(settings)}`",
        f"- stage-1 steps: {steps} (batch {params.train.batch_size}, lr {params.train.lr}), "
        + (f"continuing the trained model `{params.pretrain.init_from}`" if params.pretrain.init_from else
           f"after {params.pretrain.steps} unquantised pretraining steps")
        + f"; priors: {params.prior.steps} steps each "
        f"(positions `{params.prior.positions}`, attention "
        f"{f'over {params.prior.attention_rows} rows above' if params.prior.attention_rows else 'over every earlier position'})",
        f"- trained by: {trained_by or _library(train.get('source'))}",
        "- files: " + ", ".join(f"`{file}` {size / 2**20:.2f} MB" for file, size in sizes.items()),
        "",
        "## Wall time (this machine, seconds a stage)",
        "- " + ", ".join(f"{stage} {value:.0f}{_resumed(stage)}" for stage, value in seconds.items()
                         if value is not None),
        "",
        "## Figures (held-out images only)",
        f"- stage 1's test split: PSNR {train.get('test_psnr', float('nan')):.2f} dB at the highest quality "
        f"(mean-colour baseline {train.get('baseline_psnr', float('nan')):.2f} dB)",
    ]
    if benchmark.get("fingerprint") == fingerprint:
        lines += ["- full-size photographs, real files (`python benchmarks/photo_codec.py` -> "
                  "`benchmarks/results/photo_codec.json`):", ""]
        for set_name, measured in benchmark["sets"].items():
            lines.append(f"  - {set_name} ({len(measured['images'])} photographs, {measured['megapixels_mean']:.2f} MP): "
                         + "; ".join(f"q{p['setting']} {p['bpp']:.3f} bpp {p['psnr']:.2f} dB" for p in measured["ours"]))
            for prefix, label, unit in (("bd_rate_", "BD-rate", "{:+.1f}%"), ("bd_psnr_", "BD-PSNR", "{:+.2f} dB")):
                lines.append(f"    {label} " + ", ".join(f"{key.removeprefix(prefix)} "
                                                      + ("n/a" if value is None else unit.format(value))
                                                      for key, value in measured["summary"].items()
                                                      if key.startswith(prefix)))
            speed = measured["speed"]
            lines.append(f"    speed at the highest quality: {speed['encode_mp_s']:.2f} MP/s encode, "
                         f"{speed['decode_mp_s']:.2f} MP/s decode ({benchmark['threads']} threads)")
            if "prior" in measured:
                prior = measured["prior"]
                lines.append(f"    prior-coded at the highest quality: {prior['bpp']:.3f} bpp, "
                             f"{prior['encode_s_per_image']:.1f} s encode and {prior['decode_s_per_image']:.1f} s "
                             "decode an image")
    return "\n".join(lines + [""])


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("name", help="the zoo name (a folder of models/zoo)")
    parser.add_argument("--output", type=Path, default=ZOO, help="the zoo folder (default: %(default)s)")
    parser.add_argument("--limit-mb", type=float, default=25.0, help="refuse to ship more (default: %(default)s)")
    parser.add_argument("--trained-by", help="the code that trained the run, where stage 1 did not record it "
                                             "(e.g. 'library source 83e6e29275c1e0dd, commit 30cf48e')")
    args = parser.parse_args(argv)
    print(f"wrote {export(args.name, args.output, args.limit_mb, args.trained_by)}")


if __name__ == "__main__":
    main()
