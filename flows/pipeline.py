"""The pipeline as a Prefect flow: dvc.yaml's stages, in its order, each run through ``dvc repro``.

dvc.yaml is the one list of stages: the flow reads it, so the two cannot drift apart, and running
each stage through DVC records its outputs in dvc.lock - after a flow run ``dvc status`` is clean
and neither runs the other's work again. Prefect adds what DVC lacks: retries (stage 3, where a
Ray worker can be lost), logs, states, deployments and schedules.

    python -m flows.pipeline                 # run once here (a temporary local Prefect server)
    python -m flows.pipeline --serve         # a deployment, triggered from the Prefect UI / API
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import yaml
from prefect import flow, get_run_logger, task
from prefect.cache_policies import NO_CACHE

from tasks.layout import stage_metrics
from tasks.params import load_params
from tasks.tracking import PARENT_ENV, end_parent_run, start_parent_run

RETRIES = {"train_vqvae": 2}  # stage -> retries; a retry resumes from the stage's last checkpoint
EVAL_METRICS = Path("eval/metrics.json")


def dvc_stages(workspace: str | Path) -> list[str]:
    """The stages of ``workspace``/dvc.yaml, in the order written (the DAG's order)."""
    return list(yaml.safe_load((Path(workspace) / "dvc.yaml").read_text())["stages"])


def _environment(parent_run: str) -> dict[str, str]:
    """The stage commands say ``python``: make it this interpreter, and name the MLflow parent run."""
    path = os.pathsep.join([str(Path(sys.executable).parent), os.environ.get("PATH", "")])
    return {**os.environ, "PATH": path, PARENT_ENV: parent_run}


# DVC decides what is up to date; a second cache in Prefect would disagree with it.
@task(cache_policy=NO_CACHE, task_run_name="{stage}")
def dvc_stage(stage: str, workspace: str, parent_run: str) -> dict[str, Any]:
    """``dvc repro --single-item <stage>``: runs the stage if its deps or params changed, records it in dvc.lock."""
    logger = get_run_logger()
    logger.info("dvc repro %s in %s", stage, workspace)
    done = subprocess.run([sys.executable, "-m", "dvc", "repro", "--single-item", stage], cwd=workspace,
                          env=_environment(parent_run))
    if done.returncode != 0:
        raise RuntimeError(f"stage {stage} failed (dvc repro exit status {done.returncode}); see its output above")
    metrics_file = Path(workspace) / stage_metrics(stage)
    metrics = json.loads(metrics_file.read_text()) if metrics_file.is_file() else {}
    logger.info("%s: %s", stage, ", ".join(f"{k}={v:.4g}" for k, v in metrics.items() if isinstance(v, float)))
    return metrics


@flow(name="sparse-vqvae-pipeline")
def pipeline(workspace: str = ".", run_name: str = "pipeline") -> dict[str, Any]:
    """Every stage of ``workspace``'s dvc.yaml, in order, under one MLflow parent run; returns eval/metrics.json."""
    root = Path(workspace).resolve()
    params = load_params(root / "params.yaml")  # an invalid file fails here, before any stage starts
    parent = start_parent_run(params, run_name, workspace=root)
    ok = False
    try:
        for stage in dvc_stages(root):
            dvc_stage.with_options(retries=RETRIES.get(stage, 0), retry_delay_seconds=2)(stage, str(root), parent)
        ok = True
    finally:
        end_parent_run(params, parent, ok, workspace=root)
    return json.loads((root / EVAL_METRICS).read_text())


def main() -> None:
    parser = argparse.ArgumentParser(description="Run the sparse-vqvae pipeline as a Prefect flow.")
    parser.add_argument("--workspace", default=".", help="folder holding dvc.yaml and params.yaml")
    parser.add_argument("--serve", action="store_true", help="serve the flow as a deployment instead of running it")
    args = parser.parse_args()
    if args.serve:
        pipeline.serve(name="sparse-vqvae", parameters={"workspace": str(Path(args.workspace).resolve())})
        return
    try:
        metrics = pipeline(workspace=args.workspace)
    except ValueError as error:  # invalid params.yaml
        print(f"error: {error}", file=sys.stderr)
        sys.exit(2)
    print(json.dumps({k: v for k, v in metrics.items() if not isinstance(v, str)}, indent=2))


if __name__ == "__main__":
    main()
