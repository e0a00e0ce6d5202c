"""A sweep: the pipeline flow over a grid of quantizers, each variant in its own workspace
(``sweeps/<variant>/``: a copy of the pipeline with its own params.yaml, DVC state and outputs),
all recorded in one MLflow experiment, results side by side in ``sweeps/summary.{json,csv}``, and
the models compared (tasks/compare_variants.py) in ``sweeps/comparison/``: rate-distortion over
every model and JPEG/WebP, reconstruction and sample grids - also a "sweep comparison" MLflow run.

    python -m flows.sweep                                   # the equal-rate study's families near vanilla's rate
    python -m flows.sweep --variant model.selection_fn=omp,model.n_nonzero=8 --set train.steps=300

Variants run ``--concurrency`` at a time (default: the SPARSE_VQVAE_FLOW_SWEEP_CONCURRENCY setting, 1): each is a
whole pipeline with its own local Ray instance, so more than one wants that many times the CPUs and memory (and,
with MLflow's SQLite store, writers that wait for each other: a tracking server suits several).
"""

from __future__ import annotations

import argparse
import csv
from pathlib import Path
from typing import Any

import yaml
from prefect import flow, task
from prefect.cache_policies import NO_CACHE
from prefect.task_runners import ThreadPoolTaskRunner

from sparse_vqvae.atomic import atomic_write, write_json
from tasks import compare_variants
from tasks.params import PipelineParams, flow_settings, load_params, parse_params
from tasks.tracking import StageTracker, end_parent_run, start_parent_run, tracking_uri

from .pipeline import pipeline
from .workspace import REPO, dotted, make_workspace, merge

# One model of each of the equal-rate study's families near vanilla's rate (docs/study.md); the pipeline measures a
# model at its highest quality, so the study's one-model curves stay in the study. The LASSO, which codes 3-3.5 bpp
# whatever its alpha, is out, as in the study's default run (`--variant` brings it back).
DEFAULT_GRID = [
    {"model.selection_fn": "vanilla"},
    {"model.selection_fn": "rvq", "model.stages": 2},
    {"model.selection_fn": "fsq", "model.num_atoms": 1024},
    {"model.selection_fn": "qmp", "model.n_nonzero": 1},
    {"model.selection_fn": "omp", "model.n_nonzero": 1, "model.coef_levels": 2},  # one atom, two gains: gain-shape VQ
]
COLUMNS = ("test_psnr", "test_ssim", "baseline_psnr", "prior_bits_per_image", "factorized_bits_per_image")


def variant_name(variant: dict[str, Any]) -> str:
    return "-".join(f"{key.split('.')[-1]}={value}" for key, value in variant.items())


@task(cache_policy=NO_CACHE, task_run_name="{name}")
def run_variant(name: str, workspace: str) -> dict[str, Any]:
    """One variant: the pipeline flow in its workspace (a flow run of its own, under this task)."""
    return pipeline(workspace=workspace, run_name=f"sweep {name}")


@flow(name="sparse-vqvae-sweep")
def sweep(grid: list[dict[str, Any]] | None = None, overrides: dict[str, Any] | None = None,
          root: str = str(REPO / "sweeps"), concurrency: int | None = None) -> list[dict[str, Any]]:
    """Run the pipeline once per variant of ``grid`` (dotted keys), on top of ``overrides``, ``concurrency`` at a
    time (default: the sweep_concurrency setting)."""
    grid = grid or DEFAULT_GRID
    concurrency = concurrency or flow_settings().sweep_concurrency
    base = yaml.safe_load((REPO / "params.yaml").read_text())
    uri = tracking_uri(load_params(REPO / "params.yaml"), REPO)  # one MLflow store for every variant
    changes = [merge(merge(dotted(overrides or {}), dotted(variant)), {"mlflow": {"tracking_uri": uri}})
               for variant in grid]
    for change in changes:  # every variant is validated before any runs
        parse_params(merge(base, change))
    names = [variant_name(variant) for variant in grid]
    workspaces = {name: make_workspace(Path(root) / name, change) for name, change in zip(names, changes)}
    with ThreadPoolTaskRunner(max_workers=concurrency) as runner:
        futures = [runner.submit(run_variant, {"name": name, "workspace": str(workspaces[name])}) for name in names]
        results = [future.result() for future in futures]  # the first failure raises, after the others ran
    rows = [{"variant": name, **variant, **{key: metrics.get(key) for key in COLUMNS}}
            for name, variant, metrics in zip(names, grid, results)]
    compare(workspaces, Path(root) / "comparison", parse_params(merge(base, changes[0])))
    write_json(Path(root) / "summary.json", rows)
    with atomic_write(Path(root) / "summary.csv", "w") as handle:
        writer = csv.DictWriter(handle, fieldnames=sorted({key for row in rows for key in row}, key=str))
        writer.writeheader()
        writer.writerows(rows)
    print_table(rows)
    return rows


@task(cache_policy=NO_CACHE)
def compare(workspaces: dict[str, Path], out: Path, params: PipelineParams) -> dict[str, Any]:
    """The variants' models side by side, recorded in a "sweep comparison" MLflow run."""
    run_id = start_parent_run(params, "sweep comparison")
    ok = False
    try:
        figures = compare_variants.run(workspaces, out, StageTracker(tracking_uri(params), run_id))
        ok = True
    finally:
        end_parent_run(params, run_id, ok)
    return figures


def print_table(rows: list[dict[str, Any]]) -> None:
    width = max(len(row["variant"]) for row in rows)
    print(f"\n{'variant':<{width}}  " + "  ".join(f"{c:>14}" for c in COLUMNS))
    for row in rows:
        print(f"{row['variant']:<{width}}  " + "  ".join(f"{row[c]:>14.3f}" for c in COLUMNS))


def _assignments(text: str) -> dict[str, Any]:
    """``a.b=1,c.d=omp`` -> ``{"a.b": 1, "c.d": "omp"}`` (values parsed as YAML)."""
    pairs = [item.split("=", 1) for item in text.split(",") if item]
    if any(len(pair) != 2 for pair in pairs):
        raise argparse.ArgumentTypeError(f"expected section.key=value[,section.key=value...]; got {text!r}")
    return {key: yaml.safe_load(value) for key, value in pairs}


def main() -> None:
    parser = argparse.ArgumentParser(description="Run the pipeline over a grid of quantizers (Prefect flow).")
    parser.add_argument("--variant", type=_assignments, action="append",
                        help="one variant, e.g. model.selection_fn=omp,model.n_nonzero=4 (repeat; default: the standard grid)")
    parser.add_argument("--set", type=_assignments, action="append", default=[],
                        help="overrides for every variant, e.g. train.steps=300")
    parser.add_argument("--root", default=str(REPO / "sweeps"), help="where the variants' workspaces go")
    parser.add_argument("--concurrency", type=int, default=None,
                        help="variants run at once (default: $SPARSE_VQVAE_FLOW_SWEEP_CONCURRENCY, else 1)")
    args = parser.parse_args()
    overrides = {key: value for group in args.set for key, value in group.items()}
    sweep(grid=args.variant, overrides=overrides, root=args.root, concurrency=args.concurrency)


if __name__ == "__main__":
    main()
