"""Lossless coding of code maps with ANS driven by the PixelSNAIL priors: each symbol is coded with
p(symbol | everything before it), the distribution the prior was trained to predict, so a file
costs about the prior's bits per image instead of the factorised model's.

Order of symbols (the prior's own): the top map, then the bottom map conditioned on the top; in a
map, positions in raster order; in a position, slot by slot, the atom (or END, for the LASSO)
then its coefficient level. Decoding is sequential: every position needs the backbone run over
the codes decoded so far. The encoder walks the same loop with the known symbols (the same calls,
each image's row computed on its own), so both sides compute the same probabilities.

Files decode anywhere: the probabilities come from one fixed arithmetic, whatever device the
priors were trained or loaded on - the priors run on the CPU for coding, in their compiled form
(``generation``: float64, each sum in one written-out order, compiled without FMA contraction), and
their logits are rounded to 2^-10 before the softmax. What can still differ between machines, in the
last bits (~1e-16): libm's exp and expm1, numpy's exp in the probability tables, and the top codes'
embedding for the bottom prior (PyTorch convolutions, computed once per image); so a rounding flip
needs a logit within that of a grid boundary; and should one ever happen, the file's CRC of the codes makes the decoder fail with a
``CodecError`` instead of returning another image. (A GPU's float32 logits, or TF32, differed from a
CPU's beyond the grid: CUDA-encoded files did not decode on the CPU.)

Several images code together (``encode_many`` / ``decode_many``): the priors run over all of them at
once, one call per position (and per slot) for the batch, which amortises the per-call cost that
dominates one small image. The compiled forms compute each row on its own, and the top codes'
embedding is computed one image at a time, so an image's logits are the same bits in a batch as alone
(tested): a file coded in a batch decodes alone, and the other way round.

Priors with learned positions code images of the size they were trained on (other sizes need the
factorised model); priors with positions ``none`` code any size. Each position costs one pass of
every layer at that position (``generation``): time grows linearly with the image's area.
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Callable

import constriction
import numpy as np
import torch

from .checkpoint import CheckpointError
from .codes import EMPTY, Codes, quality_range
from .entropy_coding import or_error, raised
from .generation import Pick, generate
from .pixelsnail import PixelSNAIL
from .prior_train import load_prior

_LOGIT_STEP = 2.0**-10
BATCH = 32  # images coded together: the sequential loop's per-call cost is shared, memory stays small
CODING_DEVICE, CODING_DTYPE = torch.device("cpu"), torch.float64  # the one arithmetic of the probabilities
_FAMILY = constriction.stream.model.Categorical(perfect=False)

# next_symbol(row, probabilities, (map, y, x, slot), is_atom) -> row's symbol at that step (known, or decoded)
NextSymbol = Callable[[int, np.ndarray, tuple[int, int, int, int], bool], int]
Maps = tuple[Codes, ...]


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

    def encode(self, maps: Maps) -> bytes:
        """One image's code maps ([H, W, K] each, canonical order) -> the ANS-coded bytes."""
        return raised(self.encode_many([maps])[0])

    def decode(self, payload: bytes, map_sizes: list[tuple[int, int]], quality: int | None = None) -> Maps:
        """The inverse of ``encode``: sequential, one backbone pass per position."""
        return raised(self.decode_many([payload], [map_sizes], [quality])[0])

    @property
    def top_quality(self) -> int:
        return quality_range(self.slots, len(self.priors), staged=bool(self.priors[0].config.stage_atoms))[-1]

    def quality_of(self, maps: Maps) -> int:
        """The priors model whole codes: every map must hold all K slots (a residual VQ's top quality)."""
        held = [codes.atoms.shape[-1] for codes in maps]
        if held != [self.slots] * len(self.priors):
            raise ValueError(f"the priors code all {self.slots} slots of every map, not {held}: use the factorised "
                             "entropy model for lower qualities")
        return self.top_quality

    @torch.no_grad()
    def encode_many(self, images: list[Maps]) -> list[bytes | ValueError]:
        """Each image's code maps -> its ANS-coded bytes (or why it cannot be coded), in batches of images
        of one size; each file's bytes are those ``encode`` gives it alone."""
        def sizes(maps: Maps) -> tuple[tuple[int, int], ...]:
            found = [tuple(codes.atoms.shape[:2]) for codes in maps]
            self.check_sizes(found)
            self.quality_of(maps)
            return tuple(found)

        return _in_batches([or_error(sizes, maps) for maps in images],
                           lambda rows, found: self._encoded([images[row] for row in rows], found))

    @torch.no_grad()
    def decode_many(self, payloads: list[bytes], map_sizes: list[list[tuple[int, int]]],
                    qualities: list[int | None]) -> list[Maps | ValueError]:
        """The inverse of ``encode_many``: each payload's code maps (or why they cannot be decoded), in batches
        of one size."""
        def sizes(payload: bytes, found: list[tuple[int, int]], quality: int | None) -> tuple[tuple[int, int], ...]:
            self.check_sizes(found)
            if quality not in (None, self.top_quality):
                raise ValueError(f"the priors code the top quality ({self.top_quality}) only, not {quality}: use the "
                                 "factorised entropy model for lower qualities")
            if len(payload) % 4:
                raise ValueError("the coded payload is not a whole number of 32-bit words")
            return tuple(tuple(size) for size in found)

        return _in_batches([or_error(sizes, *item) for item in zip(payloads, map_sizes, qualities)],
                           lambda rows, found: self._decoded([payloads[row] for row in rows], found))

    def _encoded(self, images: list[Maps], sizes: list[tuple[int, int]]) -> list[bytes]:
        """Images of one size coded together: their payloads."""
        atoms = [np.stack([maps[index].atoms.cpu().numpy() for maps in images]) for index in range(len(sizes))]
        levels = [np.stack([maps[index].levels.cpu().numpy() for maps in images]) for index in range(len(sizes))]
        steps: list[list[tuple[int, np.ndarray]]] = [[] for _ in images]
        end = self.num_atoms  # the END token's index (LASSO)

        def known(row: int, probabilities: np.ndarray, where: tuple[int, int, int, int], is_atom: bool) -> int:
            index, *position = where
            if is_atom:
                atom = int(atoms[index][(row, *position)])
                symbol = end if atom == EMPTY else atom - self._coding_priors[index].head.atom_offset(position[-1])
            else:
                symbol = int(levels[index][(row, *position)])
            steps[row].append((symbol, probabilities))
            return symbol

        self._walk(known, sizes, len(images))
        payloads = []
        for image_steps in steps:
            coder = constriction.stream.stack.AnsCoder()
            for symbol, probabilities in reversed(image_steps):  # ANS is a stack: push in reverse
                coder.encode_reverse(np.array([symbol], dtype=np.int32), _FAMILY, probabilities[None])
            payloads.append(coder.get_compressed().astype("<u4").tobytes())
        return payloads

    def _decoded(self, payloads: list[bytes], sizes: list[tuple[int, int]]) -> list[Maps | ValueError]:
        """Payloads of one size decoded together: their code maps (or the decoder's error)."""
        coders = [constriction.stream.stack.AnsCoder(np.frombuffer(p, dtype="<u4").astype(np.uint32)) for p in payloads]
        errors: list[ValueError | None] = [None] * len(payloads)

        def decoded(row: int, probabilities: np.ndarray, where: tuple[int, int, int, int], is_atom: bool) -> int:
            if errors[row] is None:
                try:
                    return int(coders[row].decode(_FAMILY, probabilities[None])[0])
                except (ValueError, RuntimeError) as error:  # data that no encoder wrote
                    errors[row] = ValueError(f"the ANS decoder failed: {error}")
            return 0

        maps = self._walk(decoded, sizes, len(payloads))
        return [error or tuple(codes[row] for codes in maps) for row, error in enumerate(errors)]

    def _walk(self, next_symbol: NextSymbol, map_sizes: list[tuple[int, int]], n: int) -> Maps:
        """Every map of ``n`` images in coding order, each symbol's distribution computed from the codes so far:
        the prior's own generation loop, with the symbols coded (or decoded) instead of drawn."""
        maps: list[Codes] = []
        for index, prior in enumerate(self._coding_priors):
            pick_atom, pick_level = _picks(next_symbol, index, prior.config.coef_levels)
            maps.append(generate(prior, n, pick_atom, pick_level, condition=maps[0] if index else None,
                                       size=tuple(map_sizes[index])))
        return tuple(codes.to("cpu") for codes in maps)


def _in_batches(sizes: list[tuple | ValueError], run: Callable[[list[int], list], list]) -> list:
    """``run(rows, map_sizes)`` over the items of each size, ``BATCH`` at a time; an item whose sizes are an
    error keeps the error as its result."""
    results: list = list(sizes)
    groups: dict[tuple, list[int]] = {}
    for row, found in enumerate(sizes):
        if not isinstance(found, Exception):
            groups.setdefault(found, []).append(row)
    for found, rows in groups.items():
        for start in range(0, len(rows), BATCH):
            chunk = rows[start : start + BATCH]
            for row, output in zip(chunk, run(chunk, list(found))):
                results[row] = output
    return results


def _picks(next_symbol: NextSymbol, index: int, coef_levels: int) -> tuple[Pick, Pick]:
    """``PixelSNAIL.generate``'s choosers for map ``index`` of a batch: each symbol of an open position goes
    through ``next_symbol`` with its row's probabilities; a closed position's slots, and the single level of a
    one-level table, carry no information and are not coded."""

    def pick(is_atom: bool) -> Pick:
        def choose(logits: torch.Tensor, where: tuple[int, int, int], open_: torch.Tensor) -> torch.Tensor:
            symbols = np.zeros(len(logits), dtype=np.int64)
            if is_atom or coef_levels > 1:
                scaled = logits.double().cpu().numpy() / _LOGIT_STEP
                for row in np.flatnonzero(open_.cpu().numpy()):
                    symbols[row] = next_symbol(int(row), _probabilities(scaled[row]), (index, *where), is_atom)
            return torch.from_numpy(symbols).to(logits.device)

        return choose

    return pick(True), pick(False)


def _probabilities(scaled: np.ndarray) -> np.ndarray:
    """N logits in grid steps -> N probabilities in float64, from the logits rounded to the grid (masked ones
    stay 0)."""
    rounded = np.round(scaled) * _LOGIT_STEP
    weights = np.exp(rounded - rounded.max())
    return weights / weights.sum()

