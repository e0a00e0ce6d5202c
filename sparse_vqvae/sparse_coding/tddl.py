"""Task-driven dictionary learning: gradients of a sparse code (Mairal, Bach, Ponce 2010, Prop. 1).

On its support Lambda the code is the solution of a linear system,
``c_L = (D_L^T D_L + lambda2 I)^-1 (D_L^T x - lambda1 s_L)`` (``lambda1 = 0`` for OMP's least
squares, ``alpha`` for the LASSO), and the support and signs do not change under a small
perturbation. Differentiating that system gives, for an upstream gradient ``g = dL/dc``,

    beta_L = (D_L^T D_L + lambda2 I)^-1 g_L,    beta_{not L} = 0
    dL/dx  = D beta
    dL/dD  = (x - D c) beta^T - D beta c^T

so the backward pass solves one small system per signal instead of back-propagating through the
solver's iterations. ``ridge`` is the paper's lambda2, kept small: it only guards the solve when
two selected atoms are nearly collinear.
"""

from __future__ import annotations

from typing import Any, Literal

import torch

from ._support import pairs_system
from .fista import fista
from .lars import lasso
from .omp import SparseCode, omp

Method = Literal["omp", "lasso"]
_OMP_KEYS = {"n_nonzero", "correlations", "chunk_size"}
_HOMOTOPY_KEYS = {"alpha", "max_nonzero", "max_steps", "chunk_size"}
_FISTA_KEYS = {"alpha", "max_nonzero", "n_iter", "tol", "exact", "check_every", "chunk_size"}


def sparse_code(
    x: torch.Tensor,
    dictionary: torch.Tensor,
    method: Method = "omp",
    *,
    ridge: float = 1e-6,
    **kwargs: Any,
) -> torch.Tensor:
    """Dense [B, N] sparse codes, differentiable with respect to ``x`` and ``dictionary``: the pairs of
    ``sparse_pairs`` at their atoms."""
    return sparse_pairs(x, dictionary, method, ridge=ridge, **kwargs).to_dense(dictionary.shape[1])


def sparse_pairs(
    x: torch.Tensor,
    dictionary: torch.Tensor,
    method: Method = "omp",
    *,
    ridge: float = 1e-6,
    **kwargs: Any,
) -> SparseCode:
    """Sparse codes as (atom, coefficient) pairs [B, s], the coefficients differentiable with respect to
    ``x`` and ``dictionary``: s = ``n_nonzero`` for OMP, ``max_nonzero`` (else the largest support) for
    the LASSO; a pair with coefficient 0 is not in the support. A quantizer keeping a few atoms of N
    touches [B, s] only, never a dense [B, N] code.

    Keywords go to the solver: ``n_nonzero`` for OMP; ``alpha`` and optionally ``max_nonzero`` for
    the LASSO (``method="lasso"``; the seed called this selection function "fista"), solved by the
    exact homotopy ``lasso`` (``solver="homotopy"``, default) or by ``fista`` (``solver="fista"``,
    with ``n_iter``, ``tol``; ``max_nonzero`` then keeps the largest coefficients).
    """
    if method not in ("omp", "lasso"):
        raise ValueError(f"method must be one of 'omp', 'lasso', got {method!r}")
    solver = kwargs.get("solver", "homotopy")
    if method == "lasso" and solver not in ("homotopy", "fista"):
        raise ValueError(f"solver must be 'homotopy' or 'fista', got {solver!r}")
    allowed = _OMP_KEYS if method == "omp" else {"solver"} | (_HOMOTOPY_KEYS if solver == "homotopy" else _FISTA_KEYS)
    unknown = set(kwargs) - allowed
    if unknown:
        raise ValueError(f"unknown keyword(s) {sorted(unknown)} for method={method!r}; allowed: {sorted(allowed)}")
    if method == "omp" and "n_nonzero" not in kwargs:
        raise ValueError("n_nonzero is required for method='omp'")
    if method == "lasso" and "alpha" not in kwargs:
        raise ValueError("alpha is required for method='lasso'")
    if not (isinstance(ridge, (int, float)) and ridge >= 0):
        raise ValueError(f"ridge must be a number >= 0, got {ridge!r}")
    indices, values = _TaskDrivenPairs.apply(x, dictionary, method, float(ridge), kwargs)
    return SparseCode(indices, values)


def _solve(x: torch.Tensor, dictionary: torch.Tensor, method: str, kwargs: dict) -> SparseCode:
    if method == "omp":
        return omp(x, dictionary, **kwargs)
    kwargs = dict(kwargs)
    max_nonzero = kwargs.pop("max_nonzero", None)
    if kwargs.pop("solver", "homotopy") == "homotopy":
        code = lasso(x, dictionary, max_nonzero=max_nonzero, **kwargs)
    else:
        code = fista(x, dictionary, **kwargs)
    if max_nonzero is None:  # as wide as the largest support
        max_nonzero = int((code != 0).sum(dim=1).max()) if code.numel() else 0
    return SparseCode.largest(code, max(max_nonzero, 1))


class _TaskDrivenPairs(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, dictionary, method, ridge, kwargs):
        indices, values = _solve(x.detach(), dictionary.detach(), method, kwargs)
        ctx.save_for_backward(x, dictionary, indices, values)
        ctx.ridge = ridge
        ctx.mark_non_differentiable(indices)
        return indices, values

    @staticmethod
    def backward(ctx, _grad_indices, grad_values):
        x, dictionary, indices, values = ctx.saved_tensors
        grad_x = torch.zeros_like(x)
        grad_dictionary = torch.zeros_like(dictionary)
        if values.numel():
            # Everything on the supports ([B, s] and [B, s, d]): no dense [B, N] product.
            system = pairs_system(dictionary.t().contiguous(), indices, values != 0, ctx.ridge)
            valid = system.valid.to(values.dtype)
            rhs = grad_values * valid
            beta = torch.linalg.solve(system.gram, rhs.unsqueeze(2)).squeeze(2) * valid
            d_beta = torch.bmm(beta.unsqueeze(1), system.sub_atoms).squeeze(1)  # D beta, row-wise
            grad_x = d_beta
            if ctx.needs_input_grad[1]:
                residual = x - torch.bmm(values.unsqueeze(1), system.sub_atoms).squeeze(1)  # padding's values are 0
                # dL/dD = (x - D c) beta^T - D beta c^T, accumulated atom by atom.
                per_atom = beta.unsqueeze(2) * residual.unsqueeze(1) - values.unsqueeze(2) * d_beta.unsqueeze(1)
                index = system.support.reshape(-1, 1).expand(-1, x.shape[1])
                grad_atoms = torch.zeros_like(dictionary.t()).scatter_add_(0, index, per_atom.reshape(-1, x.shape[1]))
                grad_dictionary = grad_atoms.t()
        return (grad_x if ctx.needs_input_grad[0] else None,
                grad_dictionary if ctx.needs_input_grad[1] else None, None, None, None)
