"""The C extensions, optional: the one place that loads them.

``_incremental`` (the prior one position at a time: ``generation.CompiledBackbone``, ``CompiledHead``) and
``sparse_coding._rowwise`` (the per-row sparse coders: ``sparse_coding.rowwise``) compile at install where a C
compiler takes them (GCC >= 11 or Clang; MSVC rejects their GCC vector extension and ``restrict``, GCC < 11 the
``x86-64-v3`` clone, musl has no ifunc for ``target_clones``); a failed compile leaves them out and the install goes
on. Without one, the library runs the PyTorch forms of the same computations, and says so once, in one
``RuntimeWarning`` at import:

- ``incremental_backbone`` and ``head_steps`` give ``IncrementalBackbone`` and ``TorchHead``: features
  and logits within 1e-12 of the compiled forms' (float64, as prior coding computes), so the same probabilities
  after prior coding's 2^-10 grid and the same files, but for a logit within that of a grid boundary;
- the sparse coders' ``form="auto"`` is ``batched``: in float64 the same atoms, coefficients within 1e-10 (OMP) and
  1e-9 (LASSO); in float32, which the compiled form computes in float64, about 1% of rows may choose another atom;
  ``form="rows"`` raises an ``ImportError`` that names the extension.

Both are slower: the reason the extensions exist (benchmarks/README.md).
"""

from __future__ import annotations

import importlib
import warnings
from types import ModuleType

EXTENSIONS = {"incremental": "sparse_vqvae._incremental", "rowwise": "sparse_vqvae.sparse_coding._rowwise"}
_USED_INSTEAD = {"incremental": "IncrementalBackbone and TorchHead",
                 "rowwise": "the batched sparse coders, form='batched'"}


def _load() -> tuple[dict[str, ModuleType | None], dict[str, str]]:
    """Each extension's module (None where it does not import) and, for those missing, why: empty where it was
    simply not built, else the import's error (built for another Python, say)."""
    modules: dict[str, ModuleType | None] = {}
    reasons: dict[str, str] = {}
    for key, name in EXTENSIONS.items():
        try:
            modules[key] = importlib.import_module(name)
        except ImportError as error:
            not_built = isinstance(error, ModuleNotFoundError) and error.name == name
            modules[key], reasons[key] = None, "" if not_built else f" ({error})"
    return modules, reasons


_MODULES, _REASONS = _load()
incremental, rowwise = _MODULES["incremental"], _MODULES["rowwise"]
if _REASONS:
    warnings.warn(f"sparse_vqvae: C extension{'s' if len(_REASONS) > 1 else ''} "
                  + " and ".join(EXTENSIONS[key] + reason for key, reason in _REASONS.items())
                  + f" {'are' if len(_REASONS) > 1 else 'is'} missing: the PyTorch forms run instead ("
                  + "; ".join(_USED_INSTEAD[key] for key in _REASONS)
                  + "), slower, with the same results to rounding (sparse_vqvae._native says how close); "
                  "a C compiler at install (GCC >= 11 or Clang) builds them", RuntimeWarning, stacklevel=2)


def missing(key: str, wanted: str) -> ImportError:
    """The error for ``wanted``, which needs extension ``key`` and has no PyTorch form."""
    return ImportError(f"{wanted} needs the C extension {EXTENSIONS[key]}{_REASONS[key]}, which is missing: "
                       f"reinstall with a C compiler (GCC >= 11 or Clang), or use {_USED_INSTEAD[key]}")
