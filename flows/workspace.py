"""Workspaces: self-contained copies of the pipeline (dvc.yaml, params.yaml, the code its stages
run) in which ``dvc repro`` runs on its own - one per sweep variant, or a scratch copy in tests."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import yaml

from sparse_vqvae.atomic import check_replaceable

REPO = Path(__file__).resolve().parents[1]
CODE = ("sparse_vqvae", "tasks", "flows")
FILES = ("dvc.yaml", ".dvcignore", ".gitignore")  # .gitignore: MLflow's store, Ray's checkpoints, timings
MARKER = ".sparse-vqvae-workspace"  # written into every workspace: the folders it may replace are its own


def merge(base: dict, overrides: dict) -> dict:
    """``base`` with ``overrides`` applied: nested mappings merge, other values replace."""
    merged = dict(base)
    for key, value in overrides.items():
        merged[key] = merge(base.get(key) or {}, value) if isinstance(value, dict) else value
    return merged


def dotted(overrides: dict[str, Any]) -> dict:
    """``{"model.n_nonzero": 4}`` -> ``{"model": {"n_nonzero": 4}}``."""
    nested: dict = {}
    for key, value in overrides.items():
        section, _, name = key.partition(".")
        if not name:
            raise ValueError(f"override {key!r} must be section.key")
        nested.setdefault(section, {})[name] = value
    return nested


def _made_before(folder: Path) -> bool:
    """A workspace made before workspaces carried a marker: a DVC repository without git holding a copy of
    this module (sweeps keep their DVC state across code versions)."""
    return ((folder / ".dvc").is_dir() and (folder / "flows" / "workspace.py").is_file()
            and not (folder / ".git").exists())


def make_workspace(destination: str | Path, overrides: dict | None = None, source: Path = REPO,
                   git: bool = False) -> Path:
    """Copy the pipeline from ``source`` into ``destination`` with params.yaml = source's + ``overrides``
    (nested), and make it a DVC repository of its own (inside a new git repository when ``git``, as
    ``dvc exp`` needs). An existing workspace keeps its outputs and DVC state: only the code and
    params.yaml are refreshed, so ``dvc repro`` reruns what changed."""
    destination = Path(destination)
    if destination.resolve() == Path(source).resolve():
        raise ValueError(f"a workspace cannot be made in {destination}: it is the pipeline's own source")
    if not _made_before(destination):  # copying replaces its sparse_vqvae/, tasks/, flows/, dvc.yaml, params.yaml
        check_replaceable(destination, "pipeline workspace", marker=MARKER)
    destination.mkdir(parents=True, exist_ok=True)
    (destination / MARKER).write_text("made by flows.workspace.make_workspace: its code and params.yaml are "
                                      "replaced whenever the workspace is refreshed\n")
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc")
    for name in CODE:
        shutil.rmtree(destination / name, ignore_errors=True)
        shutil.copytree(source / name, destination / name, ignore=ignore)
    for name in FILES:
        shutil.copy2(source / name, destination / name)
    params = merge(yaml.safe_load((source / "params.yaml").read_text()), overrides or {})
    (destination / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    if not (destination / ".dvc").is_dir():
        if git:
            subprocess.run(["git", "init", "--quiet"], cwd=destination, check=True)
        scm = [] if git else ["--no-scm"]
        subprocess.run([sys.executable, "-m", "dvc", "init", "--quiet", *scm], cwd=destination, check=True)
        subprocess.run([sys.executable, "-m", "dvc", "config", "core.analytics", "false"], cwd=destination, check=True)
    # the plots' templates (dvc.yaml names them): DVC looks for them in .dvc/plots only
    shutil.copytree(source / ".dvc" / "plots", destination / ".dvc" / "plots", dirs_exist_ok=True)
    return destination
