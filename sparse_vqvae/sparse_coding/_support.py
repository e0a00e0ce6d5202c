"""The small linear system a sparse code satisfies on its support, batched over rows."""

from __future__ import annotations

from typing import NamedTuple

import torch


class SupportSystem(NamedTuple):
    support: torch.Tensor  # [B, s] atom indices, active ones first, padded
    valid: torch.Tensor  # [B, s] bool: which entries of `support` are active
    sub_atoms: torch.Tensor  # [B, s, d] the active atoms, zero rows on padding
    gram: torch.Tensor  # [B, s, s] D_S^T D_S + ridge I on the support, identity on padding


def support_system(atoms: torch.Tensor, code: torch.Tensor, ridge: float = 0.0) -> SupportSystem | None:
    """``atoms`` is the dictionary transposed, [N, d]; ``code`` is dense [B, N]. None if all codes are 0."""
    active = code != 0
    size = int(active.sum(dim=1).max().item()) if code.numel() else 0
    if size == 0:
        return None
    support = active.view(torch.uint8).topk(size, dim=1).indices  # uint8: no float copy of [B, N]
    return pairs_system(atoms, support, active.gather(1, support), ridge)


def pairs_system(atoms: torch.Tensor, support: torch.Tensor, valid: torch.Tensor, ridge: float = 0.0) -> SupportSystem:
    """The system of a code given as its pairs: atom indices ``support`` [B, s] (distinct in a row), of
    which ``valid`` [B, s] are active; no dense [B, N] pass."""
    weight = valid.to(atoms.dtype)
    sub_atoms = atoms[support] * weight.unsqueeze(2)
    gram = sub_atoms @ sub_atoms.transpose(1, 2)
    gram.diagonal(dim1=1, dim2=2).add_(ridge * weight + (1.0 - weight))
    return SupportSystem(support, valid, sub_atoms, gram)
