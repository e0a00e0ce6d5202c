"""Checkpoint files: written atomically, read with ``weights_only`` (no code runs from the file).

Every checkpoint is a dict with a ``format`` tag naming what it holds and a ``version``, so a file
of another kind, an older layout, or a truncated write is reported as such instead of failing
somewhere inside ``load_state_dict``.
"""

from __future__ import annotations

import pickle
import zipfile
from pathlib import Path

import torch

from .atomic import atomic_write
from .errors import CheckpointError


def save_payload(path: str | Path, payload: dict) -> None:
    """Write ``payload`` to ``path`` atomically."""
    with atomic_write(path) as handle:
        torch.save(payload, handle)


def load_payload(path: str | Path, format_tag: str, version: int | tuple[int, ...],
                 device: torch.device | str = "cpu") -> dict:
    """Read a checkpoint written by ``save_payload`` and check that it holds ``format_tag`` at ``version`` (or at one
    of the versions a tuple names: the ones this code reads)."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"no checkpoint at {path}")
    try:
        payload = torch.load(path, map_location=device, weights_only=True)
    except (RuntimeError, EOFError, pickle.UnpicklingError, zipfile.BadZipFile, ValueError) as error:
        raise CheckpointError(f"{path} is not a readable checkpoint (truncated or corrupt?): {error}") from error
    if not isinstance(payload, dict) or payload.get("format") != format_tag:
        found = payload.get("format") if isinstance(payload, dict) else None
        raise CheckpointError(f"{path} is not a {format_tag} checkpoint (format tag: {found!r})")
    versions = version if isinstance(version, tuple) else (version,)
    if payload.get("version") not in versions:
        raise CheckpointError(f"{path} has {format_tag} checkpoint version {payload.get('version')}; this code reads "
                              f"{' or '.join(map(str, versions))}")
    return payload
