"""Lossless coding of code maps with ANS driven by the PixelSNAIL priors: each symbol is coded with
p(symbol | everything before it), the distribution the prior was trained to predict, so a file
costs about the prior's bits per image instead of the factorised model's.

Order of symbols (the prior's own): the top map, then the bottom map conditioned on the top; in a
map, positions in raster order; in a position, slot by slot, the atom (or END, for the LASSO)
then its coefficient level. Decoding is sequential: every position needs the backbone run over
the codes decoded so far. The encoder walks the same loop with the known symbols (same calls,
same shapes, batch of one), so both sides compute the same probabilities.

Files decode anywhere: the probabilities come from one fixed arithmetic, whatever device the
priors were trained or loaded on - the priors run on the CPU in float64 for coding, and their
logits are rounded to 2^-10 before the softmax. Between CPU kinds, SIMD paths and thread counts
float64 results differ in the last bits (~1e-16), so a rounding flip needs a logit within that of
a grid boundary; and should one ever happen, the file's CRC of the codes makes the decoder fail
with a ``CodecError`` instead of returning another image. (A GPU's float32 logits, or TF32,
differed from a CPU's beyond the grid: CUDA-encoded files did not decode on the CPU.)

Priors with learned positions code images of the size they were trained on (other sizes need the
factorised model); priors with positions ``none`` code any size. Each position costs one pass of
every layer at that position (``pixelsnail.IncrementalBackbone``): time grows linearly with the
image's area.
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Callable

import constriction
import numpy as np
import torch

from .checkpoint import CheckpointError
from .codes import EMPTY, Codes
from .pixelsnail import Pick, PixelSNAIL
from .prior_train import load_prior

_LOGIT_STEP = 2.0**-10
CODING_DEVICE, CODING_DTYPE = torch.device("cpu"), torch.float64  # the one arithmetic of the probabilities
_FAMILY = constriction.stream.model.Categorical(perfect=False)

# next_symbol(probabilities, (map, y, x, slot), is_atom) -> the symbol at that step (known, or decoded)
NextSymbol = Callable[[np.ndarray, tuple[int, int, int, int], bool], int]


class PriorEntropyModel:
    """The priors of a VQ-VAE's code maps (top first; later maps conditioned on the top) as an
    entropy model, with the interface of ``entropy_coding.FrequencyModel``."""

    kind = "prior"

    def __init__(self, priors: list[PixelSNAIL], fingerprint: str) -> None:
        self.priors = [prior.eval() for prior in priors]  # as given: for sampling and bits on their device
        # The coding arithmetic (module docstring): copies on the CPU in float64.
        self._coding_priors = [copy.deepcopy(prior).to(CODING_DEVICE, CODING_DTYPE).eval() for prior in priors]
        self.fingerprint = fingerprint
        config = priors[0].config
        self.num_atoms, self.coef_levels, self.slots = config.num_atoms, config.coef_levels, config.slots

    @classmethod
    def load(cls, paths: list[str | Path], device: torch.device | str = "cpu",
             fingerprint: str | None = None) -> PriorEntropyModel:
        """The priors saved by ``prior_train.save_prior``, top first; all of one VQ-VAE - of the one with
        ``fingerprint``, when given."""
        if not paths:
            raise CheckpointError("no prior checkpoints given")
        checkpoints = [load_prior(path, device) for path in paths]
        fingerprints = {checkpoint.fingerprint for checkpoint in checkpoints}
        if len(fingerprints) != 1:
            raise CheckpointError(f"the priors {[str(p) for p in paths]} model the codes of different VQ-VAEs")
        found = fingerprints.pop()
        if fingerprint is not None and found != fingerprint:
            raise CheckpointError(f"the priors in {Path(paths[0]).parent} model the codes of model {found}, not of "
                                  f"this model ({fingerprint}): rerun train_prior for it")
        return cls([checkpoint.prior for checkpoint in checkpoints], found)

    def check_sizes(self, map_sizes: list[tuple[int, int]]) -> None:
        """Maps these priors can code: one per prior, of the training size where positions are learned."""
        if len(map_sizes) != len(self.priors):
            raise ValueError(f"{len(map_sizes)} code maps for {len(self.priors)} priors")
        try:
            for prior, (height, width) in zip(self.priors, map_sizes):
                prior.check_size(height, width)
        except ValueError as error:
            raise ValueError(f"{error}: use the factorised entropy model for other sizes") from error

    @torch.no_grad()
    def encode(self, maps: tuple[Codes, ...]) -> bytes:
        """One image's code maps ([H, W, K] each, canonical order) -> the ANS-coded bytes."""
        sizes = [tuple(codes.atoms.shape[:2]) for codes in maps]
        self.check_sizes(sizes)
        self.check_slots(maps[0].atoms.shape[-1])
        steps: list[tuple[int, np.ndarray]] = []
        end = self.num_atoms  # the END token's index (LASSO)

        def known(probabilities: np.ndarray, where: tuple[int, int, int, int], is_atom: bool) -> int:
            index, *position = where
            if is_atom:
                atom = int(maps[index].atoms[tuple(position)])
                symbol = end if atom == EMPTY else atom - self._coding_priors[index].head.atom_offset(position[-1])
            else:
                symbol = int(maps[index].levels[tuple(position)])
            steps.append((symbol, probabilities))
            return symbol

        self._walk(known, sizes)
        coder = constriction.stream.stack.AnsCoder()
        for symbol, probabilities in reversed(steps):  # ANS is a stack: push in reverse
            coder.encode_reverse(np.array([symbol], dtype=np.int32), _FAMILY, probabilities[None])
        return coder.get_compressed().astype("<u4").tobytes()

    @torch.no_grad()
    def check_slots(self, slots: int) -> int:
        """The priors model whole codes: ``slots`` must be all K of them (a residual VQ's top quality)."""
        if slots != self.slots:
            raise ValueError(f"the priors code all {self.slots} slots a position, not {slots}: use the factorised "
                             "entropy model for lower qualities")
        return slots

    def decode(self, payload: bytes, map_sizes: list[tuple[int, int]], slots: int | None = None) -> tuple[Codes, ...]:
        """The inverse of ``encode``: sequential, one backbone pass per position."""
        self.check_sizes(map_sizes)
        self.check_slots(self.slots if slots is None else slots)
        if len(payload) % 4:
            raise ValueError("the coded payload is not a whole number of 32-bit words")
        coder = constriction.stream.stack.AnsCoder(np.frombuffer(payload, dtype="<u4").astype(np.uint32))

        def decoded(probabilities: np.ndarray, where: tuple[int, int, int, int], is_atom: bool) -> int:
            return int(coder.decode(_FAMILY, probabilities[None])[0])

        return self._walk(decoded, map_sizes)

    def _walk(self, next_symbol: NextSymbol, map_sizes: list[tuple[int, int]]) -> tuple[Codes, ...]:
        """Every map in coding order, each symbol's distribution computed from the codes so far: the
        prior's own generation loop, with the symbols coded (or decoded) instead of drawn."""
        maps: list[Codes] = []
        for index, prior in enumerate(self._coding_priors):
            pick_atom, pick_level = _picks(next_symbol, index, prior.config.coef_levels)
            maps.append(prior.generate(1, pick_atom, pick_level, condition=maps[0] if index else None,
                                       size=tuple(map_sizes[index])))
        return tuple(codes[0].to("cpu") for codes in maps)


def _picks(next_symbol: NextSymbol, index: int, coef_levels: int) -> tuple[Pick, Pick]:
    """``PixelSNAIL.generate``'s choosers for map ``index`` of one image: each symbol of an open position
    goes through ``next_symbol`` with its probabilities; a closed position's slots, and the single level
    of a one-level table, carry no information and are not coded."""

    def pick(is_atom: bool) -> Pick:
        def choose(logits: torch.Tensor, where: tuple[int, int, int], open_: torch.Tensor) -> torch.Tensor:
            if not bool(open_[0]) or (not is_atom and coef_levels == 1):
                return torch.zeros(1, dtype=torch.long, device=logits.device)
            return torch.tensor([next_symbol(_probabilities(logits), (index, *where), is_atom)], device=logits.device)

        return choose

    return pick(True), pick(False)


def _probabilities(logits: torch.Tensor) -> np.ndarray:
    """[1, N] logits -> N probabilities in float64, from logits rounded to a grid (masked ones stay 0)."""
    rounded = np.round(logits[0].double().cpu().numpy() / _LOGIT_STEP) * _LOGIT_STEP
    weights = np.exp(rounded - rounded.max())
    return weights / weights.sum()
