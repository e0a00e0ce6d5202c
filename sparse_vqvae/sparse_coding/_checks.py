"""Argument checks shared by the sparse coders: fail early with the argument's name."""

from __future__ import annotations

import torch

from .. import _native


def check_signals_and_dictionary(x: torch.Tensor, dictionary: torch.Tensor) -> None:
    if not isinstance(x, torch.Tensor) or x.dim() != 2:
        raise ValueError(f"x must be a 2-D tensor [B, d], got {_describe(x)}")
    if not isinstance(dictionary, torch.Tensor) or dictionary.dim() != 2:
        raise ValueError(f"dictionary must be a 2-D tensor [d, N] (atoms are columns), got {_describe(dictionary)}")
    if x.shape[1] != dictionary.shape[0]:
        raise ValueError(
            f"x has signals of dimension {x.shape[1]} but dictionary has atoms of dimension "
            f"{dictionary.shape[0]}: x is [B, d], dictionary is [d, N]"
        )
    if not x.is_floating_point() or x.dtype != dictionary.dtype:
        raise ValueError(f"x and dictionary must share one floating dtype, got {x.dtype} and {dictionary.dtype}")
    if x.device != dictionary.device:
        raise ValueError(f"x and dictionary must be on one device, got {x.device} and {dictionary.device}")
    if not bool(torch.isfinite(x).all()):
        raise ValueError("x contains NaN or infinite values")
    if not bool(torch.isfinite(dictionary).all()):
        raise ValueError("dictionary contains NaN or infinite values")


def check_positive_int(name: str, value: object, upper: int | None = None) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{name} must be an integer >= 1, got {value!r}")
    if upper is not None and value > upper:
        raise ValueError(f"{name} must be at most {upper} (the number of atoms), got {value}")
    return value


def check_non_negative(name: str, value: object) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not value >= 0 or value == float("inf"):
        raise ValueError(f"{name} must be a finite number >= 0, got {value!r}")
    return float(value)


def _describe(value: object) -> str:
    if isinstance(value, torch.Tensor):
        return f"a tensor of shape {list(value.shape)}"
    return f"{type(value).__name__}"


FORMS = ("auto", "batched", "rows")  # a solver's forms: all rows in torch kernels, or per signal compiled (CPU)
ROWS_DTYPES = (torch.float32, torch.float64)  # what the compiled per-signal kernels read


def per_signal(form: object, x: torch.Tensor) -> bool:
    """Whether to code each signal on its own (``rowwise``): asked for with ``rows``, or ``auto`` where it can
    run (float32 or float64 on the CPU, the C extension built); ``form`` must be one of ``FORMS``, and ``rows``
    possible for ``x`` (an ``ImportError`` where the extension is missing)."""
    possible = x.device.type == "cpu" and x.dtype in ROWS_DTYPES
    if form not in FORMS or (form == "rows" and not possible):
        raise ValueError(f"form must be one of {', '.join(FORMS)} ('rows' for float32 or float64 on the CPU only); "
                         f"got {form!r} for a {x.device.type} {x.dtype} tensor")
    if form == "rows" and _native.rowwise is None:
        raise _native.missing("rowwise", "form='rows'")
    return form == "rows" or (form == "auto" and possible and _native.rowwise is not None)


def chunk_size_for(chunk_size: int | None, device: torch.device, num_atoms: int) -> int:
    """Rows coded at once. By default, on CPU few enough that the [rows, N] correlations stay in cache."""
    if chunk_size is not None:
        return check_positive_int("chunk_size", chunk_size)
    if device.type == "cpu":
        return max(64, (1 << 19) // num_atoms)
    return max(1024, (1 << 27) // num_atoms)
