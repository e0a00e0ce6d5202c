"""What every stage's ``main()`` does: validate params.yaml, run the stage inside its MLflow run,
write its figures to ``metrics/<stage>.json`` (tracked by DVC, the same on every run of the same
code and data) and its wall time to ``metrics/timings/<stage>.json`` (not tracked), and turn the
project's own errors (bad parameters, a missing dataset, a corrupt checkpoint or code store, a
folder that is not the stage's to replace) into one clear line."""

from __future__ import annotations

import sys
import time
from typing import Any, Callable

from sparse_vqvae.atomic import write_json
from sparse_vqvae.errors import CheckpointError, CodeStoreError, DatasetNotFoundError, NotOurFolderError

from .layout import stage_metrics, stage_timings
from .params import PipelineParams, load_params
from .tracking import StageTracker, stage_run

StageFn = Callable[[PipelineParams, StageTracker], dict[str, Any]]
USER_ERRORS = (DatasetNotFoundError, CheckpointError, CodeStoreError, NotOurFolderError)


def run_stage(name: str, run: StageFn) -> dict[str, Any]:
    """Run one stage as DVC calls it; exits with status 2 on invalid parameters, 1 on a user error."""
    try:
        params = load_params()
    except ValueError as error:
        print(f"error: {error}", file=sys.stderr)
        sys.exit(2)
    start = time.perf_counter()
    try:
        with stage_run(name, params) as tracker:
            metrics = run(params, tracker)
            timings = {**tracker.timings, "seconds": round(time.perf_counter() - start, 2)}
            path = write_json(stage_metrics(name), metrics)
            write_json(stage_timings(name), timings)
            tracker.log_metrics(metrics | timings)
            tracker.log_artifact(path)
    except USER_ERRORS as error:
        print(f"error: {name}: {error}", file=sys.stderr)
        sys.exit(1)
    print(f"[{name}] done in {timings['seconds']:.1f} s")
    return metrics
