"""Exact batched LASSO by the homotopy path (LARS-lasso: Osborne et al. 2000; Efron et al. 2004).

Minimises ``0.5 * ||x - D c||^2 + alpha * ||c||_1`` like ``fista``, but exactly and in a few
steps when the solution is sparse, and unaffected by how coherent the dictionary is (FISTA's step
shrinks with the largest eigenvalue of D^T D). The path starts at ``lambda = max_j |d_j^T x|``
with c = 0 and lowers lambda; along the way every active atom keeps ``|d_j^T r| = lambda`` with
the sign of its coefficient, so the active coefficients move along ``w = (D_A^T D_A)^-1 sign_A``.
Each step goes as far as the first event - an inactive atom's correlation reaches lambda (it
joins), an active coefficient reaches zero (it leaves) - or to lambda = alpha (done). A solution
with s non-zeros takes about s steps. All rows advance together; finished rows leave the batch.

``max_nonzero`` stops a row's path before a join would exceed that many atoms (SPAMS' ``L``):
the code is then the exact LASSO solution at the larger penalty reached, the sparse code with at
most ``max_nonzero`` atoms that the L1 path offers.

Two forms of the same path: ``batched`` (below: all rows advance together in PyTorch kernels, the
GPU's form) and ``rows`` (``rowwise``: each row's path compiled, in cache, with the Gram matrix -
the CPU's form, where the batched kernels' dozen passes over [B, N] per step ran at a third of SPAMS).

Every result is certified by the KKT conditions (``certify_lasso``); a row that is not (a
degenerate path, near-duplicate atoms, more than ``max_steps`` events, or a path far longer than
its active set) is solved by FISTA and, under a cap, truncated to its largest ``max_nonzero``
coefficients. Whether a row goes to FISTA depends on that row alone, so a code does not depend on
the other signals coded with it.
"""

from __future__ import annotations

import torch

from ._checks import check_non_negative, check_positive_int, check_signals_and_dictionary, chunk_size_for, per_signal
from .fista import certify_lasso, fista
from .omp import SparseCode
from .rowwise import lasso_rows


@torch.no_grad()
def lasso(
    x: torch.Tensor,
    dictionary: torch.Tensor,
    alpha: float,
    *,
    max_nonzero: int | None = None,
    max_steps: int | None = None,
    chunk_size: int | None = None,
    form: str = "auto",
) -> torch.Tensor:
    """Dense exact LASSO codes [B, N] for ``x`` [B, d] over ``dictionary`` [d, N] (unit-norm atoms).

    ``max_steps`` (default 4 d) bounds the events of one path before its row goes to FISTA. ``form``, the path's:
    ``batched`` (all rows together in PyTorch kernels: the GPU's form; ``chunk_size`` rows at a time), ``rows``
    (each row's path compiled, in cache: ``rowwise``, float32 or float64 on the CPU) or ``auto`` (rows where
    it can run, batched elsewhere).
    """
    check_signals_and_dictionary(x, dictionary)
    alpha = check_non_negative("alpha", alpha)
    dim, num_atoms = dictionary.shape
    if max_nonzero is not None:
        check_positive_int("max_nonzero", max_nonzero, upper=num_atoms)
    max_steps = check_positive_int("max_steps", 4 * dim if max_steps is None else max_steps)
    chunk = chunk_size_for(chunk_size, x.device, num_atoms)
    out = x.new_zeros(x.shape[0], num_atoms)
    if per_signal(form, x):
        failed = torch.nonzero(~lasso_rows(x, dictionary, alpha, max_nonzero, max_steps, out)).squeeze(1)
    else:
        atoms = dictionary.t().contiguous()
        failed = torch.cat([_homotopy(x, dictionary, atoms, alpha, max_nonzero, max_steps, out, rows)
                            for rows in torch.arange(x.shape[0], device=x.device).split(chunk)]
                           + [torch.zeros(0, dtype=torch.long, device=x.device)])
    if failed.numel():
        fallback = fista(x[failed], dictionary, alpha, tol=0.0)  # no early stop: each row's result is its own
        out[failed] = fallback if max_nonzero is None else SparseCode.largest(fallback, max_nonzero).to_dense(num_atoms)
    return out


def _homotopy(x_all, dictionary, atoms, alpha, max_nonzero, max_steps, out, out_rows) -> torch.Tensor:
    """Run the path for the rows ``out_rows``, writing certified codes into ``out``; return the rows that failed.

    The active set is kept as slots [B, S] of atom indices (-1 where an atom left) with their
    coefficients, so each step touches [B, N] only for the correlations and the join test.
    """
    x = x_all[out_rows]
    correlation = x @ dictionary  # D^T r for the current code
    level, first = correlation.abs().max(dim=1)  # lambda, and the atom that starts the path
    slots = first.unsqueeze(1)  # [B, S] active atoms, -1 for a free slot
    values = torch.zeros_like(correlation[:, :1])  # [B, S] their coefficients
    # Events closer than this (in units of lambda) are rounding, not progress.
    tiny = ((torch.finfo(x.dtype).eps ** 0.5) * 0.1 * level.clamp_min(torch.finfo(x.dtype).tiny)).unsqueeze(1)
    inf = torch.tensor(float("inf"), dtype=x.dtype, device=x.device)
    penalty = torch.full_like(level, alpha)  # the penalty each row's code solves, once finished
    finished = level <= alpha  # alpha above lambda_max: the zero code is the solution
    failed = []
    for step in range(max_steps + 1):
        if bool(finished.any()):
            done = finished.nonzero().squeeze(1)
            code = torch.zeros_like(correlation[done]).scatter_(1, slots[done].clamp_min(0), values[done])
            ok, exact = certify_lasso(x[done], code, dictionary, atoms, penalty[done])
            out[out_rows[done[ok]]] = exact[ok]
            failed.append(out_rows[done[~ok]])
            keep = ~finished
            x, correlation, level, slots, values, tiny, penalty, out_rows = (
                t[keep] for t in (x, correlation, level, slots, values, tiny, penalty, out_rows))
        if x.shape[0] == 0 or step == max_steps:
            break
        # A path far longer than its active set (atoms joining and leaving in turn) goes to FISTA:
        # cheaper than many near-empty steps, and decided by the row alone, not by its batch.
        wandering = step > 3 * (slots >= 0).sum(dim=1) + 10
        if bool(wandering.any()):
            failed.append(out_rows[wandering])
            keep = ~wandering
            x, correlation, level, slots, values, tiny, penalty, out_rows = (
                t[keep] for t in (x, correlation, level, slots, values, tiny, penalty, out_rows))
            if x.shape[0] == 0:
                break

        # Equiangular direction on the active set: (D_A^T D_A) w_A = sign(d_A^T r).
        valid = slots >= 0
        safe = slots.clamp_min(0)
        weight = valid.to(x.dtype)
        sub_atoms = atoms[safe] * weight.unsqueeze(2)  # [B, S, d]
        gram = sub_atoms @ sub_atoms.transpose(1, 2)
        gram.diagonal(dim1=1, dim2=2).add_(1.0 - weight)  # identity on free slots
        chol, info = torch.linalg.cholesky_ex(gram)
        signs = torch.sign(correlation.gather(1, safe)) * weight
        w = torch.cholesky_solve(signs.unsqueeze(2), chol).squeeze(2) * weight
        along = torch.bmm(w.unsqueeze(1), sub_atoms).squeeze(1) @ dictionary  # D^T D_A w_A

        # Step to the first event: a join (either sign), a coefficient reaching zero, or alpha.
        lam = level.unsqueeze(1)
        join = (lam - correlation) / (1 - along)
        join = torch.where(join > tiny, join, inf)
        join_neg = (lam + correlation) / (1 + along)
        torch.minimum(join, torch.where(join_neg > tiny, join_neg, inf), out=join)
        # Active atoms do not join (amax leaves the entries that free slots point at untouched).
        join.scatter_reduce_(1, safe, torch.where(valid, inf, -inf), reduce="amax")
        join_gamma, join_atom = join.min(dim=1)
        leave = -values / w
        leave_gamma, leave_slot = torch.where(valid & (values != 0) & (leave > tiny), leave, inf).min(dim=1)
        stop_gamma = level - alpha
        gamma = torch.minimum(torch.minimum(join_gamma, leave_gamma), stop_gamma)

        values = values + gamma.unsqueeze(1) * w
        correlation.addcmul_(gamma.unsqueeze(1), along, value=-1.0)
        level = level - gamma
        rows = torch.arange(x.shape[0], device=x.device)
        stopped = stop_gamma <= torch.minimum(join_gamma, leave_gamma)
        joins = ~stopped & (join_gamma <= leave_gamma)
        leaves = ~stopped & ~joins
        if max_nonzero is not None:
            capped = joins & (valid.sum(dim=1) >= max_nonzero)
            joins &= ~capped
            penalty = torch.where(capped, level, penalty)
            stopped |= capped
        slots[rows[leaves], leave_slot[leaves]] = -1
        values[rows[leaves], leave_slot[leaves]] = 0
        if bool(joins.any()):
            free = slots < 0
            if not bool(free[joins].any(dim=1).all()):  # some joining row is full: one more slot each
                slots = torch.cat([slots, slots.new_full((slots.shape[0], 1), -1)], dim=1)
                values = torch.cat([values, values.new_zeros(values.shape[0], 1)], dim=1)
                free = slots < 0
            first_free = free.to(torch.uint8).argmax(dim=1)
            slots[rows[joins], first_free[joins]] = join_atom[joins]
        finished = stopped

        stuck = (info != 0) | ~torch.isfinite(gamma)
        if bool(stuck.any()):
            failed.append(out_rows[stuck])
            keep = ~stuck
            x, correlation, level, slots, values, tiny, penalty, out_rows, finished = (
                t[keep] for t in (x, correlation, level, slots, values, tiny, penalty, out_rows, finished))
    failed.append(out_rows)  # still on the path
    return torch.cat(failed)
