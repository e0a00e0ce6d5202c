"""Sparse coding one signal at a time, compiled (C, ``_rowwise.c``): the CPU's form of ``lars.lasso`` and ``omp.omp``.

The batched forms in ``lars`` and ``omp`` advance all rows together in PyTorch kernels: on a GPU that is the
fast form; on a CPU each step is several passes over [B, N] tensors in separate kernels (the LASSO ran at a
third of SPAMS' LARS). Here, as SPAMS does, each row is coded in cache from its correlations ``D^T x`` with
the Gram matrix ``D^T D``, in float64, its steps ``O(N k)``; the correlations too are computed in the kernel,
a few rows at a time in one fixed order (a BLAS GEMM's rounding depends on the batch):

- the LASSO walks each row's homotopy path with ``lars._homotopy``'s events, thresholds and failure rules,
  so a row fails (and goes to FISTA) for the same reasons, and certifies its end as ``fista.certify_lasso``
  does (the exact solution on the support and signs, its KKT conditions) in the same pass;
- OMP is Batch-OMP as ``omp._omp_chunk`` runs it for a batch (the inverse Cholesky factor grown a row a
  step, a dependent atom listed with coefficient 0), the residual's correlations from the Gram matrix.

Blocks of rows run in parallel threads (``torch.get_num_threads()`` of them; the kernels release the GIL),
each row on its own: a code never depends on the other signals. Where the C extension did not build
(``_native``), these functions raise an ``ImportError`` that names it, and ``form="auto"`` codes batched.
"""

from __future__ import annotations

from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import torch

from .. import _native  # _native.rowwise: the C extension, None where it is missing (read at call time: _native
# imports the extension, whose package imports this module)

_ROWS_PER_BLOCK = 256  # a thread's unit of work: small enough to balance rows of unequal cost


def lasso_rows(x: torch.Tensor, dictionary: torch.Tensor, alpha: float, max_nonzero: int | None,
               max_steps: int, codes: torch.Tensor) -> torch.Tensor:
    """Write each row's certified LASSO code into ``codes`` [B, N] (CPU, contiguous, float32 or float64, zeros
    in; computed in float64: the exact solution at alpha, or at the larger penalty where ``max_nonzero``
    stopped the path; left zero where not certified) and return which rows are certified [B]."""
    _require("lasso form='rows'")
    signals, atoms, gram = _operands(x, dictionary)
    (rows, dim), n = signals.shape, gram.shape[0]
    out, penalties, done = codes.numpy(), np.full(rows, float(alpha)), np.zeros(rows, dtype=np.bool_)
    _in_blocks(rows, lambda start, end: _native.rowwise.lasso_paths(
        signals[start:end], atoms, gram, end - start, n, dim, float(alpha), max_nonzero or 0, max_steps,
        out[start:end], penalties[start:end], done[start:end]))
    return torch.from_numpy(done)


def omp_rows(x: torch.Tensor, dictionary: torch.Tensor, n_nonzero: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Each row's OMP code with ``n_nonzero`` atoms (CPU; computed in float64): the atoms' indices [B, K] in
    the order chosen, and their coefficients [B, K] in ``x``'s dtype. An atom dependent on those chosen
    before it (relative residual norm under ``omp``'s threshold for ``x``'s dtype) gets coefficient 0."""
    _require("omp form='rows'")
    signals, atoms, gram = _operands(x, dictionary)
    (rows, dim), n = signals.shape, gram.shape[0]
    indices = np.empty((rows, n_nonzero), dtype=np.int64)
    values = np.empty((rows, n_nonzero), dtype=signals.dtype)
    dependence = torch.finfo(x.dtype).eps * 128  # as omp._omp_chunk's
    _in_blocks(rows, lambda start, end: _native.rowwise.omp(
        signals[start:end], atoms, gram, end - start, dim, n, n_nonzero, dependence, indices[start:end],
        values[start:end]))
    return torch.from_numpy(indices), torch.from_numpy(values)


def certified(start: np.ndarray, gram: np.ndarray, atoms: np.ndarray, values: np.ndarray, penalty: float,
              code: np.ndarray) -> bool:
    """One LASSO row's end certified (float64): the exact solution on the support ``atoms`` and the signs of
    ``values`` at ``penalty``, written into ``code`` when its signs agree and it meets the KKT conditions
    (``start``: the row's correlations ``D^T x``)."""
    _require("rowwise.certified")
    return _native.rowwise.lasso_certified(start, gram, len(start), atoms.astype(np.int64),
                                           values.astype(np.float64), len(atoms), float(penalty), code)


def _require(wanted: str) -> None:
    if _native.rowwise is None:
        raise _native.missing("rowwise", wanted)


def _operands(x: torch.Tensor, dictionary: torch.Tensor) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The kernels' inputs: the signals as they are [B, d], the dictionary [d, N] and ``D^T D`` [N, N] in float64."""
    d64 = dictionary.detach().cpu().double().contiguous()
    return x.detach().cpu().contiguous().numpy(), d64.numpy(), (d64.t() @ d64).numpy()


def _in_blocks(rows: int, code: Callable[[int, int], None]) -> None:
    """``code(start, end)`` over blocks of rows, in ``torch.get_num_threads()`` threads."""
    starts = range(0, rows, _ROWS_PER_BLOCK)
    blocks = [(start, min(start + _ROWS_PER_BLOCK, rows)) for start in starts]
    threads = min(torch.get_num_threads(), len(blocks))
    if threads > 1:
        with ThreadPoolExecutor(threads) as pool:
            list(pool.map(lambda block: code(*block), blocks))
    else:
        for block in blocks:
            code(*block)
