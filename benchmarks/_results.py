"""Where the benchmarks put their figures."""

from __future__ import annotations

import hashlib
import os
import platform
import subprocess
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


def cpu_model() -> str:
    """The CPU's model name: CPU kinds round differently, so a figure says which one it comes from."""
    try:
        for line in subprocess.run(["lscpu"], capture_output=True, text=True, check=True).stdout.splitlines():
            if line.startswith("Model name:"):
                return line.split(":", 1)[1].strip()
    except (OSError, subprocess.CalledProcessError):
        pass
    return platform.processor() or "unknown"


def write_json(path: Path, result: dict) -> None:
    """Write atomically and say where."""
    _write_json(path, result)
    print(f"wrote {path}")
