"""The one code representation: per latent position, a list of (atom index, coefficient level) pairs.

- OMP: exactly K pairs per position.
- FISTA: at most ``max_nonzero`` pairs; unused slots hold atom ``EMPTY`` (-1) and level 0.
- vanilla VQ: one pair per position, level 0 of a one-entry level table whose value is 1.0
  (the codebook vector itself).

Pairs are kept in canonical order, ascending atom index with empty slots last, so that a code has
one spelling: the quantizers compose ``z_q`` in this order, the LMDB store saves it, the prior
models it and the codec entropy-codes it.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

EMPTY = -1


@dataclass(frozen=True)
class Codes:
    atoms: torch.Tensor  # [B, H, W, K] long (or one image's [H, W, K]), EMPTY marks an unused slot
    levels: torch.Tensor  # same shape, long, in [0, coef_levels)

    def __post_init__(self) -> None:
        if self.atoms.shape != self.levels.shape or self.atoms.dim() not in (3, 4):
            raise ValueError(
                f"codes need atoms and levels of one shape [B, H, W, K] or [H, W, K]; got {list(self.atoms.shape)} "
                f"and {list(self.levels.shape)}"
            )

    @property
    def present(self) -> torch.Tensor:
        """[B, H, W, K] bool: which slots hold a pair."""
        return self.atoms != EMPTY

    def to(self, device: torch.device | str) -> Codes:
        return Codes(self.atoms.to(device), self.levels.to(device))

    def __getitem__(self, index) -> Codes:
        return Codes(self.atoms[index], self.levels[index])

    def equal(self, other: Codes) -> bool:
        return torch.equal(self.atoms, other.atoms) and torch.equal(self.levels, other.levels)


def packed(codes: Codes) -> bytes:
    """One code map as bytes: atoms as little-endian int16, then levels as uint8 - what the code store
    keeps and what a compressed file's checksum of its codes covers."""
    return (codes.atoms.cpu().numpy().astype("<i2").tobytes() + codes.levels.cpu().numpy().astype("u1").tobytes())


def quality_range(slots: int, maps: int, staged: bool) -> range:
    """The qualities a code has: a staged code (a residual VQ's) 1 .. maps x K, a prefix of its stages each; any
    other code one, K (all its slots)."""
    return range(1, maps * slots + 1) if staged else range(slots, slots + 1)


def staged_code(stage_atoms: int, variable_count: bool) -> bool:
    """Whether a code's prefixes are its qualities (``config.staged``: a residual VQ's), told from what its entropy
    models know: ranked ids (``stage_atoms`` > 0) at a fixed count - a quantised pursuit's ranks vary in count, and
    its files code them all."""
    return bool(stage_atoms) and not variable_count


def quality_slots(quality: int, slots: int, maps: int, staged: bool) -> tuple[int, ...]:
    """The slots each code map holds at ``quality``: a staged code is cut to a prefix of its stages in map order
    - the top map's K first, then the bottom's (VQ-VAE-2's finer map for the higher qualities); any other code
    holds all K slots in every map. ValueError for a quality the code does not have."""
    if quality not in quality_range(slots, maps, staged):
        raise ValueError(f"quality {quality} is not one these codes have ({slots} slots, {maps} maps"
                         f"{', staged' if staged else ''}: {quality_range(slots, maps, staged)[0]} to "
                         f"{quality_range(slots, maps, staged)[-1]})")
    return tuple(min(max(quality - index * slots, 0), slots) if staged else slots for index in range(maps))


def last_atom(num_atoms: int, still_to_come):
    """The highest atom a slot of a canonical code may hold when ``still_to_come`` distinct, larger atoms follow it
    (a number, or an array of them)."""
    return num_atoms - 1 - still_to_come


def atom_window(index, previous, last):
    """Which of the atoms ``index`` a slot of a canonical code may hold: above the previous slot's atom (``previous``
    [...]) and at most ``last`` (``last_atom``, a number or [..., 1]). The one rule of the priors' heads (PyTorch's;
    the C head is given ``last``) and of the factorised coder, on torch tensors or numpy arrays alike."""
    return (index > previous[..., None]) & (index <= last)


def canonical_order(atoms: torch.Tensor) -> torch.Tensor:
    """Permutation [..., K] that sorts each position's atoms ascending, EMPTY slots last."""
    key = torch.where(atoms == EMPTY, torch.iinfo(atoms.dtype).max, atoms)
    return key.argsort(dim=-1, stable=True)


def validate_codes(codes: Codes, num_atoms: int, coef_levels: int) -> None:
    """Raise ValueError if any pair is out of range or an atom repeats inside a position."""
    atoms, levels = codes.atoms, codes.levels
    if bool(((atoms < EMPTY) | (atoms >= num_atoms)).any()):
        raise ValueError(f"codes hold atom indices outside [0, {num_atoms})")
    if bool(((levels < 0) | (levels >= coef_levels)).any()):
        raise ValueError(f"codes hold coefficient levels outside [0, {coef_levels})")
    ordered = atoms.gather(-1, canonical_order(atoms))
    repeated = (ordered[..., 1:] == ordered[..., :-1]) & (ordered[..., 1:] != EMPTY)
    if bool(repeated.any()):
        raise ValueError("codes repeat an atom inside one position")
