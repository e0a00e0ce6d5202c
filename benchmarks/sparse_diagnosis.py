"""Why quantised matching pursuit (``qmp``) loses to residual VQ (``rvq``) in the equal-rate study, measured on the
study's cached models (``benchmarks/rate_distortion_study.py``) without retraining them.

For every cached model of ``--families`` on ``--set`` (each ``<cache>/<set>/<key>/model.pt`` with its
``result.json``), on the set's held-out images (``<cache>/<set>/test.npy``, as the study prepared them):

- ``decoder``: PSNR (whole-set MSE, [0, 255]) of the decoder on the quantised code (the model as trained) and on
  the UNquantised encoder output (every quantizer bypassed): the autoencoder's own ceiling. Both also with each
  image's mean colour put back, as the codec's colour offsets do (what the study's PSNR includes).
- ``latents``, per code map: the coded latent's energy E|z|^2 (qmp's coding target, the encoder output at the
  energy its dictionary was fitted at; ``encoder_energy`` the encoder output's own), its mean's share, its variance
  and effective dimension (participation ratio of the covariance spectrum), the quantised latent's squared error,
  and per rank (a qmp pair's rank in the pursuit, a residual VQ's stage) the mean squared residual after the first k
  ranks, the share of positions holding a rank-k pair and the decoder's PSNR from the first k ranks of both maps.
- ``bits``, per code map and position: the study's factorised coder (its frequency model fitted to the model's
  training codes, split into pair counts, atoms and levels) and a rank-ordered coder fitted to the same codes (the
  count, then per rank its atom and its signed level from that rank's own tables); the difference is what the
  canonical order costs (a qmp level symbol names its rank: K ranks at ~log2 K bits each, where the set order saves
  only log2 K!). Per rank, on the held-out codes: the plug-in entropy of atoms and levels, atoms used and unused,
  the share of positive values and each magnitude's share.
- ``tables`` (qmp): each rank's learned magnitudes and their EMA pick counts (a cell at or below 1 has had no pick
  for hundreds of steps, or only a reseed's weight: stale), the EMA latent energy and pair-count frequencies the
  quantizer kept from training.
- ``losses``: the training objective's terms on the held-out images (reconstruction MSE, commitment and
  dictionary terms): the study kept no training logs.
- ``refit`` (qmp, a re-encode, no retraining): the magnitude tables refitted by Lloyd iterations on training
  latents (every cell a centroid of its current picks), then the held-out images coded again.
- ``qualities`` (qmp_lambda): per quality its multiplier, pairs a position, bits (the study's coder, fitted to
  quality 10's codes, and one fitted to that quality's codes) and PSNR.

``--trace-steps N`` (0: off) also trains: it repeats the study's pretraining of the qmp K=4 model and its first N
stage-1 steps (the study's seeds and batches), as the study trains it and with the magnitude tables refitted on
every batch (no EMA lag, stale cells reset), logging each batch's latent energy and relative error per map, the
rank-0 magnitudes of the top map and where the reconstruction and latent-loss gradients g at the top latent push
it (the cosine of the descent direction -g with z: > 0 outward, growing the latent).

    python benchmarks/sparse_diagnosis.py                                    # the study's default cache
    python benchmarks/sparse_diagnosis.py --cache ../study-run/cache --trace-steps 12

Prints a table per part and writes benchmarks/results/sparse_diagnosis.json (``--output``).
"""

from __future__ import annotations

import argparse
import copy
import json
import math
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from _results import RESULTS, shown_path, write_json
from torch.utils.data import DataLoader, DistributedSampler

from sparse_vqvae.code_store import CodeStore, extract_codes
from sparse_vqvae.codec import qualities
from sparse_vqvae.rate_control import quality_lambda, rate_lambda
from sparse_vqvae.codes import EMPTY, Codes
from sparse_vqvae.config import ModelConfig, PretrainConfig, TrainConfig
from sparse_vqvae.data import ImageArray
from sparse_vqvae.entropy_coding import FrequencyModel
from sparse_vqvae.metrics import psnr
from sparse_vqvae.pretrain import pretrain
from sparse_vqvae.train import load_checkpoint, make_optimizer

DEFAULT_CACHE = Path(__file__).parent / ".cache" / "study"  # the study's default --cache
FAMILIES = ("vanilla", "rvq", "qmp", "qmp_lambda")
BATCH = 256
REFIT_ITERATIONS = 5


def family(settings: dict[str, Any]) -> str:
    if settings["selection_fn"] == "qmp" and settings.get("train_lambda_max", 0) > 0:
        return "qmp_lambda"
    return settings["selection_fn"]


def label(settings: dict[str, Any]) -> str:
    name = family(settings)
    if name == "vanilla":
        return f"vanilla N={settings['num_atoms']}"
    if name == "rvq":
        return f"rvq K={settings['stages']}"
    return f"{name} K={settings['n_nonzero']}"


def cached_models(cache: Path, set_name: str, families: list[str]) -> list[dict[str, Any]]:
    """The cached models of ``families``: folder, family, label and the study's measured points."""
    found = []
    for folder in sorted((cache / set_name).iterdir()):
        if not ((folder / "model.pt").is_file() and (folder / "result.json").is_file()):
            continue
        points = json.loads((folder / "result.json").read_text())
        settings = points[0]["settings"]
        if family(settings) in families:
            found.append({"key": folder.name, "folder": folder, "family": family(settings), "label": label(settings),
                          "seed": settings.get("seed", 0),
                          "study": [{k: p[k] for k in ("bpp", "payload_bpp", "psnr", "test_psnr")} |
                                    {"quality": p["settings"]["quality"]} for p in points]})
    rate = {"vanilla": "num_atoms", "rvq": "stages", "qmp": "n_nonzero", "qmp_lambda": "n_nonzero"}
    return sorted(found, key=lambda m: (families.index(m["family"]), m["seed"],
                                        json.loads((m["folder"] / "result.json").read_text())[0]["settings"][
                                            rate[m["family"]]]))


# --- codes: ranks and cuts -------------------------------------------------------------------------------------------

def ranks_of(quantizer, codes: Codes) -> torch.Tensor:
    """Each pair's rank (qmp: its place in the pursuit, from its level symbol; rvq: its stage; else its slot),
    -1 in empty slots."""
    present = codes.atoms != EMPTY
    if hasattr(quantizer, "pursue"):
        rank = codes.levels // (2 * quantizer.magnitudes)
    elif hasattr(quantizer, "stages"):
        rank = codes.atoms.clamp_min(0) // quantizer.num_atoms
    else:
        rank = torch.arange(codes.atoms.shape[-1]).expand_as(codes.atoms)
    return torch.where(present, rank, -1)


def symbols_of(quantizer, codes: Codes) -> tuple[torch.Tensor, torch.Tensor]:
    """(atom within its rank's table, signed level within its rank's table) of every pair."""
    if hasattr(quantizer, "pursue"):
        return codes.atoms % quantizer.num_atoms, codes.levels % (2 * quantizer.magnitudes)
    if hasattr(quantizer, "stages"):
        return codes.atoms % quantizer.num_atoms, torch.zeros_like(codes.levels)
    return codes.atoms, torch.zeros_like(codes.levels)


def cut(quantizer, codes: Codes, keep: int) -> Codes:
    """The pairs of rank < ``keep`` (the rest emptied)."""
    kept = (ranks_of(quantizer, codes) < keep) & (codes.atoms != EMPTY)
    return Codes(torch.where(kept, codes.atoms, EMPTY), codes.levels * kept)


def rank_count(quantizer) -> int:
    return quantizer.slots


# --- running the models ----------------------------------------------------------------------------------------------

@torch.no_grad()
def forward_catching(model, x: torch.Tensor) -> tuple[Any, dict[int, tuple]]:
    """``model(x)`` and, per map i, what its quantizer took and gave: ``{i: (z, quantizer output)}``."""
    caught: dict[int, tuple] = {}
    hooks = [q.register_forward_hook(lambda module, args, out, i=i: caught.__setitem__(i, (args[0], out)))
             for i, q in enumerate(model.quantizers)]
    try:
        out = model(x)
    finally:
        for hook in hooks:
            hook.remove()
    return out, caught


def run(model, images: torch.Tensor, bypassed: bool = True) -> dict[str, Any]:
    """Per map the encoder's latents, what the quantizer codes of them (its coding target: qmp's at its held
    energy) z and their quantised z_q [M, C] and the codes [B, H, W, K]; the reconstructions from the code and from
    the unquantised latents."""
    model.eval()
    zs, zqs, codes = [[] for _ in model.quantizers], [[] for _ in model.quantizers], [[] for _ in model.quantizers]
    encoded = [[] for _ in model.quantizers]
    quantised, unquantised = [], []
    for start in range(0, len(images), BATCH):
        x = images[start: start + BATCH]
        out, caught = forward_catching(model, x)
        for i, (z, q_out) in caught.items():
            encoded[i].append(z.permute(0, 2, 3, 1).reshape(-1, z.shape[1]))
            zs[i].append(model.quantizers[i].coding_target(encoded[i][-1]))
            zqs[i].append(q_out.z_q.permute(0, 2, 3, 1).reshape(-1, z.shape[1]))
            codes[i].append(q_out.codes)
        quantised.append(out.reconstruction.clamp(-1, 1))
        if bypassed:
            unquantised.append(model.autoencode(x)[0].clamp(-1, 1))
    return {"encoded": [torch.cat(t) for t in encoded], "z": [torch.cat(t) for t in zs],
            "z_q": [torch.cat(t) for t in zqs],
            "codes": tuple(Codes(torch.cat([c.atoms for c in t]), torch.cat([c.levels for c in t])) for t in codes),
            "quantised": torch.cat(quantised), "unquantised": torch.cat(unquantised) if bypassed else None}


@torch.no_grad()
def decoded(model, codes: tuple[Codes, ...]) -> torch.Tensor:
    return torch.cat([model.decode_codes(tuple(c[start: start + BATCH] for c in codes)).clamp(-1, 1)
                      for start in range(0, codes[0].atoms.shape[0], BATCH)])


def image_psnr(images: torch.Tensor, reconstructions: torch.Tensor, colour: bool = False) -> float:
    """PSNR from the whole set's MSE on [0, 255]; ``colour``: each image's mean colour put back first (the codec's
    colour offsets, unrounded)."""
    if colour:
        shift = images.mean(dim=(2, 3), keepdim=True) - reconstructions.mean(dim=(2, 3), keepdim=True)
        reconstructions = (reconstructions + shift).clamp(-1, 1)
    return psnr(float(((reconstructions - images) * 127.5).double().square().mean()))


# --- latents ---------------------------------------------------------------------------------------------------------

def participation_ratio(z: torch.Tensor) -> float:
    """The effective dimension of rows z [M, C]: (sum of the covariance's eigenvalues)^2 / their sum of squares -
    C for isotropic latents, 1 for latents on a line."""
    spectrum = torch.linalg.svdvals((z - z.mean(0)).double()).square()
    return float(spectrum.sum() ** 2 / spectrum.square().sum())


@torch.no_grad()
def latent_figures(quantizer, encoded: torch.Tensor, z: torch.Tensor, z_q: torch.Tensor,
                   codes: Codes) -> dict[str, Any]:
    mean = z.mean(0)
    centred = z - mean
    energy, variance = float(z.square().sum(1).mean()), float(centred.square().sum(1).mean())
    error = float((z - z_q).square().sum(1).mean())
    ranks = ranks_of(quantizer, codes).reshape(-1, codes.atoms.shape[-1])
    residuals = []
    for keep in range(1, rank_count(quantizer) + 1):
        part = quantizer.decode_codes(cut(quantizer, codes, keep))
        part = part.permute(0, 2, 3, 1).reshape(-1, z.shape[1])
        residuals.append(float((z - part).square().sum(1).mean()))
    return {"energy": energy, "encoder_energy": float(encoded.square().sum(1).mean()),
            "mean_energy": float(mean.square().sum()), "variance": variance,
            "participation_ratio": participation_ratio(z),
            "error": error, "relative_error": error / energy, "error_over_variance": error / variance,
            "residual_after_rank": [energy] + residuals,
            "residual_after_rank_over_variance": [r / variance for r in [energy] + residuals],
            "share_with_rank": [float((ranks == k).any(1).float().mean()) for k in range(rank_count(quantizer))],
            "pairs_per_position": float((ranks >= 0).sum(1).float().mean())}


# --- bits ------------------------------------------------------------------------------------------------------------

def coder_bits(fm: FrequencyModel, maps: tuple[Codes, ...]) -> list[dict[str, float]]:
    """The study's factorised coder's information content of the codes [B, H, W, K], per map and part (bits in
    all): the same tables and windows as ``FrequencyModel.bits``, summed over all images at once."""
    parts = []
    for index, codes in enumerate(maps):
        slots = codes.atoms.shape[-1]
        atoms = codes.atoms.reshape(-1, slots).numpy().astype(np.int64)
        levels = codes.levels.reshape(-1, slots).numpy().astype(np.int64)
        present = atoms != EMPTY
        count = present.sum(1)
        bits = {"count": 0.0, "atoms": 0.0, "levels": 0.0}
        for slot in range(slots):
            if fm.coef_levels > 1:
                bits["levels"] += float(-np.log2(fm.levels[index][slot][levels[present[:, slot], slot]]).sum())
            if fm.stage_atoms:
                entries = atoms[count > slot, slot] - slot * fm.stage_atoms
                bits["atoms"] += float(-np.log2(fm.atoms[index][slot][entries]).sum())
                continue
            rows = np.nonzero(count > slot)[0]
            previous = atoms[rows, slot - 1] if slot else np.full(len(rows), -1)
            for start in range(0, len(rows), 4096):
                part = slice(start, start + 4096)
                table = fm._atom_table(index, previous[part], count[rows[part]], slot, slots)
                bits["atoms"] += float(-np.log2(table[np.arange(table.shape[0]), atoms[rows[part], slot]]).sum())
        if fm.variable_count:
            bits["count"] = float(-np.log2(fm.counts[index][count]).sum())
        parts.append(bits)
    return parts


def _smoothed(counts: np.ndarray) -> np.ndarray:
    counts = counts.astype(np.float64) + 1.0
    return counts / counts.sum(-1, keepdims=True)


def rank_tables(quantizer, codes: Codes, atom_count: int, symbol_count: int) -> dict[str, np.ndarray]:
    """A rank-ordered coder's tables fitted to codes [B, H, W, K]: pair counts, per rank atoms and signed levels."""
    ranks = ranks_of(quantizer, codes).reshape(-1, codes.atoms.shape[-1]).numpy()
    atoms, symbols = (t.reshape(ranks.shape).numpy() for t in symbols_of(quantizer, codes))
    slots = rank_count(quantizer)
    return {"count": _smoothed(np.bincount((ranks >= 0).sum(1), minlength=slots + 1)),
            "atoms": _smoothed(np.stack([np.bincount(atoms[ranks == k], minlength=atom_count) for k in range(slots)])),
            "symbols": _smoothed(np.stack([np.bincount(symbols[ranks == k], minlength=symbol_count)
                                           for k in range(slots)]))}


def rank_ordered_bits(quantizer, codes: Codes, tables: dict[str, np.ndarray], counted: bool,
                      symbolled: bool) -> dict[str, float]:
    ranks = ranks_of(quantizer, codes).reshape(-1, codes.atoms.shape[-1]).numpy()
    atoms, symbols = (t.reshape(ranks.shape).numpy() for t in symbols_of(quantizer, codes))
    present = ranks >= 0
    return {"count": float(-np.log2(tables["count"][present.sum(1)]).sum()) if counted else 0.0,
            "atoms": float(-np.log2(tables["atoms"][ranks[present], atoms[present]]).sum()),
            "levels": float(-np.log2(tables["symbols"][ranks[present], symbols[present]]).sum()) if symbolled else 0.0}


def entropy(values: np.ndarray, size: int) -> float:
    if values.size == 0:
        return 0.0
    p = np.bincount(values, minlength=size) / values.size
    p = p[p > 0]
    return float(-(p * np.log2(p)).sum())


def rank_usage(quantizer, codes: Codes) -> list[dict[str, Any]]:
    """Per rank, on these codes: pairs, plug-in entropies of atoms and signed levels, atoms used and unused,
    positive share and each magnitude's share (qmp)."""
    ranks = ranks_of(quantizer, codes).reshape(-1, codes.atoms.shape[-1]).numpy()
    atoms, symbols = (t.reshape(ranks.shape).numpy() for t in symbols_of(quantizer, codes))
    size = quantizer.num_atoms
    rows = []
    for k in range(rank_count(quantizer)):
        chosen, signed = atoms[ranks == k], symbols[ranks == k]
        used = np.bincount(chosen, minlength=size) if chosen.size else np.zeros(size, dtype=np.int64)
        row = {"rank": k, "pairs": int(chosen.size), "atom_entropy": entropy(chosen, size),
               "atoms_used": int((used > 0).sum()), "atoms_unused": int((used == 0).sum()),
               "atom_perplexity": 2 ** entropy(chosen, size)}
        if hasattr(quantizer, "pursue"):
            magnitudes = quantizer.magnitudes
            row["level_entropy"] = entropy(signed, 2 * magnitudes)
            row["positive_share"] = float((signed >= magnitudes).mean()) if signed.size else None
            magnitude = np.where(signed >= magnitudes, signed - magnitudes, magnitudes - 1 - signed)
            row["magnitude_share"] = (np.bincount(magnitude, minlength=magnitudes) / max(magnitude.size, 1)).tolist()
        rows.append(row)
    return rows


def frequency_model(model, folder: Path, train_set: ImageArray, limit: int) -> tuple[FrequencyModel, tuple[Codes, ...]]:
    """The study's frequency model (fitted to the model's training codes, from the cached store when it is there)
    and those codes."""
    fingerprint = model.fingerprint()
    store_path = folder / "train_codes"
    try:
        store = CodeStore(store_path, fingerprint)
    except Exception:  # no store kept: extract the codes as the study does
        scratch = tempfile.mkdtemp(prefix="sparse_diagnosis_")
        extract_codes(model, train_set, Path(scratch) / "codes", batch_size=BATCH)
        store = CodeStore(Path(scratch) / "codes", fingerprint)
    fm = FrequencyModel.fit(store, store.meta)
    rows = range(min(limit, len(store))) if limit else range(len(store))
    maps = tuple(Codes(c.atoms.long(), c.levels.long()) for c in store.batch(rows))
    store.close()
    return fm, maps


def bits_figures(model, fm: FrequencyModel, train_maps: tuple[Codes, ...], test_maps: tuple[Codes, ...],
                 pixels: int) -> dict[str, Any]:
    figures: dict[str, Any] = {"maps": []}
    study = coder_bits(fm, test_maps)
    total_study = total_ranked = 0.0
    for index, (quantizer, train, test) in enumerate(zip(model.quantizers, train_maps, test_maps)):
        positions = test.atoms.shape[0] * test.atoms.shape[1] * test.atoms.shape[2]
        symbol_count = 2 * quantizer.magnitudes if hasattr(quantizer, "pursue") else 1
        tables = rank_tables(quantizer, train, quantizer.num_atoms, symbol_count)
        ranked = rank_ordered_bits(quantizer, test, tables, fm.variable_count, symbol_count > 1)
        total_study += sum(study[index].values())
        total_ranked += sum(ranked.values())
        figures["maps"].append({
            "positions_per_pixel": positions / pixels,
            "study_coder_bits_per_position": {k: v / positions for k, v in study[index].items()},
            "rank_ordered_bits_per_position": {k: v / positions for k, v in ranked.items()},
            "order_overhead_bits_per_position": (sum(study[index].values()) - sum(ranked.values())) / positions,
            "log2_K_factorial": math.log2(math.factorial(rank_count(quantizer))),
            "per_rank": rank_usage(quantizer, test)})
    figures["study_coder_payload_bpp"] = total_study / pixels
    figures["rank_ordered_payload_bpp"] = total_ranked / pixels
    return figures


# --- qmp tables and re-encodes ---------------------------------------------------------------------------------------

def table_figures(quantizer) -> dict[str, Any]:
    return {"magnitudes": quantizer.magnitude_table.tolist(), "pick_counts_ema": quantizer.magnitude_count.tolist(),
            "stale_cells": int((quantizer.magnitude_count <= 1).sum()),  # no pick weight beyond a reseed's
            "energy_ema": float(quantizer.energy), "pair_count_freq_ema": quantizer.count_freq.tolist()}


@torch.no_grad()
def latents_of(model, images: torch.Tensor) -> list[torch.Tensor]:
    return run(model, images, bypassed=False)["z"]


@torch.no_grad()
def refit_tables(model, train_images: torch.Tensor, iterations: int = REFIT_ITERATIONS):
    """A copy of ``model`` whose qmp magnitude tables are refitted by Lloyd iterations on training latents (each
    cell the mean |c| of its picks; an empty cell keeps its value), map by map in the hierarchy's order."""
    model = copy.deepcopy(model).eval()
    for index, quantizer in enumerate(model.quantizers):
        for _ in range(iterations):
            z = latents_of(model, train_images)[index]
            atoms, levels, picked = quantizer.pursue(z, quantizer.codebook(), torch.zeros(z.shape[0]))
            present = atoms != EMPTY
            signed = levels % (2 * quantizer.magnitudes)
            magnitude = torch.where(signed >= quantizer.magnitudes, signed - quantizer.magnitudes,
                                    quantizer.magnitudes - 1 - signed)
            rank = torch.arange(quantizer.slots).expand_as(atoms)
            cells = (rank * quantizer.magnitudes + magnitude)[present]
            size = quantizer.slots * quantizer.magnitudes
            counts = torch.bincount(cells, minlength=size).float().view(quantizer.slots, -1)
            sums = torch.zeros(size).index_add_(0, cells, picked[present]).view(quantizer.slots, -1)
            table = torch.where(counts > 0, sums / counts.clamp_min(1), quantizer.magnitude_table)
            quantizer.magnitude_table.copy_(table.clamp_min(1e-6).sort(dim=1).values)
    return model


# --- the diagnosis of one model --------------------------------------------------------------------------------------

def diagnose(entry: dict[str, Any], images: torch.Tensor, train_set: ImageArray, fit_images: int) -> dict[str, Any]:
    start = time.perf_counter()
    checkpoint = load_checkpoint(entry["folder"] / "model.pt")
    model = checkpoint.model.eval()
    pixels = images.shape[0] * images.shape[2] * images.shape[3]
    result = run(model, images)
    out: dict[str, Any] = {key: entry[key] for key in ("key", "family", "label", "seed", "study")}
    out["steps"] = checkpoint.step
    out["decoder"] = {
        "psnr_quantised": image_psnr(images, result["quantised"]),
        "psnr_unquantised": image_psnr(images, result["unquantised"]),
        "psnr_quantised_colour": image_psnr(images, result["quantised"], colour=True),
        "psnr_unquantised_colour": image_psnr(images, result["unquantised"], colour=True),
        "psnr_first_ranks": [image_psnr(images, decoded(model, tuple(cut(q, c, keep) for q, c in
                                                                     zip(model.quantizers, result["codes"]))), True)
                             for keep in range(1, rank_count(model.quantizers[0]) + 1)]}
    out["latents"] = [latent_figures(q, e, z, zq, c) for q, e, z, zq, c in
                      zip(model.quantizers, result["encoded"], result["z"], result["z_q"], result["codes"])]
    config = model.config
    weights = [config.commitment + (getattr(q, "dictionary_loss_weight", 0.0) or 0.0) if hasattr(q, "pursue")
               else config.commitment for q in model.quantizers]
    out["losses"] = {"reconstruction_mse": float(F.mse_loss(result["quantised"], images)),
                     "latent_mse_per_map": [float(F.mse_loss(z, zq)) for z, zq in zip(result["z"], result["z_q"])],
                     "latent_loss": sum(w * float(F.mse_loss(z, zq))
                                        for w, z, zq in zip(weights, result["z"], result["z_q"]))}
    fm, train_maps = frequency_model(model, entry["folder"], train_set, 0)
    out["bits"] = bits_figures(model, fm, train_maps, result["codes"], pixels)
    if hasattr(model.quantizers[0], "pursue"):
        out["tables"] = [table_figures(q) for q in model.quantizers]
        train_images = torch.stack([train_set[i] for i in range(min(fit_images, len(train_set)))])
        with rate_lambda(model, 0.0):
            refitted = refit_tables(model, train_images)
            again = run(refitted, images, bypassed=False)
        out["refit"] = {"psnr_quantised_colour": image_psnr(images, again["quantised"], colour=True),
                        "latents": [{"relative_error": float((z - zq).square().sum(1).mean() / z.square().sum(1).mean()),
                                     "pairs_per_position": float((c.atoms != EMPTY).sum(-1).float().mean())}
                                    for z, zq, c in zip(again["z"], again["z_q"], again["codes"])],
                        "magnitudes": [q.magnitude_table.tolist() for q in refitted.quantizers]}
        if model.config.rate_controlled:
            out["qualities"] = quality_figures(model, images, train_images, fm, pixels)
    out["seconds"] = round(time.perf_counter() - start, 1)
    return out


@torch.no_grad()
def quality_figures(model, images: torch.Tensor, train_images: torch.Tensor, fm: FrequencyModel,
                    pixels: int) -> list[dict[str, Any]]:
    """A rate-controlled qmp model at each quality: pairs, bits under the study's coder (fitted to quality 10's
    codes) and under one fitted to this quality's training codes, PSNR."""
    rows = []
    for quality in qualities(model):
        lam = quality_lambda(model, quality)
        with rate_lambda(model, lam):
            result = run(model, images, bypassed=False)
            train_codes = run(model, train_images, bypassed=False)["codes"]
        matched = FrequencyModel(fm.num_atoms, fm.coef_levels, fm.slots, fm.variable_count, fm.fingerprint,
                                 *_fitted_tables(train_codes, fm))
        rows.append({"quality": quality, "lambda": lam,
                     "pairs_per_position": [float((c.atoms != EMPTY).sum(-1).float().mean()) for c in result["codes"]],
                     "study_coder_payload_bpp": sum(sum(p.values()) for p in coder_bits(fm, result["codes"])) / pixels,
                     "matched_coder_payload_bpp": sum(sum(p.values()) for p in coder_bits(matched, result["codes"]))
                     / pixels,
                     "psnr_colour": image_psnr(images, result["quantised"], colour=True),
                     "relative_error": [float((z - zq).square().sum(1).mean() / z.square().sum(1).mean())
                                        for z, zq in zip(result["z"], result["z_q"])]})
    return rows


def _fitted_tables(maps: tuple[Codes, ...], fm: FrequencyModel) -> tuple[list, list, list]:
    atoms, levels, counts = [], [], []
    for codes in maps:
        present = codes.atoms != EMPTY
        slots = codes.atoms.shape[-1]
        atoms.append(np.stack([_smoothed(torch.bincount(codes.atoms[..., s][present[..., s]],
                                                        minlength=fm.num_atoms).numpy()) for s in range(slots)]))
        levels.append(_smoothed(torch.bincount(codes.levels[present], minlength=fm.coef_levels).numpy()))
        counts.append(_smoothed(torch.bincount(present.sum(-1).reshape(-1), minlength=slots + 1).numpy()))
    return atoms, levels, counts


# --- the trace (trains: off by default) ------------------------------------------------------------------------------

def trace(train_set: ImageArray, steps: int, pretrain_steps: int) -> dict[str, Any]:
    """The study's qmp K=4 model: its pretraining, then ``steps`` stage-1 steps on the study's first batches, as the
    study trains it (``study``) and with the magnitude tables refitted on every batch (``no_lag``: EMA decay 0)."""
    config = ModelConfig(selection_fn="qmp", n_nonzero=4, num_atoms=256, coef_levels=8)
    train_config = TrainConfig()
    base = pretrain(config, PretrainConfig(steps=pretrain_steps, seed=train_config.seed), train_set, progress=False)
    sampler = DistributedSampler(train_set, num_replicas=1, rank=0, shuffle=True, seed=train_config.seed,
                                 drop_last=True)
    loader = DataLoader(train_set, batch_size=train_config.batch_size, sampler=sampler, drop_last=True)
    batches = [batch for _, batch in zip(range(steps), loader)]
    runs = {}
    for variant in ("study", "no_lag"):
        model = copy.deepcopy(base)
        if variant == "no_lag":
            for quantizer in model.quantizers:
                quantizer.decay = 0.0
        torch.manual_seed(train_config.seed)
        optimizer = make_optimizer(model, train_config.lr)
        rows = []
        for step, x in enumerate(batches, 1):
            model.train()
            optimizer.zero_grad(set_to_none=True)
            out, caught = forward_catching(model, x)
            reconstruction = F.mse_loss(out.reconstruction, x)
            top = caught[0][0]
            g_rec, = torch.autograd.grad(reconstruction, top, retain_graph=True)
            g_lat, = torch.autograd.grad(out.latent_loss, top, retain_graph=True)
            (reconstruction + out.latent_loss).backward()
            optimizer.step()
            model.after_step()
            row = {"step": step, "reconstruction_mse": reconstruction.item(), "latent_loss": out.latent_loss.item()}
            for i, (z, q_out) in caught.items():
                row[f"energy_{i}"] = float(z.detach().square().sum(1).mean())  # the encoder's output
                target = model.quantizers[i].coding_target(z.detach())
                row[f"relative_error_{i}"] = float((target - q_out.z_q.detach()).square().sum(1).mean()
                                                   / target.square().sum(1).mean())
            z = top.detach()  # the descent step -g moves the latent outward where cos(-g, z) > 0
            row["outward_cos_reconstruction_grad"] = float(-(g_rec * z).sum() / (g_rec.norm() * z.norm()).clamp_min(1e-30))
            row["outward_cos_latent_grad"] = float(-(g_lat * z).sum() / (g_lat.norm() * z.norm()).clamp_min(1e-30))
            row["top_rank0_magnitudes"] = model.quantizers[0].magnitude_table[0].tolist()
            rows.append(row)
        runs[variant] = rows
    return {"model": "qmp K=4 (the study's settings and seeds)", "pretrain_steps": pretrain_steps, "steps": steps,
            "runs": runs}


# --- report ----------------------------------------------------------------------------------------------------------

def joined(values, spec: str, sep: str = " | ") -> str:
    return sep.join(format(v, spec) for v in values)


def report(models: list[dict[str, Any]], traced: dict[str, Any] | None) -> None:
    print("\ndecoder PSNR (dB; 'c': mean colour put back, as the codec's offsets), latents (top | bottom) and the "
          "training objective's latent term over its reconstruction term, on the held-out images")
    header = (f"{'model':<18}{'study bpp':>10}{'study dB':>9}{'quant c':>8}{'unquant c':>10}{'quant':>7}{'unquant':>8}"
              f"  {'E|z|^2':>17}  {'encoder E|z|^2':>17}  {'err/var':>15}  {'pairs/pos':>11}  {'lat/rec loss':>12}")
    print(header + "\n" + "-" * len(header))
    for m in models:
        s, d, lat = m["study"][-1], m["decoder"], m["latents"]
        energy = joined([x["energy"] for x in lat], "7.3g")
        encoder = joined([x["encoder_energy"] for x in lat], "7.3g")
        error = joined([x["error_over_variance"] for x in lat], ".4f")
        pairs = joined([x["pairs_per_position"] for x in lat], ".2f")
        print(f"{m['label']:<18}{s['bpp']:>10.3f}{s['psnr']:>9.2f}{d['psnr_quantised_colour']:>8.2f}"
              f"{d['psnr_unquantised_colour']:>10.2f}{d['psnr_quantised']:>7.2f}{d['psnr_unquantised']:>8.2f}  "
              f"{energy:>17}  {encoder:>17}  {error:>15}  {pairs:>11}  "
              f"{m['losses']['latent_loss'] / m['losses']['reconstruction_mse']:>12.3f}")
    print("\nper rank: PSNR from the first k ranks (colour put back); residual/variance after rank k (top | bottom)")
    for m in models:
        if m["family"] == "vanilla":
            continue
        psnrs = joined(m["decoder"]["psnr_first_ranks"], ".2f", " ")
        residuals = " | ".join(joined(x["residual_after_rank_over_variance"][1:], ".3g", " ") for x in m["latents"])
        print(f"{m['label']:<18} PSNR {psnrs:<24} residual {residuals}")
    print("\nbits a position (top | bottom): the study's coder (count + atoms + levels), rank-ordered coder, overhead")
    for m in models:
        maps = m["bits"]["maps"]
        parts = [p["study_coder_bits_per_position"] for p in maps]
        study = " | ".join(f"{sum(p.values()):5.2f} ({p['count']:.2f}+{p['atoms']:.2f}+{p['levels']:.2f})"
                           for p in parts)
        ranked = joined([sum(p["rank_ordered_bits_per_position"].values()) for p in maps], "5.2f")
        over = joined([p["order_overhead_bits_per_position"] for p in maps], "+.2f")
        b = m["bits"]
        print(f"{m['label']:<18} {study}   ranked {ranked}   overhead {over}   payload bpp "
              f"{b['study_coder_payload_bpp']:.3f} (ranked {b['rank_ordered_payload_bpp']:.3f}, "
              f"study files {m['study'][-1]['payload_bpp']:.3f})")
    print("\nper rank (top || bottom): atom entropy / atoms unused, level entropy, positive share")
    for m in models:
        maps = []
        for per_map in m["bits"]["maps"]:
            cells = []
            for r in per_map["per_rank"]:
                cell = f"r{r['rank']}: {r['atom_entropy']:.2f}/{r['atoms_unused']}"
                if r.get("positive_share") is not None:
                    cell += f", {r['level_entropy']:.2f}, +{r['positive_share']:.2f}"
                cells.append(cell)
            maps.append("; ".join(cells))
        print(f"{m['label']:<18} " + " || ".join(maps))
    for m in models:
        if "tables" not in m:
            continue
        print(f"\n{m['label']}: magnitudes per rank (stale cells: EMA picks < 1), re-encode with refitted tables")
        for name, table in zip(("top", "bottom"), m["tables"]):
            rows = "; ".join(joined(r, ".3g", " ") for r in table["magnitudes"])
            print(f"  {name:<7} {rows}   stale {table['stale_cells']}, energy EMA {table['energy_ema']:.3g}")
        r = m["refit"]
        after = joined([x["relative_error"] for x in r["latents"]], ".2e")
        before = joined([x["relative_error"] for x in m["latents"]], ".2e")
        print(f"  refit: PSNR {r['psnr_quantised_colour']:.2f} dB (was {m['decoder']['psnr_quantised_colour']:.2f}), "
              f"relative error {after} (was {before})")
        for q in m.get("qualities", []):
            print(f"  quality {q['quality']:>2} lambda {q['lambda']:.4f}: pairs {joined(q['pairs_per_position'], '.2f')}, "
                  f"payload bpp {q['study_coder_payload_bpp']:.3f} (matched coder {q['matched_coder_payload_bpp']:.3f}), "
                  f"{q['psnr_colour']:.2f} dB")
    if traced:
        print(f"\ntrace: {traced['model']}, {traced['steps']} stage-1 steps after {traced['pretrain_steps']} pretraining")
        for variant, rows in traced["runs"].items():
            for row in rows:
                print(f"  {variant:<6} step {row['step']:>3}: E|z|^2 {row['energy_0']:9.4g} | {row['energy_1']:8.4g}, "
                      f"rel err {row['relative_error_0']:.3f} | {row['relative_error_1']:.3f}, "
                      f"rec {row['reconstruction_mse']:.4f}, latent loss {row['latent_loss']:.3f}, outward cos rec "
                      f"{row['outward_cos_reconstruction_grad']:+.2f} lat {row['outward_cos_latent_grad']:+.2f}, "
                      f"top rank-0 magnitudes {joined(row['top_rank0_magnitudes'], '.3g', ' ')}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--cache", type=Path, default=DEFAULT_CACHE, help="the study's cache of trained models")
    parser.add_argument("--set", default="embedded", help="the study's set whose models are diagnosed")
    parser.add_argument("--families", default=",".join(FAMILIES), help=f"comma-separated, of {', '.join(FAMILIES)}")
    parser.add_argument("--images", type=int, default=0, help="held-out images (0: all)")
    parser.add_argument("--fit-images", type=int, default=2048,
                        help="training images the re-encodes refit on (and qmp_lambda's per-quality coders)")
    parser.add_argument("--trace-steps", type=int, default=0, help="also retrain the first N steps of qmp K=4 (0: off)")
    parser.add_argument("--trace-pretrain-steps", type=int, default=PretrainConfig().steps)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--output", type=Path, default=RESULTS / "sparse_diagnosis.json")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    families = args.families.split(",")
    folder = args.cache / args.set
    test_set, train_set = ImageArray(folder / "test.npy"), ImageArray(folder / "train.npy")
    count = min(args.images or len(test_set), len(test_set))
    images = torch.stack([test_set[i] for i in range(count)])
    models = []
    for entry in cached_models(args.cache, args.set, families):
        print(f"{entry['label']} ({entry['key']})", flush=True)
        models.append(diagnose(entry, images, train_set, args.fit_images))
    traced = trace(train_set, args.trace_steps, args.trace_pretrain_steps) if args.trace_steps else None
    write_json(args.output, {"cache": shown_path(args.cache), "set": args.set, "images": count, "threads": args.threads,
                             "fit_images": args.fit_images, "models": models, "trace": traced})
    report(models, traced)


if __name__ == "__main__":
    main()
