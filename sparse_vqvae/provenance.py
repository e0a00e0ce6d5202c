"""Which code made a result: a fingerprint of the library's source.

Training resumes a checkpoint only when its run key matches, and the key includes this
fingerprint: after a change to the library, a rerun trains afresh instead of resuming a model that
older code made (and finished), so every figure describes a model of the code it is reported with.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

PACKAGE = Path(__file__).resolve().parent


def source_fingerprint(package: Path = PACKAGE) -> str:
    """A short hash of every source file of the package (Python, and the C of its compiled kernels, headers
    included): their paths and bytes."""
    digest = hashlib.sha256()
    for path in sorted([*package.rglob("*.py"), *package.rglob("*.c"), *package.rglob("*.h")]):
        digest.update(path.relative_to(package).as_posix().encode() + b"\0")
        digest.update(path.read_bytes() + b"\0")
    return digest.hexdigest()[:16]
