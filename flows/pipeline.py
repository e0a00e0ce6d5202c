"""The pipeline as a Prefect flow: dvc.yaml's stages, in its order, each run through ``dvc repro``.

dvc.yaml is the one list of stages: the flow reads it, so the two cannot drift apart, and running
each stage through DVC records its outputs in dvc.lock - after a flow run ``dvc status`` is clean
and neither runs the other's work again. Prefect adds what DVC lacks: retries (stage 3, where a
Ray worker can be lost), timeouts, each stage's output in the task's logs, a summary artifact with a
link to the MLflow run, states, deployments and schedules.

One flow run at a time per workspace: DVC refuses to run while another holds its lock, so a second
flow run in the same workspace waits for the first (a file lock in the workspace's ``.dvc/tmp/``,
which works with or without a Prefect server). Settings (environment, see tasks.params.FlowSettings):
SPARSE_VQVAE_FLOW_STAGE_TIMEOUT (seconds a stage may run), SPARSE_VQVAE_FLOW_MLFLOW_UI (where the
artifact's links point when MLflow's store is a local file).

    python -m flows.pipeline                 # run once here (a temporary local Prefect server)
    python -m flows.pipeline --serve         # a deployment, triggered from the Prefect UI / API
"""

from __future__ import annotations

import argparse
import fcntl
import json
import os
import queue
import re
import signal
import subprocess
import sys
import threading
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

import yaml
from prefect import flow, get_run_logger, task
from prefect.artifacts import create_markdown_artifact
from prefect.cache_policies import NO_CACHE

from tasks.layout import stage_metrics, stage_timings
from tasks.params import PipelineParams, flow_settings, load_params
from tasks.tracking import (PARENT_ENV, end_parent_run, registered_model_name, runs_view_url, start_parent_run,
                            tracking_uri)

RETRIES = {"train_vqvae": 2}  # stage -> retries; a retry resumes from the stage's last checkpoint
EVAL_METRICS = Path("eval/metrics.json")
LOCK = Path(".dvc/tmp/sparse-vqvae-flow.lock")  # beside DVC's own lock; .dvc/tmp is DVC's scratch, git-ignored
STOP_GRACE = 30  # seconds a stopped stage gets to end its processes before they are killed
# What the artifact's summary table shows from eval/metrics.json: (label, key, format).
SUMMARY = (("test PSNR (dB)", "test_psnr", ".2f"), ("mean-colour baseline PSNR (dB)", "baseline_psnr", ".2f"),
           ("test SSIM", "test_ssim", ".3f"), ("prior bits / image", "prior_bits_per_image", ".1f"),
           ("factorised bits / image", "factorized_bits_per_image", ".1f"), ("compressed files: bpp", "codec_bpp", ".3f"),
           ("compressed files: PSNR (dB)", "codec_psnr", ".2f"), ("prior-coded files: bpp", "prior_codec_bpp", ".3f"),
           ("JPEG PSNR at that bpp (dB)", "jpeg_psnr_at_codec_bpp", ".2f"))


def dvc_stages(workspace: str | Path) -> list[str]:
    """The stages of ``workspace``/dvc.yaml, in the order written (the DAG's order)."""
    return list(yaml.safe_load((Path(workspace) / "dvc.yaml").read_text())["stages"])


def _environment(parent_run: str) -> dict[str, str]:
    """The stage commands say ``python``: make it this interpreter, and name the MLflow parent run."""
    path = os.pathsep.join([str(Path(sys.executable).parent), os.environ.get("PATH", "")])
    return {**os.environ, "PATH": path, PARENT_ENV: parent_run, "PYTHONUNBUFFERED": "1"}


def _lines(stream: Any, into: queue.Queue) -> None:
    """Each line of ``stream`` into ``into``, then None. A progress bar's redraws (carriage returns) within a
    line leave only its last state: a log line per finished bar, not one per redraw."""
    for raw in iter(stream.readline, b""):
        into.put(raw.decode(errors="replace").rstrip("\r\n").rsplit("\r", 1)[-1])
    into.put(None)


def _stop(process: subprocess.Popen) -> None:
    """End ``process`` and everything it started (its own session: DVC, the stage, the stage's Ray): SIGTERM, then
    SIGKILL after STOP_GRACE seconds."""
    for sig in (signal.SIGTERM, signal.SIGKILL):
        try:
            os.killpg(process.pid, sig)
        except ProcessLookupError:
            return
        try:
            process.wait(STOP_GRACE)
            return
        except subprocess.TimeoutExpired:
            continue


# DVC decides what is up to date; a second cache in Prefect would disagree with it.
@task(cache_policy=NO_CACHE, task_run_name="{stage}")
def dvc_stage(stage: str, workspace: str, parent_run: str) -> dict[str, Any]:
    """``dvc repro --single-item <stage>``: runs the stage if its deps or params changed, records it in dvc.lock.
    Its output goes to this task's log, line by line; a timeout (the task's ``timeout_seconds``) or any other
    interruption stops the stage's processes."""
    logger = get_run_logger()
    logger.info("dvc repro %s in %s", stage, workspace)
    process = subprocess.Popen([sys.executable, "-m", "dvc", "repro", "--single-item", stage], cwd=workspace,
                               env=_environment(parent_run), stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                               start_new_session=True)
    lines: queue.Queue = queue.Queue()
    threading.Thread(target=_lines, args=(process.stdout, lines), daemon=True).start()
    tail: list[str] = []
    ran = False  # DVC says "Running stage '<stage>':" when it runs it, "Stage '<stage>' didn't change" when not
    try:
        while True:
            try:
                line = lines.get(timeout=1.0)  # short waits: Prefect's timeout can interrupt between them
            except queue.Empty:
                continue
            if line is None:
                break
            if line.strip():
                logger.info("%s", line)
                tail = (tail + [line])[-20:]
                ran = ran or line.startswith(f"Running stage '{stage}'")
        process.wait()
    finally:
        if process.poll() is None:  # interrupted (a timeout, a cancellation): the stage must not run on
            logger.warning("stopping stage %s (dvc repro, pid %d) and the processes it started", stage, process.pid)
            _stop(process)
        process.stdout.close()
    if process.returncode != 0:
        raise RuntimeError(f"stage {stage} failed (dvc repro exit status {process.returncode}); its last lines:\n"
                           + "\n".join(tail))
    metrics_file = Path(workspace) / stage_metrics(stage)
    metrics = json.loads(metrics_file.read_text()) if metrics_file.is_file() else {}
    logger.info("%s: %s", stage, ", ".join(f"{k}={v:.4g}" for k, v in metrics.items() if isinstance(v, float)))
    return {"metrics": metrics, "ran": ran}


@contextmanager
def workspace_lock(workspace: Path, wait: bool = True) -> Iterator[None]:
    """Hold the workspace's flow lock: one flow run at a time per workspace. With ``wait``, wait for the run that
    holds it; else raise RuntimeError. (A file lock, released by the kernel if its process dies.)"""
    path = workspace / LOCK
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a+") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.seek(0)
            holder = handle.read().strip() or "another process"
            if not wait:
                raise RuntimeError(f"another flow run is running in {workspace} ({holder})") from None
            _log(f"waiting for the flow run that holds {path} ({holder})")
            fcntl.flock(handle, fcntl.LOCK_EX)
        handle.seek(0)
        handle.truncate()
        handle.write(f"pid {os.getpid()}\n")
        handle.flush()
        try:
            yield
        finally:
            handle.seek(0)
            handle.truncate()
            fcntl.flock(handle, fcntl.LOCK_UN)


def _log(message: str) -> None:
    try:
        get_run_logger().info(message)
    except Exception:  # outside a flow run
        print(message, file=sys.stderr)


@flow(name="sparse-vqvae-pipeline")
def pipeline(workspace: str = ".", run_name: str = "pipeline") -> dict[str, Any]:
    """Every stage of ``workspace``'s dvc.yaml, in order, under one MLflow parent run; returns eval/metrics.json."""
    root = Path(workspace).resolve()
    params = load_params(root / "params.yaml")  # an invalid file fails here, before any stage starts
    settings = flow_settings()
    with workspace_lock(root):
        parent = start_parent_run(params, run_name, workspace=root)
        ok = False
        stages: dict[str, dict[str, Any]] = {}
        try:
            for stage in dvc_stages(root):
                run = dvc_stage.with_options(retries=RETRIES.get(stage, 0), retry_delay_seconds=2,
                                             timeout_seconds=settings.stage_timeout)
                stages[stage] = run(stage, str(root), parent)
            ok = True
        finally:
            end_parent_run(params, parent, ok, workspace=root)
            try:
                _summary_artifact(root, params, parent, stages, ok, settings.mlflow_ui)
            except Exception as error:  # a report must not hide the run's own outcome
                get_run_logger().warning("no summary artifact: %s", error)
    return json.loads((root / EVAL_METRICS).read_text())


def _summary_artifact(root: Path, params: PipelineParams, parent: str, stages: dict[str, dict[str, Any]], ok: bool,
                      ui: str) -> None:
    """The run's summary as a Prefect markdown artifact: its figures, each stage (ran or up to date, its wall time,
    its MLflow run), the registered model, links to MLflow."""
    from mlflow.tracking import MlflowClient

    uri = tracking_uri(params, root)
    client = MlflowClient(uri)
    run = client.get_run(parent)
    base = (uri if uri.startswith(("http://", "https://")) else ui).rstrip("/")
    link = f"{base}/#/experiments/{run.info.experiment_id}/runs"
    children = {child.data.tags.get("stage"): child for child in client.search_runs(
        [run.info.experiment_id], f"tags.`mlflow.parentRunId` = '{parent}'")}
    lines = [f"# {params.model.selection_fn} on {params.data.name}: {'finished' if ok else 'failed'}", "",
             f"Workspace `{root}`; MLflow run [{run.info.run_name}]({link}/{parent}) in experiment "
             f"[{params.mlflow.experiment}]({runs_view_url(base, run.info.experiment_id)}) (tracking store `{uri}`).", ""]
    metrics_file = root / EVAL_METRICS
    if ok and metrics_file.is_file():
        metrics = json.loads(metrics_file.read_text())
        lines += ["| figure | value |", "|---|---:|"]
        lines += [f"| {label} | {metrics[key]:{fmt}} |" for label, key, fmt in SUMMARY if key in metrics]
        lines.append("")
    lines += ["| stage | this run | seconds (its last run) | MLflow run |", "|---|---|---:|---|"]
    for stage in dvc_stages(root):
        result = stages.get(stage)
        state = "not reached" if result is None else "ran" if result["ran"] else "up to date (DVC)"
        try:
            seconds = f"{json.loads((root / stage_timings(stage)).read_text())['seconds']:.1f}" if result else ""
        except (OSError, ValueError, KeyError):
            seconds = ""
        child = children.get(stage)
        cell = f"[{child.info.run_id[:8]}]({link}/{child.info.run_id})" if child else ""
        lines.append(f"| {stage} | {state} | {seconds} | {cell} |")
    versions = client.search_model_versions(f"name = '{registered_model_name(params)}' and run_id = '{parent}'")
    if versions:
        version = versions[0]
        lines += ["", f"Registered model: `models:/{version.name}/{version.version}` (`models:/{version.name}@"
                  f"{params.model.selection_fn}`), e.g. `sparse-vqvae compress photo.png --model "
                  f"models:/{version.name}/{version.version}`."]
    key = re.sub(r"[^a-z0-9-]+", "-", f"sparse-vqvae-{root.name}".lower()).strip("-")
    create_markdown_artifact(markdown="\n".join(lines), key=key,
                             description=f"sparse-vqvae pipeline in {root}: figures, stages, MLflow links")


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
    except ValueError as error:  # invalid params.yaml or settings
        print(f"error: {error}", file=sys.stderr)
        sys.exit(2)
    print(json.dumps({k: v for k, v in metrics.items() if not isinstance(v, str)}, indent=2))


if __name__ == "__main__":
    main()
