"""Tiny pipeline workspaces for the integration tests: seconds per stage, the real tools. They train OMP, the project's
own quantizer and the one with the most moving parts (levels, atoms, the dictionary), not `make run`'s default."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]

TINY = {
    "data": {"train_count": 64, "test_count": 16, "image_size": 16},
    "model": {"selection_fn": "omp", "channels": 16, "res_blocks": 1, "res_channels": 8, "embed_dim": 8,
              "num_atoms": 32, "coef_levels": 16},
    "pretrain": {"steps": 4, "batch_size": 16, "latents": 512, "iterations": 2},
    "train": {"steps": 6, "batch_size": 16, "eval_every": 3, "checkpoint_every": 2},
    "ray": {"num_workers": 2},
    "prior": {"steps": 4, "batch_size": 8, "channels": 16, "blocks": 1, "res_per_block": 1},
    "evaluate": {"grid_images": 8, "samples": 4, "rate_distortion_images": 8, "prior_coding_images": 2},
    "mlflow": {"log_every": 1},
}


def environment(**extra: str) -> dict[str, str]:
    """The environment a user's shell has after `make`: this interpreter's folder first on PATH."""
    env = {key: value for key, value in os.environ.items() if not key.startswith(("MLFLOW_", "RAY_ADDRESS"))}
    env.update(extra)
    env["PATH"] = os.pathsep.join([str(Path(sys.executable).parent), env.get("PATH", "")])
    env["PYTHONUNBUFFERED"] = "1"
    return env


def run(command: list[str], cwd: Path, check: bool = True, **extra_env: str) -> subprocess.CompletedProcess:
    done = subprocess.run(command, cwd=cwd, env=environment(**extra_env), capture_output=True, text=True)
    if check and done.returncode != 0:
        raise AssertionError(f"{' '.join(command)} failed ({done.returncode}):\n{done.stdout[-4000:]}\n{done.stderr[-4000:]}")
    return done


def dvc(*args: str, cwd: Path, check: bool = True) -> subprocess.CompletedProcess:
    return run([sys.executable, "-m", "dvc", *args], cwd, check)


def ran_stages(output: str) -> list[str]:
    """The stages a `dvc repro` output says it ran."""
    return [line.split("'")[1] for line in output.splitlines() if line.startswith("Running stage '")]
