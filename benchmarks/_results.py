"""Where the benchmarks put their figures."""

from __future__ import annotations

from pathlib import Path

from sparse_vqvae.atomic import write_json as _write_json

RESULTS = Path(__file__).parent / "results"


def write_json(path: Path, result: dict) -> None:
    """Write atomically and say where."""
    _write_json(path, result)
    print(f"wrote {path}")
