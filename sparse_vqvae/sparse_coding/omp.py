"""Batched Orthogonal Matching Pursuit (Pati et al. 1993; Batch-OMP: Rubinstein, Zibulevsky, Elad 2008).

Each step picks the atom most correlated with the residual, then refits the coefficients of all
selected atoms by least squares. As in Batch-OMP the least-squares fit is updated, not redone:
the Cholesky factor L of the selected atoms' Gram block grows by one row per step, and we keep
its inverse, so each step costs a few [B, k, k] products and the coefficients are
``c = L^-T L^-1 D_I^T x``.

Two forms (``form``): ``rows`` on the CPU (``rowwise``: each row coded on its own, compiled, in cache
with the Gram matrix, in float64 - as SPAMS does) and ``batched`` (below: all rows together in PyTorch
kernels, the GPU's form, and on the CPU the faster for one atom); ``auto`` picks. The batched form gets
the residual's correlations with every atom in one of two ways:
- ``"gemm"`` (the default): one [B, d] x [d, N] matrix product per step on the updated residual.
- ``"gram"``: Batch-OMP's update from the precomputed Gram matrix ``D^T D`` and ``D^T x``: the
  fewest FLOPs, but its row gathers cost more than the product they save. Measured slower on
  both kinds of device (benchmarks/sparse_coding.py on a 2-core Xeon: 165k vs 197k signals/s at
  K=5; benchmarks/gpu.py on an H200: 12.7 vs 6.9 ms for 131,072 signals at K=5).
"""

from __future__ import annotations

from typing import Literal, NamedTuple

import torch

from ._checks import check_positive_int, check_signals_and_dictionary, chunk_size_for, per_signal
from .rowwise import omp_rows

CorrelationMode = Literal["gemm", "gram"]


class SparseCode(NamedTuple):
    """K (atom index, coefficient) pairs per signal, in the order OMP selected them."""

    indices: torch.Tensor  # [B, K] long
    values: torch.Tensor  # [B, K]

    def to_dense(self, num_atoms: int) -> torch.Tensor:
        """[B, N] with the values at their atoms (differentiable in ``values``)."""
        return self.values.new_zeros(self.values.shape[0], num_atoms).scatter(1, self.indices, self.values)

    @classmethod
    def largest(cls, dense: torch.Tensor, k: int) -> SparseCode:
        """The ``k`` largest-magnitude entries of each row of a dense code [B, N] as pairs (zeros where a
        row has fewer non-zeros)."""
        indices = dense.abs().topk(min(k, dense.shape[1]), dim=1).indices
        return cls(indices, dense.gather(1, indices))


@torch.no_grad()
def omp(
    x: torch.Tensor,
    dictionary: torch.Tensor,
    n_nonzero: int,
    *,
    correlations: CorrelationMode = "gemm",
    chunk_size: int | None = None,
    form: str = "auto",
) -> SparseCode:
    """Code each row of ``x`` [B, d] with exactly ``n_nonzero`` atoms of ``dictionary`` [d, N].

    Atoms must have unit norm. An atom that lies (numerically) in the span of those already
    selected - a duplicate atom, or any atom once ``n_nonzero`` exceeds ``d`` - is still listed,
    with coefficient 0, so every row has exactly ``n_nonzero`` distinct indices. ``form``: ``rows``
    (float32 or float64 on the CPU), ``batched`` (``correlations`` and ``chunk_size`` are its
    options) or ``auto``: rows on the CPU from two atoms up, batched elsewhere and for one atom (an argmax
    and its correlation, which the batched form does in 0.5-0.7x the per-row form's time).
    """
    check_signals_and_dictionary(x, dictionary)
    num_atoms = dictionary.shape[1]
    check_positive_int("n_nonzero", n_nonzero, upper=num_atoms)
    if correlations not in ("gemm", "gram"):
        raise ValueError(f"correlations must be one of 'gemm', 'gram', got {correlations!r}")
    chunk = chunk_size_for(chunk_size, x.device, num_atoms)
    if per_signal(form, x) and (form == "rows" or n_nonzero > 1):
        return SparseCode(*omp_rows(x, dictionary, n_nonzero))
    use_gram = correlations == "gram"

    atoms = dictionary.t().contiguous()  # [N, d]: row gathers of selected atoms are contiguous
    gram = atoms @ dictionary
    indices, values = [], []
    for start in range(0, x.shape[0], chunk):
        idx, val = _omp_chunk(x[start : start + chunk], dictionary, atoms, gram, use_gram, n_nonzero)
        indices.append(idx)
        values.append(val)
    if not indices:
        return SparseCode(x.new_zeros(0, n_nonzero, dtype=torch.long), x.new_zeros(0, n_nonzero))
    return SparseCode(torch.cat(indices), torch.cat(values))


def _omp_chunk(
    x: torch.Tensor,
    dictionary: torch.Tensor,
    atoms: torch.Tensor,
    gram: torch.Tensor,
    use_gram: bool,
    n_nonzero: int,
) -> tuple[torch.Tensor, torch.Tensor]:
    batch, dim = x.shape
    rows = torch.arange(batch, device=x.device)
    gram_diagonal = gram.diagonal()
    # An atom whose part orthogonal to the selected ones is this small (relative) is dependent on them.
    dependence = torch.finfo(x.dtype).eps * 128
    indices = torch.empty(batch, n_nonzero, dtype=torch.long, device=x.device)
    selected_atoms = x.new_zeros(batch, n_nonzero, dim)
    # L^-1 for the Cholesky factor L L^T = D_I^T D_I, grown a row at a time (Batch-OMP). A dependent
    # atom gets a zero row, which gives it coefficient 0 and leaves the others' fit untouched.
    chol_inv = x.new_zeros(batch, n_nonzero, n_nonzero)
    coords = x.new_zeros(batch, n_nonzero)  # y = L^-1 D_I^T x
    x_correlations = x @ dictionary  # D^T x, row-wise [B, N]
    score = x_correlations.abs()

    for k in range(n_nonzero):
        if k:
            score.scatter_(1, indices[:, :k], -1.0)  # never pick an atom twice
        chosen = score.max(dim=1).indices  # max() is several times faster than argmax() on CPU
        indices[:, k] = chosen
        selected_atoms[:, k] = atoms.index_select(0, chosen)

        atom_norm2 = gram_diagonal[chosen]
        if k:
            # New row of L: w = L^-1 D_I^T d_j, diagonal sqrt(||d_j||^2 - ||w||^2).
            cross = gram[indices[:, :k], chosen.unsqueeze(1)]  # [B, k]
            w = torch.bmm(chol_inv[:, :k, :k], cross.unsqueeze(2)).squeeze(2)
            schur = atom_norm2 - (w * w).sum(dim=1)
        else:
            schur = atom_norm2
        independent = schur > dependence * atom_norm2
        inv_diag = torch.where(independent, schur, torch.ones_like(schur)).rsqrt() * independent
        x_corr_j = x_correlations[rows, chosen]
        if k:
            chol_inv[:, k, :k] = -torch.bmm(w.unsqueeze(1), chol_inv[:, :k, :k]).squeeze(1) * inv_diag.unsqueeze(1)
            coords[:, k] = (x_corr_j - (w * coords[:, :k]).sum(dim=1)) * inv_diag
        else:
            coords[:, k] = x_corr_j * inv_diag
        chol_inv[:, k, k] = inv_diag
        coefficients = torch.bmm(coords[:, None, : k + 1], chol_inv[:, : k + 1, : k + 1]).squeeze(1)  # L^-T y
        if k + 1 == n_nonzero:
            return indices, coefficients

        if use_gram:  # D^T r = D^T x - G[:, I] c
            fitted = torch.bmm(coefficients.unsqueeze(1), gram[indices[:, : k + 1]]).squeeze(1)
            torch.sub(x_correlations, fitted, out=score)
        else:  # D^T r by one GEMM on the residual r = x - D_I c
            residual = x - torch.bmm(coefficients.unsqueeze(1), selected_atoms[:, : k + 1]).squeeze(1)
            torch.mm(residual, dictionary, out=score)
        score.abs_()
    raise AssertionError("unreachable: n_nonzero >= 1")
