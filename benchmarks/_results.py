"""Where the benchmarks put their figures."""

from __future__ import annotations

import os
from pathlib import Path

from sparse_vqvae.atomic import write_json as _write_json

RESULTS = Path(__file__).parent / "results"
REPO = Path(__file__).resolve().parents[1]


def shown_path(path: str | Path) -> str:
    """A path as a results file records it: relative to the repository's root (``../`` where outside it), so
    that no file names the machine that measured it."""
    return os.path.relpath(Path(path).resolve(), REPO)


def write_json(path: Path, result: dict) -> None:
    """Write atomically and say where."""
    _write_json(path, result)
    print(f"wrote {path}")
