"""Lossless coding of code maps with ANS driven by the PixelSNAIL priors: each symbol is coded with
p(symbol | everything before it), the distribution the prior was trained to predict, so a file
costs about the prior's bits per image instead of the factorised model's.

Order of symbols (the prior's own): the top map, then the bottom map conditioned on the top; in a
map, positions in raster order; in a position, slot by slot, the atom (or END, for the LASSO)
then its coefficient level. Decoding is sequential: every position needs the backbone run over
the codes decoded so far. The encoder walks the same loop with the known symbols (the same calls,
each image's row computed on its own), so both sides compute the same probabilities. Priors whose
positions hold every slot and one level (a residual VQ's: the photo codec's) code by faster loops of
the same calls (``_encoded_fixed``, ``_decoded_fixed``): the decoder without PyTorch between them, the
encoder the backbone over the known codes first, then every slot's logits in threads and the ANS
pushes a chunk at a time - the same bytes (tested against the general loop).

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
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Callable

import constriction
import numpy as np
import torch

from .checkpoint import CheckpointError
from .codes import EMPTY, Codes, quality_range, staged_code
from .entropy_coding import or_error, raised
from .generation import CompiledHead, Pick, compiled, generate, prepared_backbone
from .pixelsnail import PixelSNAIL
from .prior_train import load_prior

_LOGIT_STEP = 2.0**-10
BATCH = 32  # images coded together: the sequential loop's per-call cost is shared, memory stays small
CODING_DEVICE, CODING_DTYPE = torch.device("cpu"), torch.float64  # the one arithmetic of the probabilities
_FAMILY = constriction.stream.model.Categorical(perfect=False)
_CHUNK = 256  # positions whose probabilities the fixed-count encoder holds at once (~20 MB for 10 slots of 1024)

# next_symbol(row, probabilities, (map, y, x, slot), is_atom) -> row's symbol at that step (known, or decoded)
NextSymbol = Callable[[int, np.ndarray, tuple[int, int, int, int], bool], int]
Maps = tuple[Codes, ...]


class PriorEntropyModel:
    """The priors of a VQ-VAE's code maps (top first; later maps conditioned on the top) as an
    entropy model, with the interface of ``entropy_coding.FrequencyModel``."""

    kind = "prior"
    per_quality = False  # one model for every quality: the priors condition on the codes coded so far

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
        config = self.priors[0].config
        return quality_range(self.slots, len(self.priors), staged_code(config.stage_atoms, config.variable_count))[-1]

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

    def _fixed(self) -> bool:
        """Whether the fixed-count loops code these priors: compiled, every position holding all its slots (no END),
        one coefficient level (nothing but the atoms coded) - a residual VQ's priors, the photo codec's."""
        return all(compiled(prior) and not prior.head.variable and prior.config.coef_levels == 1
                   for prior in self._coding_priors)

    def _encoded(self, images: list[Maps], sizes: list[tuple[int, int]]) -> list[bytes]:
        """Images of one size coded together: their payloads."""
        if self._fixed():
            return self._encoded_fixed(images, sizes)
        atoms = [np.stack([maps[index].atoms.cpu().numpy() for maps in images]) for index in range(len(sizes))]
        levels = [np.stack([maps[index].levels.cpu().numpy() for maps in images]) for index in range(len(sizes))]
        steps: list[list[tuple[int, np.ndarray]]] = [[] for _ in images]

        def known(row: int, probabilities: np.ndarray, where: tuple[int, int, int, int], is_atom: bool) -> int:
            index, *position = where
            if is_atom:
                atom, head = int(atoms[index][(row, *position)]), self._coding_priors[index].head
                symbol = head.end if atom == EMPTY else atom - head.atom_offset(position[-1])
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

    def _encoded_fixed(self, images: list[Maps], sizes: list[tuple[int, int]]) -> list[bytes]:
        """``_encoded`` for fixed-count priors (``_fixed``), the same bytes faster: every symbol is known, so the
        backbone first runs over each map (``_known_features``: the positions in order, the same calls as the
        decoder's), then the head gives every slot's logits from those features and the known pairs
        (``CompiledHead.known_logits``: the decoder's calls, slot by slot), in chunks of positions from the last,
        the rows of a chunk split over ``torch.get_num_threads()`` threads (each row's bits are its own), and each
        chunk is pushed on the ANS stack in one call (it pushes a sequence in reverse, as the symbol-by-symbol
        loop does)."""
        maps = [Codes(torch.stack([image[index].atoms.cpu() for image in images]),
                      torch.stack([image[index].levels.cpu() for image in images])) for index in range(len(sizes))]
        features = [self._known_features(index, maps, sizes[index]) for index in range(len(sizes))]
        coders = [constriction.stream.stack.AnsCoder() for _ in images]
        workers = max(1, torch.get_num_threads())
        with ThreadPoolExecutor(workers) as pool:
            for index in reversed(range(len(sizes))):  # ANS is a stack: the last map's last symbol goes first
                prior = self._coding_priors[index]
                steps, head = CompiledHead(prior), prior.head
                offsets = np.array([head.atom_offset(k) for k in range(head.slots)], dtype=np.int64)
                width = head.stage_atoms or head.num_atoms
                for row, coder in enumerate(coders):
                    atoms = np.ascontiguousarray(maps[index].atoms[row].numpy().reshape(-1, head.slots), dtype=np.int64)
                    levels = np.ascontiguousarray(maps[index].levels[row].numpy().reshape(-1, head.slots), dtype=np.int64)
                    known = features[index][row].reshape(-1, features[index].shape[-1])
                    symbols = (atoms - offsets).astype(np.int32)
                    for end in range(len(atoms), 0, -_CHUNK):
                        start = max(0, end - _CHUNK)
                        probabilities = np.empty((end - start, head.slots, width))
                        cuts = np.linspace(start, end, workers + 1).round().astype(int)
                        for done in [pool.submit(_known_probabilities, steps, known[a:b], atoms[a:b], levels[a:b],
                                                 probabilities[a - start : b - start])
                                     for a, b in zip(cuts[:-1], cuts[1:]) if b > a]:
                            done.result()
                        coder.encode_reverse(symbols[start:end].ravel(), _FAMILY, probabilities.reshape(-1, width))
        return [coder.get_compressed().astype("<u4").tobytes() for coder in coders]

    def _known_features(self, index: int, maps: list[Codes], size: tuple[int, int]) -> np.ndarray:
        """The backbone's features [n, H, W, C] at every position of known map ``index`` (the top map's codes its
        condition): the positions in raster order, each from the codes written before it - the calls ``generate``
        makes, so the bits the decoder's backbone computes."""
        prior, codes = self._coding_priors[index], maps[index]
        n, (height, width), channels = codes.atoms.shape[0], size, prior.config.channels
        atoms = np.ascontiguousarray(codes.atoms.numpy().transpose(1, 2, 0, 3), dtype=np.int64)  # [H, W, n, K]
        levels = np.ascontiguousarray(codes.levels.numpy().transpose(1, 2, 0, 3), dtype=np.int64)
        features = np.empty((height, width, n, channels))
        with torch.inference_mode():
            backbone = prepared_backbone(prior, n, maps[0] if index else None, size)
            for y in range(height):
                for x in range(width):
                    backbone.step(y, x, features[y, x])
                    backbone.write(y, x, atoms[y, x], levels[y, x])
        return np.ascontiguousarray(features.transpose(2, 0, 1, 3))

    def _decoded(self, payloads: list[bytes], sizes: list[tuple[int, int]]) -> list[Maps | ValueError]:
        """Payloads of one size decoded together: their code maps (or the decoder's error)."""
        coders = [constriction.stream.stack.AnsCoder(np.frombuffer(p, dtype="<u4").astype(np.uint32)) for p in payloads]
        errors: list[ValueError | None] = [None] * len(payloads)
        if self._fixed():
            maps: list[Codes] = []
            for index in range(len(sizes)):
                maps.append(self._decoded_fixed(index, coders, errors, sizes[index], maps[0] if index else None))
            return [error or tuple(codes[row] for codes in maps) for row, error in enumerate(errors)]

        def decoded(row: int, probabilities: np.ndarray, where: tuple[int, int, int, int], is_atom: bool) -> int:
            if errors[row] is None:
                try:
                    return int(coders[row].decode(_FAMILY, probabilities[None])[0])
                except (ValueError, RuntimeError) as error:  # data that no encoder wrote
                    errors[row] = ValueError(f"the ANS decoder failed: {error}")
            return 0

        maps = self._walk(decoded, sizes, len(payloads))
        return [error or tuple(codes[row] for codes in maps) for row, error in enumerate(errors)]

    def _decoded_fixed(self, index: int, coders: list, errors: list[ValueError | None], size: tuple[int, int],
                       condition: Codes | None) -> Codes:
        """Map ``index`` of every row decoded by fixed-count priors (``_fixed``): ``generate``'s loop and ``emit``'s
        slot loop for a head whose positions hold every slot, in numpy instead of PyTorch - the same calls into C on
        the same arrays, the same probabilities, the same ANS calls (a row's decoder error kept in ``errors``, its
        symbols 0 from then on)."""
        prior = self._coding_priors[index]
        head, steps = prior.head, CompiledHead(prior)
        n, (height, width), slots = len(coders), size, head.slots
        offsets = [head.atom_offset(k) for k in range(slots)]
        top = head.num_atoms - 1
        atoms = np.empty((height, width, n, slots), dtype=np.int64)
        levels = np.zeros((n, slots), dtype=np.int64)  # one level: never coded
        features, states = np.empty((n, prior.config.channels)), [np.empty((n, prior.config.channels)) for _ in "ab"]
        logits = np.empty((n, head.stage_atoms or head.num_atoms))
        previous, chosen = np.empty(n, dtype=np.int64), np.empty(n, dtype=np.int64)
        rows = range(n)
        with torch.inference_mode():
            backbone = prepared_backbone(prior, n, condition, size)
            for y in range(height):
                for x in range(width):
                    backbone.step(y, x, features)
                    state, here = features, atoms[y, x]
                    previous.fill(-1)
                    for k in range(slots):
                        steps.atom_logits_into(state, previous, k, logits)
                        _grid(logits)
                        for row in rows:
                            symbol = 0
                            if errors[row] is None:
                                try:
                                    symbol = int(coders[row].decode(_FAMILY, _softmax(logits[row])[None])[0])
                                except (ValueError, RuntimeError) as error:  # data that no encoder wrote
                                    errors[row] = ValueError(f"the ANS decoder failed: {error}")
                            chosen[row] = min(symbol + offsets[k], top)
                        here[:, k] = chosen
                        if k + 1 < slots:  # the last slot needs no advance
                            advanced = states[k % 2]
                            steps.advance_into(state, chosen, levels[:, k].copy(), advanced)
                            state = advanced
                            previous[:] = chosen
                    backbone.write(y, x, np.ascontiguousarray(here), levels)
        return Codes(torch.from_numpy(np.ascontiguousarray(atoms.transpose(2, 0, 1, 3))),
                     torch.zeros((n, height, width, slots), dtype=torch.long))

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


def _known_probabilities(steps: CompiledHead, features: np.ndarray, atoms: np.ndarray, levels: np.ndarray,
                         out: np.ndarray) -> None:
    """Rows of known pairs -> every slot's probabilities into ``out`` [R, K, N] (``_probabilities`` of each slot's
    logits, row by row: the same bits)."""
    steps.known_logits(features, atoms, levels, out)
    _grid(out)
    np.subtract(out, out.max(axis=-1, keepdims=True), out=out)
    np.exp(out, out=out)
    np.divide(out, out.sum(axis=-1, keepdims=True), out=out)


def _grid(logits: np.ndarray) -> np.ndarray:
    """Logits rounded to the 2^-10 grid, in place: ``_probabilities``' first steps, the same operations."""
    np.divide(logits, _LOGIT_STEP, out=logits)
    np.round(logits, out=logits)
    return np.multiply(logits, _LOGIT_STEP, out=logits)


def _softmax(rounded: np.ndarray) -> np.ndarray:
    """``_probabilities``' last steps, in place on one row of ``_grid``'s logits."""
    np.subtract(rounded, rounded.max(), out=rounded)
    np.exp(rounded, out=rounded)
    return np.divide(rounded, rounded.sum(), out=rounded)


def _probabilities(scaled: np.ndarray) -> np.ndarray:
    """N logits in grid steps -> N probabilities in float64, from the logits rounded to the grid (masked ones
    stay 0)."""
    rounded = np.round(scaled) * _LOGIT_STEP
    weights = np.exp(rounded - rounded.max())
    return weights / weights.sum()

