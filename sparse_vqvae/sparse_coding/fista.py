"""Batched LASSO: FISTA (Beck & Teboulle 2009) with an exact active-set finish.

Minimises ``0.5 * ||x - D c||^2 + alpha * ||c||_1`` for every row of ``x`` (the scaling of
scikit-learn's ``sparse_encode`` and SPAMS' ``lambda1``).

Plain FISTA converges slowly on an overcomplete dictionary, but it finds the support (the set of
non-zeros and their signs) long before the values settle. So every ``check_every`` iterations
the rows still running try the exact solution on their current support,
``c_S = (D_S^T D_S)^-1 (D_S^T x - alpha sign(c_S))``, and keep it when it is a certified
minimiser: the signs agree and every inactive atom satisfies the optimality (KKT) condition
``|d_j^T (x - D c)| <= alpha``. Certified rows leave the batch; the others iterate on, and any
row never certified keeps its FISTA iterate.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ._support import support_system
from ._checks import check_non_negative, check_positive_int, check_signals_and_dictionary, chunk_size_for

# Relative slack on the KKT test |d_j^T r| <= alpha, to absorb rounding in the certified solution.
_KKT_SLACK = {torch.float64: 1e-9, torch.float32: 1e-4}


@torch.no_grad()
def fista(
    x: torch.Tensor,
    dictionary: torch.Tensor,
    alpha: float,
    n_iter: int = 200,
    tol: float = 1e-7,
    *,
    exact: bool = True,
    check_every: int = 10,
    chunk_size: int | None = None,
) -> torch.Tensor:
    """Dense LASSO codes [B, N] for ``x`` [B, d] over ``dictionary`` [d, N].

    ``n_iter`` caps the FISTA iterations; a chunk stops early once no row's code moved by more
    than ``tol`` in an iteration (tested every ``check_every`` iterations, when the active-set
    finish above also runs if ``exact``).
    """
    check_signals_and_dictionary(x, dictionary)
    alpha = check_non_negative("alpha", alpha)
    check_positive_int("n_iter", n_iter)
    tol = check_non_negative("tol", tol)
    check_positive_int("check_every", check_every)
    chunk = chunk_size_for(chunk_size, x.device, dictionary.shape[1])

    # Step 1/L with L the largest eigenvalue of D^T D, i.e. the squared spectral norm of D.
    lipschitz = max(float(torch.linalg.matrix_norm(dictionary, ord=2)) ** 2, torch.finfo(x.dtype).tiny)
    atoms = dictionary.t().contiguous()
    solver = _Lasso(dictionary, atoms, alpha, lipschitz, n_iter, tol, check_every, exact)
    out = x.new_zeros(x.shape[0], dictionary.shape[1])
    for start in range(0, x.shape[0], chunk):
        out[start : start + chunk] = solver(x[start : start + chunk])
    return out




class _Lasso:
    def __init__(self, dictionary, atoms, alpha, lipschitz, n_iter, tol, check_every, exact):
        self.dictionary, self.atoms, self.alpha, self.exact = dictionary, atoms, alpha, exact
        self.lipschitz, self.n_iter, self.tol, self.check_every = lipschitz, n_iter, tol, check_every

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        out = x.new_zeros(x.shape[0], self.dictionary.shape[1])
        rows = torch.arange(x.shape[0], device=x.device)  # rows of `out` still being solved
        code = out.clone()
        momentum = code.clone()
        last_signs = torch.zeros_like(code, dtype=torch.int8)
        t = 1.0
        step = 1.0 / self.lipschitz
        converged = False
        for it in range(1, self.n_iter + 1):
            # One proximal-gradient step from the momentum point m, gradient (m D^T - x) D, fused.
            residual = torch.addmm(x, momentum, self.atoms, beta=-1.0)
            new_code = F.softshrink(torch.addmm(momentum, residual, self.dictionary, alpha=-step), self.alpha * step)
            t_next = (1.0 + (1.0 + 4.0 * t * t) ** 0.5) / 2.0
            checking = it % self.check_every == 0 or it == self.n_iter
            if checking and code.numel():
                converged = bool(((new_code - code).abs().amax() <= self.tol).item())
            momentum = torch.lerp(code, new_code, 1.0 + (t - 1.0) / t_next)
            code, t = new_code, t_next
            if self.exact and checking:
                signs = torch.sign(code).to(torch.int8)
                # Only a support that stayed put since the last check is worth an exact solve.
                stable = (signs == last_signs).all(dim=1) | converged
                stable &= (signs != 0).sum(dim=1) <= self.dictionary.shape[0]
                last_signs = signs
                candidates = stable.nonzero().squeeze(1)
                solved, exact_code = certify_lasso(x[candidates], code[candidates], self.dictionary, self.atoms, self.alpha)
                out[rows[candidates[solved]]] = exact_code[solved]
                keep = torch.ones_like(stable)
                keep[candidates[solved]] = False
                rows, x, code, momentum, last_signs = rows[keep], x[keep], code[keep], momentum[keep], last_signs[keep]
            if converged or rows.numel() == 0:
                break
        out[rows] = code
        return out


def certify_lasso(
    x: torch.Tensor, code: torch.Tensor, dictionary: torch.Tensor, atoms: torch.Tensor, alpha: float | torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Exact LASSO solutions on the supports and signs of ``code``, and which rows they provably solve.

    On a support S with signs s the LASSO solution is ``c_S = (D_S^T D_S)^-1 (D_S^T x - alpha s)``;
    it is the minimiser iff its signs agree with s and ``|d_j^T (x - D c)| <= alpha`` for every atom.
    ``alpha`` is one penalty for all rows, or one per row ([B]).
    """
    slack = _KKT_SLACK.get(x.dtype, 1e-3)
    alpha = torch.as_tensor(alpha, dtype=x.dtype, device=x.device).reshape(-1, 1)
    signs = torch.sign(code)
    exact = torch.zeros_like(code)
    ok = torch.ones(code.shape[0], dtype=torch.bool, device=code.device)
    system = support_system(atoms, code)
    if system is not None:
        rhs = (system.sub_atoms @ x.unsqueeze(2)).squeeze(2) - alpha * signs.gather(1, system.support)
        chol, info = torch.linalg.cholesky_ex(system.gram)
        values = torch.cholesky_solve(rhs.unsqueeze(2), chol).squeeze(2) * system.valid
        exact.scatter_(1, system.support, values)
        ok = info == 0
    sign_agrees = (torch.sign(exact) == signs).all(dim=1)
    correlation = (x - exact @ atoms) @ dictionary
    kkt = (correlation.abs() <= alpha * (1.0 + slack) + slack).all(dim=1)
    return ok & sign_agrees & kkt, exact
