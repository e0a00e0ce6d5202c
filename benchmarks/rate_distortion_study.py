"""The equal-rate study (v3): does coding latents with a few dictionary atoms buy a better trade of quality
for bits than picking codebook vectors?

Each family - the anchors ``vanilla`` (one EMA codebook), ``rvq`` (residual EMA codebooks) and ``fsq`` (finite
scalar quantisation), and the sparse ``omp`` (quantised after the pursuit), ``qmp`` (quantised matching pursuit,
a fixed K per model) and ``lasso`` - is trained at >= 3 rates with the same budget (the pipeline's pretraining,
then ``--steps`` stage-1 steps, then the PixelSNAIL priors); ``qmp_lambda`` is ONE quantised-pursuit model trained
over a range of rate-distortion multipliers and measured at each of its 10 qualities (the one-model curve), beside
``rvq_lambda`` (a residual VQ with the same per-position early stop, trained the same way: the fair rival) and
``rvq_dropout`` (a residual VQ trained with stage dropout, measured at each prefix of its stages). Each
point is measured on held-out images: real ``.svq`` files with the factorised entropy model (``bpp``; ``payload_bpp``
without the 43-byte header) and with the priors (``bpp_prior``), PSNR from the whole-set MSE and MS-SSIM. The
anchors, ``rvq_lambda`` and the sparse families ``qmp`` and ``qmp_lambda`` are trained with two seeds (``--seeds``; each point's
``settings`` has its ``seed``), and every curve is compared by BD-rate and BD-PSNR against vanilla, rvq and fsq,
per seed. Two held-out sets: the embedded photographs' test crops, and 1,000 CIFAR-10 images
(``../shared/data/cifar10-jpeg/train``, trained on the other 49,000).

    python benchmarks/rate_distortion_study.py                       # both sets, every family
    python benchmarks/rate_distortion_study.py --sets embedded --doubling-check
    python benchmarks/rate_distortion_study.py --kept-only --no-mlflow    # trains nothing: the kept points so far

``--doubling-check`` trains every model of the sets in ``--doubling-sets`` (the embedded set by
default: all of both sets would not fit a day of this CPU) again with twice the stage-1 steps and no
priors (``--prior-steps 0`` does the same for a study: the priors' budget is not what doubles), and asks
of every family against vanilla and against rvq whether it is better or worse at both budgets - by
BD-rate where the two curves share a PSNR range, else by BD-PSNR where they share a rate range. The
budget is enough when no such verdict flips.

Each trained model is cached (``--cache``, default ``benchmarks/.cache/study/``) by a key of its
settings, budget, data and the library's source fingerprint, and its measured points are also kept in
``--points`` (default ``benchmarks/results/study_points/<set>/<key>.json``, committed with the code): a
study resumes across interrupted runs and across machines (the study outlasts a session here), and a
change to the library retrains everything. A model being trained is locked, so two processes (one
thread each on a 2-core machine) can share a cache: each skips what the other trains. The first seed
of every set comes before the second, so an unfinished study has whole curves first.

On the CIFAR-10 set each model's samples are measured too (issue 30: at equal bits, whose samples are
closer to real images?): with the judge of ``benchmarks/judge_train.py`` (``--judge``), every point of a
model gets ``synthesis``: the Frechet distance on the judge's features, precision and recall of 1,000
images decoded from the priors' codes at temperature 1 (``pixelsnail_t1``), from the factorised model's
(``factorised``) and of the model's reconstructions of held-out images, against the judge's 5,000
held-out images (``benchmarks/synthesis.py`` measures the same way).

``--kept-only`` trains nothing: it writes the same JSON and plots from the points kept so far, with
``"complete": false`` and ``"missing"`` (each model not yet measured: set, family, settings, seed) while some
are, for a study that outlasts a session. The points' keys name the library they were measured with: it
is the first of this checkout's library and the library as each commit that changed it left it (newest
first) whose keys name kept files (``--source`` names it instead).

``lasso`` is not in the default run: at 3.0-3.5 bpp (study v1: ~3 pairs a position whatever its
alpha) it shares no rate range with the others; ``--families lasso`` still trains it.
"""

from __future__ import annotations

import argparse
import fcntl
import hashlib
import json
import io
import os
import subprocess
import tarfile
import tempfile
import time
from collections.abc import Iterator
from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch
from _results import RESULTS, write_json
from judge_train import PUBLISHED as DEFAULT_JUDGE
from synthesis import judge_reference

from sparse_vqvae.code_store import CodeStore, extract_codes
from sparse_vqvae.codec import Codec, fit_frequencies
from sparse_vqvae.config import DataConfig, ModelConfig, PretrainConfig, PriorTrainConfig, TrainConfig
from sparse_vqvae.data import ImageArray, load_dataset, save_image_array
from sparse_vqvae.pixelsnail import PixelSNAIL
from sparse_vqvae.pretrain import pretrain
from sparse_vqvae.prior_coding import PriorEntropyModel
from sparse_vqvae.prior_train import load_maps, prior_configs, train_prior
from sparse_vqvae.pictures import line_plot
from sparse_vqvae.provenance import source_fingerprint
from sparse_vqvae.rate_distortion import bd_psnr, bd_rate, pareto, plot, psnr_at_rate, sparse_vqvae_point
from sparse_vqvae.train import evaluate, load_checkpoint, make_optimizer, run_training, save_checkpoint
from sparse_vqvae.vqvae import IDENTITY_DEFAULTS
from tasks.synthesis import Reference, measure_model

REPO = Path(__file__).resolve().parents[1]
DEFAULT_CACHE = Path(__file__).parent / ".cache" / "study"
DEFAULT_POINTS = RESULTS / "study_points"
CIFAR10 = REPO.parent / "shared" / "data" / "cifar10-jpeg" / "train"

# Rates per family: bits a position before entropy coding ~ log2(N) per atom (+ log2(levels) per coefficient).
FAMILIES: dict[str, list[dict[str, Any]]] = {
    "vanilla": [dict(selection_fn="vanilla", num_atoms=n) for n in (64, 256, 1024, 4096)],
    "rvq": [dict(selection_fn="rvq", num_atoms=256, stages=k) for k in (1, 2, 3, 4)],
    # one model, its 10 qualities: the residual VQ with qmp_lambda's per-position early stop (the fair rival)
    "rvq_lambda": [dict(selection_fn="rvq", num_atoms=256, stages=4, train_lambda_min=1e-3, train_lambda_max=1e-1)],
    "fsq": [dict(selection_fn="fsq", num_atoms=n) for n in (256, 1024, 4096, 16384)],
    "qmp": [dict(selection_fn="qmp", n_nonzero=k, num_atoms=256, coef_levels=8) for k in (1, 2, 3, 4)],
    # one model, its 10 qualities: lambda from 0.1 (quality 1) to 0.001 (9) and 0 (10)
    "qmp_lambda": [dict(selection_fn="qmp", n_nonzero=4, num_atoms=256, coef_levels=8, train_lambda_min=1e-3,
                        train_lambda_max=1e-1)],
    # one model, its 8 qualities (a prefix of the stages, top map first): the shipped photo codec's rate control
    "rvq_dropout": [dict(selection_fn="rvq", num_atoms=256, stages=4, stage_dropout=True)],
    "omp": [dict(selection_fn="omp", n_nonzero=1, num_atoms=256, coef_levels=2, coef_quantizer="learned"),
            dict(selection_fn="omp", n_nonzero=1, num_atoms=512, coef_levels=4, coef_quantizer="learned"),
            dict(selection_fn="omp", n_nonzero=2, num_atoms=512, coef_levels=4, coef_quantizer="learned"),
            dict(selection_fn="omp", n_nonzero=3, num_atoms=512, coef_levels=8, coef_quantizer="learned")],
    "lasso": [dict(selection_fn="lasso", alpha=a, max_nonzero=4, num_atoms=512, coef_levels=8,
                   coef_quantizer="learned", normalize_latents=True) for a in (0.5, 0.3, 0.15)],
}
DEFAULT_FAMILIES = [name for name in FAMILIES if name != "lasso"]
ANCHORS = ("vanilla", "rvq", "fsq")
REFERENCES = (*ANCHORS, "rvq_lambda")  # every family's BD figures are against these
SEEDED = (*ANCHORS, "rvq_lambda", "qmp", "qmp_lambda")  # trained with every --seeds seed: the spread behind a verdict
SPARSE = ("qmp", "qmp_lambda", "omp", "lasso")
# a one-model curve and the per-rate models it stands in for; how close it must stay to them (issue 26's target)
ONE_MODEL_CURVES = {"qmp_lambda": "qmp", "rvq_lambda": "rvq", "rvq_dropout": "rvq"}
CLOSE_DB = 0.3
SETS = {
    "embedded": DataConfig(),
    "cifar10": DataConfig(name="imagefolder", root=str(CIFAR10), test_fraction=0.02),
}


def prepared(cache: Path, name: str, config: DataConfig) -> tuple[ImageArray, ImageArray]:
    """The set's train and test images as uint8 arrays (decoded once, then memory-mapped)."""
    folder = cache / name
    for split in ("train", "test"):
        if not (folder / f"{split}.npy").is_file():
            folder.mkdir(parents=True, exist_ok=True)
            save_image_array(load_dataset(config, split), folder / f"{split}.npy")
    return ImageArray(folder / "train.npy"), ImageArray(folder / "test.npy")


def model_key(set_name: str, data: DataConfig, model: ModelConfig, budget: dict[str, Any], seed: int,
              source: str | None = None) -> str:
    """The model's name in the cache and in ``--points``: a hash of what made it, the library's source (this
    checkout's unless ``source`` names another) included."""
    settings = json.dumps({"set": set_name, "data": asdict(data), "model": asdict(model), "budget": budget,
                           "seed": seed, "source": source or source_fingerprint()}, sort_keys=True)
    return hashlib.sha256(settings.encode()).hexdigest()[:16]


SYNTHESIS_IMAGES = 1000  # a source's images: as benchmarks/synthesis.py measures


def train_and_measure(cache: Path, points: Path, set_name: str, data: DataConfig, config: ModelConfig,
                      budget: dict[str, Any], seed: int, train_set: ImageArray, test_set: ImageArray,
                      synthesis: Reference | None = None) -> list[dict[str, Any]] | None:
    """One model of the study, trained as the pipeline trains it, measured on held-out images at each of its
    qualities (kept in ``points``; None while another process holds the model's lock)."""
    key = model_key(set_name, data, config, budget, seed)
    kept = points / set_name / f"{key}.json"
    if kept.is_file():
        return json.loads(kept.read_text())
    folder = cache / set_name / key
    result_file = folder / "result.json"
    if result_file.is_file():
        write_json(kept, json.loads(result_file.read_text()))
        return json.loads(kept.read_text())
    folder.mkdir(parents=True, exist_ok=True)
    with open(folder / ".lock", "w") as lock:
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)  # released by the kernel if this process dies
        except BlockingIOError:
            print(f"{set_name} {differing(asdict(config))}: being trained by another process, skipped", flush=True)
            return None
        if kept.is_file():  # finished by the other process while this one waited for the lock
            return json.loads(kept.read_text())
        result = measured(folder, config, budget, seed, train_set, test_set, synthesis)
        write_json(kept, result)
        return result


def measured(folder: Path, config: ModelConfig, budget: dict[str, Any], seed: int, train_set: ImageArray,
             test_set: ImageArray, synthesis: Reference | None = None) -> list[dict[str, Any]]:
    """Train one model and measure it at each of its codec's qualities (a rate-controlled model's ten; else the
    highest), and its samples with ``synthesis``; the points go to ``folder/result.json``."""
    result_file = folder / "result.json"
    start = time.perf_counter()
    train_config = TrainConfig(steps=budget["steps"], seed=seed)
    model = pretrain(config, PretrainConfig(steps=budget["pretrain_steps"], seed=seed), train_set)
    optimizer = make_optimizer(model, train_config.lr)
    torch.manual_seed(train_config.seed)
    run_training(model, optimizer, train_set, train_config)
    save_checkpoint(folder / "model.pt", model, None, train_config.steps, 0)
    model = load_checkpoint(folder / "model.pt").model.eval()  # as shipped: what the files decode with
    quality_figures = evaluate(model, test_set, progress=True)

    fingerprint = model.fingerprint()
    extract_codes(model, train_set, folder / "train_codes", batch_size=256)
    store = CodeStore(folder / "train_codes", fingerprint)
    maps = load_maps(store)
    meta = store.meta
    frequencies = fit_frequencies(model, maps, meta, train_set)  # a rate-controlled model's per quality
    images = [test_set[i] for i in range(min(budget["images"], len(test_set)))]
    codec = Codec(model, frequencies)
    one_model_curve = model.config.rate_controlled or model.config.stage_dropout
    measured_qualities = codec.qualities if one_model_curve else [codec.qualities[-1]]
    priors = trained_priors(meta, maps, budget["prior_steps"]) if budget["prior_steps"] else None
    points = []
    for quality in measured_qualities:
        factorised = sparse_vqvae_point(codec, images, quality)
        prior_coded = {"bpp": None, "psnr": None, "images": 0}
        # the priors code whole codes: every quality of a rate-controlled model, a stage-dropout model's top only
        if priors is not None and (model.config.rate_controlled or quality == codec.qualities[-1]):
            prior_coded = sparse_vqvae_point(Codec(model, PriorEntropyModel(priors, fingerprint)),
                                             images[: budget["prior_images"]], quality)
        points.append({"bpp": factorised["bpp"], "payload_bpp": factorised["payload_bpp"],
                       "bpp_prior": prior_coded["bpp"], "psnr": factorised["psnr"], "ms_ssim": factorised["ms_ssim"],
                       "psnr_prior_images": prior_coded["psnr"], "test_psnr": quality_figures["test_psnr"],
                       "images": factorised["images"], "prior_images": prior_coded["images"],
                       "settings": {**asdict(config), "seed": seed, "quality": quality},
                       "seconds": round(time.perf_counter() - start, 1)})
    if synthesis is not None and priors is not None:
        held_out = torch.stack([test_set[i] for i in range(min(SYNTHESIS_IMAGES, len(test_set)))])
        figures, _ = measure_model(model, priors, frequencies, synthesis, held_out, SYNTHESIS_IMAGES, (1.0,), seed)
        for point in points:
            point["synthesis"] = {"real": synthesis.real, **figures}
    write_json(result_file, points)
    return points


def trained_priors(meta, maps, steps: int) -> list[PixelSNAIL]:
    """The pipeline's PixelSNAIL priors (params.yaml's shape) over a model's training codes."""
    config = PriorTrainConfig()
    priors = []
    for level, shape in enumerate(prior_configs(meta, channels=config.channels, blocks=config.blocks,
                                                res_per_block=config.res_per_block, dropout=config.dropout)):
        torch.manual_seed(config.seed + level)
        prior = PixelSNAIL(shape)
        train_prior(prior, maps, level, steps, batch_size=config.batch_size, lr=config.lr, seed=config.seed + level)
        priors.append(prior.eval())
    return priors


def differing(settings: dict[str, Any]) -> dict[str, Any]:
    """The model settings that differ from the defaults models are identified against: what tells the study's
    points apart in a table, the same whatever `make run`'s default is."""
    defaults = {**IDENTITY_DEFAULTS, "seed": 0}
    return {k: v for k, v in settings.items() if v != defaults.get(k)}


def of_seed(points: list[dict], seed: int, seeded: bool = False) -> list[dict]:
    """A family's points trained with ``seed`` (a family trained with one seed only: its points; a ``seeded``
    family without points of ``seed``, its models not measured yet: none)."""
    chosen = [p for p in points if p.get("settings", {}).get("seed", 0) == seed]
    return chosen or ([] if seeded else points)


def compare(families: dict[str, list[dict]], seed: int = 0) -> dict[str, dict[str, float | None]]:
    """BD-rate (percent bits at equal PSNR) of every family against vanilla, rvq, fsq and rvq_lambda, for both
    entropy models, and BD-PSNR (dB at equal rate) of the factorised files, defined where BD-rate may not be: each
    family's ``seed`` points against the references' ``seed`` points."""
    families = {name: chosen for name, points in families.items() if (chosen := of_seed(points, seed, name in SEEDED))}
    table: dict[str, dict[str, float | None]] = {}
    for name, points in families.items():
        row: dict[str, float | None] = {}
        for anchor in REFERENCES:
            if anchor in families and anchor != name:
                row[f"vs_{anchor}"] = bd_rate(families[anchor], points)
                if all(p["bpp_prior"] is not None for p in families[anchor] + points):
                    row[f"vs_{anchor}_prior"] = bd_rate(prior_coded_points(families[anchor]), prior_coded_points(points))
                row[f"vs_{anchor}_bd_psnr"] = bd_psnr(families[anchor], points)
        table[name] = row
    return table


def one_model_curves(families: dict[str, list[dict]], seed: int = 0) -> dict[str, dict[str, Any]]:
    """Does one rate-controlled model stand in for a model a rate? Each one-model curve's ``seed`` points against
    its per-rate family's frontier (interpolated between its models; a point outside their rates is not judged):
    the rates its points within ``CLOSE_DB`` below it span (the target: >= 3x), and its BD-PSNR against them."""
    curves = {}
    for curve, per_rate in ONE_MODEL_CURVES.items():
        points = of_seed(families.get(curve, []), seed, curve in SEEDED)
        reference = of_seed(families.get(per_rate, []), seed, per_rate in SEEDED)
        if not points or not reference:
            continue
        frontier = pareto(reference)
        close = [p["bpp"] for p in points
                 if (level := psnr_at_rate(frontier, p["bpp"])) is not None and p["psnr"] >= level - CLOSE_DB]
        rates = [p["bpp"] for p in points]
        span = max(close) / min(close) if close else None
        curves[curve] = {"against": per_rate, "bd_psnr": bd_psnr(reference, points), "rate_span": max(rates) / min(rates),
                         "close_rate_span": span, "span_at_least_3x": span is not None and span >= 3}
    return curves


def rate(bpp: float | None) -> str:
    return "-" if bpp is None else f"{bpp:.3f}"


def prior_coded_points(points: list[dict]) -> list[dict]:
    """The points' prior-coded rate and quality, as bd_rate reads them."""
    return [{"bpp": p["bpp_prior"], "psnr": p["psnr_prior_images"]} for p in points]


def better(row: dict[str, float | None], anchor: str) -> bool | None:
    """Is the family better than ``anchor``: fewer bits at equal PSNR, or where the curves share no PSNR
    range, more PSNR at equal rate (None when they share neither)."""
    if row.get(f"vs_{anchor}") is not None:
        return row[f"vs_{anchor}"] < 0
    if row.get(f"vs_{anchor}_bd_psnr") is not None:
        return row[f"vs_{anchor}_bd_psnr"] > 0
    return None


def doubling_check(short: dict[str, list[dict]], long: dict[str, list[dict]], steps: int) -> dict[str, Any]:
    """Every family against vanilla and rvq at ``steps`` and at twice as many: does any verdict flip?"""
    bd_short, bd_long = compare(short), compare(long)
    comparisons = {}
    for family in short:
        for anchor in ANCHORS:
            if anchor != family and anchor in short:
                verdicts = [better(bd_short[family], anchor), better(bd_long[family], anchor)]
                comparisons[f"{family} vs {anchor}"] = {"better": verdicts,
                                                        "bd": [bd_short[family], bd_long[family]]}
    determined = {name: c["better"] for name, c in comparisons.items() if None not in c["better"]}
    flipped = [name for name, (a, b) in determined.items() if a != b]
    sparse = [name for name in determined if name.split(" vs ")[0] in SPARSE]
    # Without a verdict at both budgets a comparison says nothing: None, not "unchanged".
    return {"steps": [steps, 2 * steps], "comparisons": comparisons,
            "unchanged": not flipped if determined else None, "flipped": flipped,
            "sparse_unchanged": not set(sparse) & set(flipped) if sparse else None,
            "undetermined": [name for name, c in comparisons.items() if None in c["better"]],
            "points_at_double": long}


def synthesis_table(families: dict[str, list[dict]]) -> dict[str, list[dict[str, Any]]]:
    """Per family, one row a model: its samples' FD, precision and recall (temperature 1) beside the bits a
    pixel of its held-out codes under the priors that drew them, and the factorised model's samples' FD."""
    table: dict[str, list[dict[str, Any]]] = {}
    for family, points in families.items():
        seen = set()
        for point in points:
            samples = point.get("synthesis")
            settings = {k: v for k, v in point["settings"].items() if k != "quality"}
            key = json.dumps(settings, sort_keys=True)
            if samples is None or key in seen:  # a rate-controlled model's qualities share one set of samples
                continue
            seen.add(key)
            drawn = samples["pixelsnail_t1"]
            table.setdefault(family, []).append(
                {"seed": settings["seed"], "settings": settings, "bpp_prior": drawn["bpp"], "fd": drawn["fd"],
                 "precision": drawn["precision"], "recall": drawn["recall"], "fd_factorised": samples["factorised"]["fd"],
                 "fd_reconstruction": samples["reconstruction"]["fd"]})
    return table


TARGET_BD_RATE = -10.0  # issue 26: the best sparse family's BD-rate against each anchor, percent


def best_sparse(bd: dict[str, dict[str, float | None]]) -> dict[str, Any] | None:
    """Issue 26's verdict on one set and seed: the sparse family whose worst BD-rate against the anchors (vanilla,
    rvq, fsq) is lowest (among those with the fewest undefined), its BD-rates and BD-PSNRs against them, and
    whether every BD-rate is <= ``TARGET_BD_RATE`` (False once one is not; None while one is undefined, the curves
    sharing no PSNR range, and the rest meet it). None: no sparse family has a BD-rate against any anchor."""
    ranked = []
    for family in (f for f in SPARSE if f in bd):
        rates = {anchor: bd[family].get(f"vs_{anchor}") for anchor in ANCHORS}
        known = [rate for rate in rates.values() if rate is not None]
        if known:  # fewer undefined verdicts first, then the lower worst BD-rate
            ranked.append((len(rates) - len(known), max(known), family, rates))
    if not ranked:
        return None
    _, worst, family, rates = min(ranked, key=lambda r: r[:2])
    met = False if worst > TARGET_BD_RATE else (None if None in rates.values() else True)
    return {"family": family, "bd_rate": rates,
            "bd_psnr": {anchor: bd[family].get(f"vs_{anchor}_bd_psnr") for anchor in ANCHORS}, "target_met": met}


def synthesis_at_equal_bits(table: dict[str, list[dict[str, Any]]]) -> dict[str, Any]:
    """Issue 30's question, seed by seed: is each family's best sample FD at most vanilla's at equal bits? Beside
    each model, the lowest FD a vanilla model of the same seed reaches with no more bits a pixel under its priors
    (vanilla's FD need not fall with its bits, so its best at or below a budget, not an interpolation); a
    family's margin is its best model's FD minus that (None where vanilla has no model that cheap)."""
    families: dict[str, dict[str, Any]] = {}
    for family, rows in table.items():
        if family == "vanilla":
            continue
        for seed in sorted({r["seed"] for r in rows}):
            vanilla = [r for r in table.get("vanilla", []) if r["seed"] == seed]
            compared = []
            for r in (r for r in rows if r["seed"] == seed):
                cheaper = [v["fd"] for v in vanilla if v["bpp_prior"] <= r["bpp_prior"]]
                compared.append({"settings": r["settings"], "bpp_prior": r["bpp_prior"], "fd": r["fd"],
                                 "vanilla_fd": min(cheaper) if cheaper else None,
                                 "margin": r["fd"] - min(cheaper) if cheaper else None})
            measured = [c for c in compared if c["margin"] is not None]
            best = min(measured, key=lambda c: c["margin"]) if measured else None
            families.setdefault(family, {})[str(seed)] = {
                "models": compared, "best": best, "at_most_vanilla": None if best is None else best["margin"] <= 0}
    sparse = {f: v for f, v in families.items() if f in SPARSE}
    seeds = sorted({seed for v in sparse.values() for seed in v})
    best_sparse = {}
    for seed in seeds:
        ranked = [(v[seed]["best"]["margin"], f) for f, v in sparse.items() if v.get(seed, {}).get("best")]
        if ranked:
            margin, family = min(ranked)
            best_sparse[seed] = {"family": family, "margin": margin, "at_most_vanilla": margin <= 0}
    return {"families": families, "best_sparse": best_sparse,
            "target_met": all(b["at_most_vanilla"] for b in best_sparse.values()) if best_sparse else None}


def synthesis_plot(table: dict[str, list[dict[str, Any]]], path: Path, partial: str = "") -> Path:
    """Each family's samples' FD against the bits of its codes under the priors that drew them, seed by seed: the
    synthesis side of the study, one curve a family and seed (lower is closer to real images)."""
    series = {}
    for family, rows in table.items():
        for seed in sorted({r["seed"] for r in rows}):
            chosen = sorted((r["bpp_prior"], r["fd"]) for r in rows if r["seed"] == seed)
            label = family if seed == 0 else f"{family}, seed {seed}"
            series[label] = ([bpp for bpp, _ in chosen], [fd for _, fd in chosen])
    return line_plot(series, path, "bits per pixel of the codes under their priors", "FD of the priors' samples",
                     f"equal-rate study, cifar10: samples at temperature 1 (the judge's features){partial}")


def log_to_mlflow(output: Path, pictures: list[Path], summary: dict[str, Any]) -> str:
    """One MLflow run holding the whole comparison (the pipeline's store, experiment sparse-vqvae)."""
    from mlflow.tracking import MlflowClient

    from tasks.tracking import experiment_id

    uri = os.environ.get("MLFLOW_TRACKING_URI") or f"sqlite:///{REPO / 'mlflow.db'}"
    client = MlflowClient(uri)
    run = client.create_run(experiment_id(client, "sparse-vqvae", uri), run_name="equal-rate study",
                            tags={"stage": "equal_rate_study"})
    for key, value in summary["budget"].items():
        client.log_param(run.info.run_id, key, value)
    for set_name, rows in summary["bd_rate"].items():
        for family, row in rows.items():
            for name, value in row.items():
                if value is not None:
                    metric = f"bd_psnr_{name.removesuffix('_bd_psnr')}" if name.endswith("_bd_psnr") else f"bd_rate_{name}"
                    client.log_metric(run.info.run_id, f"{set_name}.{family}.{metric}", value)
    for path in (output, *pictures):
        client.log_artifact(run.info.run_id, str(path))
    client.set_terminated(run.info.run_id)
    return run.info.run_id


def study_models(set_names: list[str], families: list[str],
                 seeds: list[int]) -> Iterator[tuple[int, str, str, ModelConfig]]:
    """(seed, set, family, model) of every model of the study, in the order it trains them: every set's first
    seed, then the next (the families outside ``SEEDED`` with the first seed only)."""
    for seed in seeds:
        for set_name in set_names:
            for family in families:
                if seed != seeds[0] and family not in SEEDED:
                    continue
                for overrides in FAMILIES[family]:
                    yield seed, set_name, family, ModelConfig(**overrides)


def trained(cache: Path, kept: Path, set_names: list[str], families: list[str], budget: dict[str, Any],
            seeds: list[int], synthesis: Reference | None = None) -> dict[str, dict[str, list[dict]]] | None:
    """Every family's models on every set at ``budget``, trained or read from ``kept`` (None while
    another process still trains some of them): every set's first seed, then the next."""
    results: dict[str, dict[str, list[dict]]] = {name: {} for name in set_names}
    complete = True
    for seed, set_name, family, config in study_models(set_names, families, seeds):
        train_set, test_set = prepared(cache, set_name, SETS[set_name])
        points = train_and_measure(cache, kept, set_name, SETS[set_name], config, budget, seed, train_set, test_set,
                                   synthesis if set_name == "cifar10" else None)
        if points is None:
            complete = False
            continue
        results[set_name].setdefault(family, []).extend(points)
        for point in points:
            print(f"{set_name} {family} {differing(point['settings'])} ({budget['steps']} steps): "
                  f"{point['bpp']:.3f} bpp (payload {point['payload_bpp']:.3f}, "
                  f"{rate(point['bpp_prior'])} with the priors), {point['psnr']:.2f} dB, "
                  f"MS-SSIM {point['ms_ssim']:.3f}", flush=True)
    return results if complete else None


def kept_only(kept: Path, set_names: list[str], families: list[str], budget: dict[str, Any], seeds: list[int],
              source: str) -> tuple[dict[str, dict[str, list[dict]]], list[dict[str, Any]]]:
    """The points kept in ``kept`` for every model of the study measured with the library ``source``, and
    the models not measured yet (set, family, settings, seed): nothing is trained."""
    results: dict[str, dict[str, list[dict]]] = {name: {} for name in set_names}
    missing = []
    for seed, set_name, family, config in study_models(set_names, families, seeds):
        path = kept / set_name / f"{model_key(set_name, SETS[set_name], config, budget, seed, source)}.json"
        if path.is_file():
            results[set_name].setdefault(family, []).extend(json.loads(path.read_text()))
        else:
            missing.append({"set": set_name, "family": family, "settings": differing(asdict(config)), "seed": seed})
    return results, missing


def library_sources() -> Iterator[tuple[str, str | None]]:
    """(fingerprint, commit) of the library: this checkout's (commit None), then as each commit that changed
    ``sparse_vqvae/`` left it, newest first (read from git; none outside a git checkout)."""
    yield source_fingerprint(), None
    log = subprocess.run(["git", "log", "--format=%H", "--", "sparse_vqvae"], cwd=REPO, capture_output=True, text=True)
    for commit in log.stdout.split():
        archive = subprocess.run(["git", "archive", commit, "sparse_vqvae"], cwd=REPO, capture_output=True, check=True)
        with tempfile.TemporaryDirectory() as folder, tarfile.open(fileobj=io.BytesIO(archive.stdout)) as tar:
            tar.extractall(folder, **({"filter": "data"} if hasattr(tarfile, "data_filter") else {}))
            yield source_fingerprint(Path(folder) / "sparse_vqvae"), commit


def kept_source(kept: Path, set_names: list[str], families: list[str], budget: dict[str, Any],
                seeds: list[int]) -> tuple[str, str | None]:
    """The library the kept points were measured with (fingerprint, the commit that last changed it; None for
    this checkout's): the first of ``library_sources`` whose keys name kept files of the study."""
    for fingerprint, commit in library_sources():
        results, _ = kept_only(kept, set_names, families, budget, seeds, fingerprint)
        if any(results.values()):
            return fingerprint, commit
    raise SystemExit(f"no points in {kept} for this study's models by any library of this checkout's history: "
                     "name it with --source")


def summarised(results: dict[str, dict[str, list[dict]]], budget: dict[str, Any], threads: int | None,
               seeds: list[int], source: dict[str, Any], missing: list[dict[str, Any]]) -> dict[str, Any]:
    """The study's summary: BD-rate and BD-PSNR of every family on every set (seed 0, and per seed), the
    CIFAR-10 samples' table, and which models it is missing (``complete`` when none)."""
    summary = {"budget": budget, "threads": threads, "seeds": seeds, **source,
               "complete": not missing, "missing": missing,
               "bd_rate": {name: compare(families) for name, families in results.items()},
               "bd_rate_by_seed": {name: {str(seed): compare(families, seed) for seed in seeds}
                                   for name, families in results.items()},
               "best_sparse": {name: {str(seed): best_sparse(compare(families, seed)) for seed in seeds}
                               for name, families in results.items()},
               "one_model_curves": {name: {str(seed): one_model_curves(families, seed) for seed in seeds}
                                    for name, families in results.items()}}
    synthesis = synthesis_table(results.get("cifar10", {}))
    if synthesis:
        summary["synthesis_cifar10"] = synthesis
        summary["synthesis_at_equal_bits"] = synthesis_at_equal_bits(synthesis)
    return summary


def report(output: Path, results: dict[str, dict[str, list[dict]]], summary: dict[str, Any], budget: dict[str, Any],
           mlflow: bool) -> None:
    """Write the JSON and the plots, and print each set's points and BD figures (and log it all to MLflow)."""
    write_json(output, {**results, "summary": summary})
    partial = "" if summary["complete"] else f"\npartial: {len(summary['missing'])} models not measured yet"
    pictures = []
    for set_name, families in results.items():
        if not families:
            continue
        seeds = {p["settings"]["seed"] for pts in families.values() for p in pts}
        points = [{**p, "codec": family if len(seeds) == 1 else f"{family}, seed {p['settings']['seed']}"}
                  for family, pts in families.items() for p in pts]
        pictures.append(plot(points, output.with_name(f"{output.stem}_{set_name}.png"),
                             f"equal-rate study, {set_name}: factorised files{partial}"))
        print(f"\n{set_name}: held-out images, {budget['images']} compressed per model ({budget['prior_images']} "
              "prior-coded)")
        header = f"{'family':>10}  {'settings':<60} {'bpp':>6} {'bpp_prior':>9} {'PSNR':>6} {'MS-SSIM':>7}"
        print(header + "\n" + "-" * len(header))
        for family, pts in families.items():
            for p in pts:
                settings = ", ".join(f"{k}={v}" for k, v in differing(p["settings"]).items() if k != "selection_fn")
                print(f"{family:>10}  {settings:<60} {p['bpp']:6.3f} {rate(p['bpp_prior']):>9} {p['psnr']:6.2f} "
                      f"{p['ms_ssim']:7.3f}")
        for family, row in summary["bd_rate"][set_name].items():
            shown = ", ".join(f"{k} {v:+.1f}{' dB' if k.endswith('bd_psnr') else '%'}" for k, v in row.items()
                              if v is not None)
            print(f"BD {family}: {shown or 'no common range'}")
    if summary.get("synthesis_cifar10"):
        pictures.append(synthesis_plot(summary["synthesis_cifar10"], output.with_name(f"{output.stem}_synthesis.png"),
                                       partial))
    if summary["missing"]:
        print(f"\nnot measured yet: {len(summary['missing'])} models")
    if mlflow:
        print(f"MLflow run {log_to_mlflow(output, pictures, summary)}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sets", default="embedded,cifar10", help="comma-separated: embedded, cifar10")
    parser.add_argument("--families", default=",".join(DEFAULT_FAMILIES),
                        help=f"comma-separated, of {', '.join(FAMILIES)}")
    parser.add_argument("--pretrain-steps", type=int, default=PretrainConfig().steps,
                        help="autoencoder steps before the quantizers are fitted")
    parser.add_argument("--steps", type=int, default=TrainConfig().steps,
                        help="stage-1 steps per model (after pretraining; the pipeline's by default)")
    parser.add_argument("--prior-steps", type=int, default=PriorTrainConfig().steps)
    parser.add_argument("--images", type=int, default=256, help="held-out images compressed per model")
    parser.add_argument("--prior-images", type=int, default=32, help="of those, prior-coded (sequential: slow)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--seeds", default="0,1", help="comma-separated: the seeds of the anchors and the qmp families")
    parser.add_argument("--output", type=Path, default=RESULTS / "rate_distortion_study.json")
    parser.add_argument("--cache", type=Path, default=DEFAULT_CACHE, help="where the trained models are kept")
    parser.add_argument("--points", type=Path, default=DEFAULT_POINTS,
                        help="where each model's measured points are kept (committed: the study resumes anywhere)")
    parser.add_argument("--judge", type=Path, default=DEFAULT_JUDGE,
                        help="the CIFAR-10 judge (benchmarks/judge_train.py) that measures the cifar10 models' samples")
    parser.add_argument("--no-mlflow", action="store_true")
    parser.add_argument("--doubling-check", action="store_true",
                        help="also train every model of --doubling-sets with 2x --steps (no priors) and compare "
                             "each family with vanilla and rvq at both budgets (with --kept-only: from the kept "
                             "points)")
    parser.add_argument("--doubling-sets", default="embedded", help="comma-separated: the sets the check trains again")
    parser.add_argument("--kept-only", action="store_true",
                        help="train nothing: write the JSON and plots from the points kept in --points so far, "
                             "listing the models not measured yet")
    parser.add_argument("--source", help="with --kept-only: the library fingerprint the kept points were measured "
                                         "with (default: found from their keys)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    budget = {"pretrain_steps": args.pretrain_steps, "steps": args.steps, "prior_steps": args.prior_steps, "images": args.images,
              "prior_images": args.prior_images}
    families = args.families.split(",")
    seeds = [int(seed) for seed in args.seeds.split(",")]
    unknown = sorted(set(families) - set(FAMILIES))
    if unknown:
        parser.error(f"--families: unknown {', '.join(unknown)}; choose from {', '.join(FAMILIES)}")
    double = {**budget, "steps": 2 * args.steps, "prior_steps": 0}
    doubling_sets = args.doubling_sets.split(",") if args.doubling_check else []
    if args.kept_only:
        set_names = args.sets.split(",")
        if args.source:
            fingerprint, commit = args.source, None
            known = "named with --source"
        else:
            fingerprint, commit = kept_source(args.points, set_names, families, budget, seeds)
            known = ("the kept points' keys (settings, budget, data and library source) are this checkout's library's"
                     if commit is None else
                     f"the kept points' keys (settings, budget, data and library source) are the library's as commit "
                     f"{commit[:7]} left it")
        results, missing = kept_only(args.points, set_names, families, budget, seeds, fingerprint)
        doubled, missing_doubled = kept_only(args.points, doubling_sets, families, double, seeds[:1], fingerprint)
        source, threads = {"source": fingerprint, "source_commit": commit, "source_known_from": known}, None
    else:
        synthesis = None
        if "cifar10" in args.sets.split(",") and budget["prior_steps"]:
            if not args.judge.is_file():
                parser.error(f"--judge: no judge at {args.judge}: train it with benchmarks/judge_train.py (one to two "
                             "hours of one core) or leave cifar10 out of --sets")
            synthesis, _ = judge_reference(args.judge, CIFAR10, real_count=SYNTHESIS_IMAGES)
        results = trained(args.cache, args.points, args.sets.split(","), families, budget, seeds, synthesis)
        doubled = trained(args.cache, args.points, doubling_sets, families, double, seeds[:1])
        if results is None or doubled is None:
            print("Some models are being trained by another process: rerun when it finishes to write the results.")
            return
        missing, missing_doubled = [], []
        source, threads = ({"source": source_fingerprint(), "source_commit": None,
                            "source_known_from": "the library this run imported"}, args.threads)
    summary = summarised(results, budget, threads, seeds, source, missing)
    if args.doubling_check:
        summary["doubling_check"] = {}
        for set_name, long in doubled.items():
            check = summary["doubling_check"][set_name] = doubling_check(results[set_name], long, args.steps)
            check["missing"] = [m for m in missing_doubled if m["set"] == set_name]
            verdict = {True: "unchanged", False: "CHANGED", None: "undetermined"}[check["unchanged"]]
            partial = f" ({len(check['missing'])} models not measured yet)" if check["missing"] else ""
            print(f"\n{set_name}: each family against vanilla and rvq at {args.steps} and {2 * args.steps} steps: "
                  f"{verdict}{partial}", flush=True)
            for name, comparison in check["comparisons"].items():
                shown = {True: "better", False: "worse", None: "no common range"}
                print(f"  {name}: {' -> '.join(shown[v] for v in comparison['better'])}")
    report(args.output, results, summary, budget, not args.no_mlflow)


if __name__ == "__main__":
    main()
