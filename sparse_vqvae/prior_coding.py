"""Lossless coding of code maps with ANS driven by the PixelSNAIL priors: each symbol is coded with
p(symbol | everything before it), the distribution the prior was trained to predict, so a file
costs about the prior's bits per image instead of the factorised model's.

Order of symbols (the prior's own): the top map, then the bottom map conditioned on the top; in a
map, positions in raster order; in a position, slot by slot, the atom (or END, for the LASSO)
then its coefficient level. Decoding is sequential: every position needs the backbone run over
the codes decoded so far. The encoder walks the same loop with the known symbols (same calls,
same shapes, batch of one), so both sides compute the same probabilities; the prior's logits
are rounded to 2^-10 before the softmax, which absorbs float jitter between thread counts. Encode
and decode on the same kind of device: a GPU's arithmetic may differ from a CPU's beyond that.

The priors have a fixed map size (learnt position embeddings): they code images of the size
they were trained on; other sizes need the factorised model.
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable

import constriction
import numpy as np
import torch

from .checkpoint import CheckpointError
from .codes import EMPTY, Codes
from .pixelsnail import PixelSNAIL
from .prior_train import load_prior

_LOGIT_STEP = 2.0**-10
_FAMILY = constriction.stream.model.Categorical(perfect=False)

# next_symbol(probabilities, y, x, slot, is_atom) -> the symbol at that step (known, or decoded)
NextSymbol = Callable[[np.ndarray, int, int, int, bool], int]


class PriorEntropyModel:
    """The priors of a VQ-VAE's code maps (top first; later maps conditioned on the top) as an
    entropy model, with the interface of ``entropy_coding.FrequencyModel``."""

    kind = "prior"

    def __init__(self, priors: list[PixelSNAIL], fingerprint: str) -> None:
        self.priors = [prior.eval() for prior in priors]
        self.fingerprint = fingerprint
        config = priors[0].config
        self.num_atoms, self.coef_levels, self.slots = config.num_atoms, config.coef_levels, config.slots
        self.map_sizes = [(prior.config.height, prior.config.width) for prior in priors]

    @classmethod
    def load(cls, paths: list[str | Path], device: torch.device | str = "cpu") -> PriorEntropyModel:
        """The priors saved by ``prior_train.save_prior``, top first; all of one VQ-VAE."""
        if not paths:
            raise CheckpointError("no prior checkpoints given")
        checkpoints = [load_prior(path, device) for path in paths]
        fingerprints = {checkpoint.fingerprint for checkpoint in checkpoints}
        if len(fingerprints) != 1:
            raise CheckpointError(f"the priors {[str(p) for p in paths]} model the codes of different VQ-VAEs")
        return cls([checkpoint.prior for checkpoint in checkpoints], fingerprints.pop())

    def check_sizes(self, map_sizes: list[tuple[int, int]]) -> None:
        if [tuple(size) for size in map_sizes] != self.map_sizes:
            raise ValueError(f"the priors code maps of sizes {self.map_sizes} (the training image size); these are "
                             f"{[tuple(size) for size in map_sizes]}: use the factorised entropy model for other sizes")

    @torch.no_grad()
    def encode(self, maps: tuple[Codes, ...]) -> bytes:
        """One image's code maps ([H, W, K] each, canonical order) -> the ANS-coded bytes."""
        self.check_sizes([tuple(codes.atoms.shape[:2]) for codes in maps])
        steps: list[tuple[int, np.ndarray]] = []
        end = self.num_atoms  # the END token's index (LASSO)

        def known(maps_index: int) -> NextSymbol:
            atoms, levels = maps[maps_index].atoms, maps[maps_index].levels

            def next_symbol(probabilities: np.ndarray, y: int, x: int, slot: int, is_atom: bool) -> int:
                if is_atom:
                    atom = int(atoms[y, x, slot])
                    symbol = end if atom == EMPTY else atom
                else:
                    symbol = int(levels[y, x, slot])
                steps.append((symbol, probabilities))
                return symbol

            return next_symbol

        self._walk(known)
        coder = constriction.stream.stack.AnsCoder()
        for symbol, probabilities in reversed(steps):  # ANS is a stack: push in reverse
            coder.encode_reverse(np.array([symbol], dtype=np.int32), _FAMILY, probabilities[None])
        return coder.get_compressed().astype("<u4").tobytes()

    @torch.no_grad()
    def decode(self, payload: bytes, map_sizes: list[tuple[int, int]]) -> tuple[Codes, ...]:
        """The inverse of ``encode``: sequential, one backbone pass per position."""
        self.check_sizes(map_sizes)
        if len(payload) % 4:
            raise ValueError("the coded payload is not a whole number of 32-bit words")
        coder = constriction.stream.stack.AnsCoder(np.frombuffer(payload, dtype="<u4").astype(np.uint32))

        def decoded(maps_index: int) -> NextSymbol:
            return lambda probabilities, y, x, slot, is_atom: int(coder.decode(_FAMILY, probabilities[None])[0])

        return self._walk(decoded)

    def _walk(self, next_symbols: Callable[[int], NextSymbol]) -> tuple[Codes, ...]:
        """Every map in coding order, each symbol's distribution computed from the codes so far."""
        maps: list[Codes] = []
        for index, prior in enumerate(self.priors):
            features = prior.condition_features(maps[0]) if prior.config.condition is not None else None
            maps.append(self._walk_map(prior, features, next_symbols(index)))
        return tuple(codes[0].to("cpu") for codes in maps)

    def _walk_map(self, prior: PixelSNAIL, features: torch.Tensor | None, next_symbol: NextSymbol) -> Codes:
        head, config = prior.head, prior.config
        device = prior.position.device
        shape = (1, config.height, config.width, config.slots)
        codes = Codes(torch.full(shape, EMPTY, dtype=torch.long, device=device),
                      torch.zeros(shape, dtype=torch.long, device=device))
        for y in range(config.height):
            for x in range(config.width):
                state = prior.backbone(codes, features, rows=y + 1)[:, :, y, x]
                previous = torch.full((1,), -1, dtype=torch.long, device=device)
                for slot in range(config.slots):
                    atom = next_symbol(_probabilities(head._atom_logits(state, previous, slot)), y, x, slot, True)
                    if atom >= config.num_atoms:  # END: the position holds no more pairs
                        break
                    atom_t = torch.tensor([atom], device=device)
                    level = 0
                    if config.coef_levels > 1:
                        logits = head.level_out(state + head.atom_in(atom_t))
                        level = next_symbol(_probabilities(logits), y, x, slot, False)
                    level_t = torch.tensor([level], device=device)
                    codes.atoms[0, y, x, slot], codes.levels[0, y, x, slot] = atom, level
                    state = head._advance(state, atom_t, level_t)
                    previous = atom_t
        return codes


def _probabilities(logits: torch.Tensor) -> np.ndarray:
    """[1, N] logits -> N probabilities in float64, from logits rounded to a grid (masked ones stay 0)."""
    rounded = np.round(logits[0].double().cpu().numpy() / _LOGIT_STEP) * _LOGIT_STEP
    weights = np.exp(rounded - rounded.max())
    return weights / weights.sum()
