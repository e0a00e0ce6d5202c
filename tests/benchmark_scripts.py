"""The scripts of benchmarks/ are not a package: a test imports one with that folder on the path, as they run."""

from __future__ import annotations

import importlib
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from types import ModuleType

from .pipeline_workspace import REPO

BENCHMARKS = str(REPO / "benchmarks")


@contextmanager
def benchmark_script(name: str) -> Iterator[ModuleType]:
    """The module of ``benchmarks/<name>.py``, with benchmarks/ on ``sys.path`` while it is used (its scripts
    import each other and ``_results``)."""
    sys.path.insert(0, BENCHMARKS)
    try:
        yield importlib.import_module(name)
    finally:
        sys.path.remove(BENCHMARKS)
