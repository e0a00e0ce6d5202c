"""Files written atomically: into a temporary file in the same folder, then renamed over the target.

A crash or a kill mid-write leaves the old file (or none), never a truncated one. The file gets the
mode an ordinary ``open()`` would give it (0666 less the umask: 0644 by default), not the 0600 of
``tempfile.mkstemp``, so other users and tools (a web server, a shared cache) can read outputs.
"""

from __future__ import annotations

import json
import os
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Any, Iterator

from .errors import NotOurFolderError


def current_umask() -> int:
    """The process's umask. Linux reports it in /proc; elsewhere it can only be read by setting it."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    except (OSError, ValueError):
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def file_mode() -> int:
    """The mode a new file gets from ``open()``: 0666 less the umask."""
    return 0o666 & ~current_umask()


@contextmanager
def atomic_write(path: str | Path, mode: str = "wb") -> Iterator[IO]:
    """Open a temporary file beside ``path``; on a clean exit it is flushed, synced and renamed to ``path``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        os.fchmod(fd, file_mode())  # mkstemp's 0600 would hide the output from everyone else
        with os.fdopen(fd, mode) as handle:
            yield handle
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_json(path: str | Path, data: Any) -> Path:
    with atomic_write(path, "w") as handle:
        json.dump(data, handle, indent=2, sort_keys=True)
        handle.write("\n")
    return Path(path)


def check_replaceable(path: str | Path, what: str, *, files: tuple[str, ...] = (), marker: str | None = None) -> None:
    """Raise ``NotOurFolderError`` unless ``path`` may be deleted by the writer of a ``what``: it is absent,
    empty, holds the writer's ``marker`` file, or holds nothing but the ``files`` that writer puts there.

    A path mistyped on a command line or in params.yaml must never cost the user a folder of their own."""
    path = Path(path)
    if not path.exists() and not path.is_symlink():
        return
    if not path.is_dir() or path.is_symlink():
        raise NotOurFolderError(f"refusing to replace {path}: it is not a folder a {what} was written to")
    names = sorted(entry.name for entry in path.iterdir())
    if not names or (marker is not None and marker in names) or set(names) <= set(files):
        return
    shown = ", ".join(names[:5]) + (", ..." if len(names) > 5 else "")
    raise NotOurFolderError(f"refusing to delete {path}: it is not a {what} this program wrote (it holds {shown}); "
                            f"move it away or choose another path")
