"""Where the benchmarks put their figures."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

from sparse_vqvae.atomic import write_json as _write_json

RESULTS = Path(__file__).parent / "results"
REPO = Path(__file__).resolve().parents[1]


def file_sha256(path: str | Path) -> str:
    """The SHA-256 of a file's bytes: names the exact file (a judge, a model) that a result was measured with."""
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def shown_path(path: str | Path) -> str:
    """A path as a results file records it: relative to the repository's root (``../`` where outside it), so
    that no file names the machine that measured it."""
    return os.path.relpath(Path(path).resolve(), REPO)


def write_json(path: Path, result: dict) -> None:
    """Write atomically and say where."""
    _write_json(path, result)
    print(f"wrote {path}")
