"""What coding each level given its atom saves: the equal-rate study's cached sparse models (no retraining), their
held-out images coded with one level table a slot (how the study coded them) and with a table a slot and atom.

For every model of ``--families`` in the study's JSON, on each set and each seed whose models are all in (the
study's ``missing`` names none of them): its cached model (``--cache``), the
frequency model fitted to its training codes both ways (``FrequencyModel.fit(..., levels_given_atoms=...)``), the
study's held-out images compressed as real ``.svq`` files with each, and the files' bpp (the first way must give the
study's own figure: the same model, codes and images). Then each family's BD-rate against vanilla, rvq and fsq with
the re-coded points (theirs unchanged: they code no levels), seed by seed.

    python benchmarks/level_coding.py --cache ../study-v4-run/cache
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

import torch
from _results import RESULTS, write_json
from rate_distortion_study import DEFAULT_CACHE, compare, differing, of_seed
from tables import model_of

from sparse_vqvae.code_store import CodeStore
from sparse_vqvae.codec import Codec
from sparse_vqvae.data import ImageArray
from sparse_vqvae.entropy_coding import FrequencyModel
from sparse_vqvae.rate_distortion import sparse_vqvae_point
from sparse_vqvae.train import load_checkpoint


def cached_folders(cache: Path, set_name: str) -> dict[tuple[str, float], Path]:
    """The study's cached models of ``set_name`` by the settings (less the quality) and file bpp of each of their
    points: the doubling check's models share their settings with the study's, not their points."""
    found = {}
    for folder in sorted((cache / set_name).iterdir()):
        result = folder / "result.json"
        if (folder / "model.pt").is_file() and result.is_file():
            found.update({(model_of(point), point["bpp"]): folder for point in json.loads(result.read_text())})
    return found


@torch.no_grad()
def recoded(folder: Path, point: dict[str, Any], images: list[torch.Tensor]) -> dict[str, Any]:
    """The model's point coded with one level table a slot and with a table a slot and atom."""
    model = load_checkpoint(folder / "model.pt").model.eval()
    store = CodeStore(folder / "train_codes", model.fingerprint())
    quality = point["settings"]["quality"]
    figures = {}
    for name, given_atoms in (("one_table_a_slot", False), ("given_atom", True)):
        codec = Codec(model, FrequencyModel.fit(store, store.meta, levels_given_atoms=given_atoms))
        measured = sparse_vqvae_point(codec, images, quality)
        figures[name] = {"bpp": measured["bpp"], "payload_bpp": measured["payload_bpp"], "psnr": measured["psnr"]}
    store.close()
    return {"settings": point["settings"], "study_bpp": point["bpp"], **figures}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--cache", type=Path, default=DEFAULT_CACHE, help="the study's cache of trained models")
    parser.add_argument("--study", type=Path, default=RESULTS / "rate_distortion_study.json")
    parser.add_argument("--families", default="qmp,omp")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--output", type=Path, default=RESULTS / "level_coding.json")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    study = json.loads(args.study.read_text())
    families = args.families.split(",")
    result: dict[str, Any] = {"study_source": study["summary"]["source"], "sets": {}}
    for set_name in ("embedded", "cifar10"):
        folders = cached_folders(args.cache, set_name)
        test = ImageArray(args.cache / set_name / "test.npy")
        images = [test[i] for i in range(min(study["summary"]["budget"]["images"], len(test)))]
        seeds = sorted({p["settings"]["seed"] for points in study[set_name].values() for p in points}
                       - {m["seed"] for m in study["summary"].get("missing", []) if m["set"] == set_name})
        measured: dict[str, list] = {family: [] for family in families}
        bd: dict[str, dict] = {}
        for seed in seeds:
            points = {name: list(pts) for name, pts in study[set_name].items()}
            by_family = {f: of_seed(study[set_name].get(f, []), seed, seeded=True) for f in families}
            # the study trains a second seed of the anchors and of its best sparse family only: the others have no
            # model of this seed to re-code
            seeded = [f for f in families if by_family[f]]
            for family in seeded:
                chosen = by_family[family]
                rows = [recoded(folders[model_of(point), point["bpp"]], point, images) for point in chosen]
                for row in rows:
                    print(f"{set_name} {family} {differing(row['settings'])}: study {row['study_bpp']:.4f} bpp, one table a "
                          f"slot {row['one_table_a_slot']['bpp']:.4f}, given the atom {row['given_atom']['bpp']:.4f} "
                          f"({row['given_atom']['psnr']:.2f} dB)", flush=True)
                measured[family] += rows
                points[family] = [{**p, "bpp": r["given_atom"]["bpp"], "bpp_prior": None} for p, r in zip(chosen, rows)]
            before, after = compare(study[set_name], seed), compare(points, seed)
            bd[str(seed)] = {f: {"one_table_a_slot": before.get(f), "given_atom": after.get(f)} for f in seeded}
            for family in seeded:
                shown = ", ".join(f"{a}: {before[family][f'vs_{a}']:+.1f}% -> {after[family][f'vs_{a}']:+.1f}%"
                                  for a in ("vanilla", "rvq", "fsq")
                                  if before[family].get(f"vs_{a}") is not None
                                  and after[family].get(f"vs_{a}") is not None)
                print(f"{set_name} seed {seed} {family} BD-rate {shown}")
        result["sets"][set_name] = {"models": measured, "images": len(images), "seeds": seeds, "bd_rate": bd}
    write_json(args.output, result)


if __name__ == "__main__":
    main()
