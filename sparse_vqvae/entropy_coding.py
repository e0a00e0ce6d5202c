"""Lossless coding of code maps with an ANS entropy coder (``constriction``) driven by a factorised
probability model: per code map, the frequencies of atoms and of coefficient levels (one table per
slot each) and (sparse codes) of pair counts, pooled over positions and fitted to the training codes.

A position's pairs are coded as a set: the count (when it varies), then the atoms in ascending
order - each drawn from the atom frequencies restricted to those above the previous atom and
leaving room for the atoms still to come, which saves the log2(K!) bits of their order - then one
level per pair. The frequencies are per slot: the k-th smallest atom of a position is not
distributed as the first (and a ranked code's slot k only ever holds rank k's entries, which a
pooled table would price at log2(K) bits more). The decoder rebuilds every restriction from what it
has decoded, so it reads the same distributions the encoder wrote with. A ranked code's slot k
(``config.ranked``: a residual VQ's stage k, a quantised pursuit's k-th pick) is coded among rank k's
M entries only (``stage_atoms``): one table of M a slot, the same for every position, so no
per-position tables are built.

A file may code fewer slots than the model holds: a residual VQ's codes cut to their first q stages, in map
order (``codes.quality_slots``), the codec's quality q - a map may then hold none.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Callable, Iterator

import constriction
import numpy as np
import torch

from .checkpoint import CheckpointError, load_payload, save_payload
from .codes import EMPTY, Codes, atom_window, last_atom, quality_range, quality_slots, staged_code

if TYPE_CHECKING:
    from .code_store import CodeSource, StoreMetadata

MODEL_FORMAT = "sparse-vqvae/frequency-model"
MODEL_VERSION = 6  # 3: atom frequencies per slot; 4: a residual VQ's slot among its stage's entries; 5: levels per
# slot, and a ranked code's slot among its rank's entries whether or not its count varies; 6: levels per slot and atom
READ_VERSIONS = (5, 6)  # version 5's one level table a slot still codes and decodes its files
LEVEL_BACKOFF = 1.0  # an atom's level table: its counts plus this many of its slot's levels (times L), so a rarely
# picked atom's table is its slot's
_ROWS = 2048  # positions per coded chunk: bounds the [rows, num_atoms] probability tables


@dataclass
class FrequencyModel:
    """Probabilities per code map (top first): atoms [K, N] (per slot; [K, M] ranked), levels [K, N, L] (per slot
    and atom: a level is coded given its pair's atom, which the decoder reads first; [K, L], one table a slot, in
    files of version 5), pair counts [K + 1]."""

    num_atoms: int
    coef_levels: int
    slots: int
    variable_count: bool  # the LASSO: a position holds 0..K pairs; else exactly K
    fingerprint: str  # the VQ-VAE whose codes it models
    atoms: list[np.ndarray]
    levels: list[np.ndarray]
    counts: list[np.ndarray]
    stage_atoms: int = 0  # M > 0: slot k holds one of atoms k*M .. k*M+M-1 (``config.stage_atoms``: ranked)
    kind = "factorised"  # the compressed file's name for this entropy model
    per_quality = False  # one set of tables for every quality (``QualityFrequencyModel``: a set a quality)

    @classmethod
    def fit(cls, maps: CodeSource, meta: StoreMetadata, batch_size: int = 1024,
            levels_given_atoms: bool = True) -> FrequencyModel:
        """Add-one-smoothed frequencies of the codes of the model ``meta`` describes: a code store, or batched code
        maps [B, H, W, K] in memory. Counted ``batch_size`` images at a time: memory holds a batch and the counts.
        ``levels_given_atoms`` False: one level table a slot, as version 5 coded them (what the tables per atom
        save is measured against it)."""
        from .code_store import code_batches  # here: coding files needs no LMDB

        num_atoms, coef_levels, stage_atoms = meta.num_atoms, meta.coef_levels, meta.stage_atoms
        entries = stage_atoms or num_atoms
        atoms, levels, counts = None, None, None
        for batch in code_batches(maps, batch_size):
            slots = batch[0].atoms.shape[-1]
            if atoms is None:
                atoms = [torch.zeros(slots, entries, dtype=torch.long) for _ in batch]
                levels = [torch.zeros(slots, entries * coef_levels, dtype=torch.long) for _ in batch]
                counts = [torch.zeros(slots + 1, dtype=torch.long) for _ in batch]
            for index, codes in enumerate(batch):
                present = codes.present
                for slot in range(slots):
                    entry = codes.atoms[..., slot][present[..., slot]].long() - slot * stage_atoms
                    atoms[index][slot] += torch.bincount(entry, minlength=entries)
                    levels[index][slot] += torch.bincount(entry * coef_levels + codes.levels[..., slot][
                        present[..., slot]].long(), minlength=entries * coef_levels)
                counts[index] += torch.bincount(present.sum(-1).reshape(-1), minlength=slots + 1)
        if atoms is None:
            raise ValueError("no codes to fit a frequency model to")
        return cls(num_atoms, coef_levels, slots, meta.variable_count, meta.model_fingerprint,
                   [np.stack([_normalised(row) for row in table]) for table in atoms],
                   [np.stack([_levels_given_atoms(row.reshape(entries, coef_levels)) if levels_given_atoms
                              else _normalised(row.reshape(entries, coef_levels).sum(0)) for row in table])
                    for table in levels],
                   [_normalised(t) for t in counts], stage_atoms)

    def save(self, path: str | Path) -> None:
        save_payload(path, {"format": MODEL_FORMAT, "version": MODEL_VERSION, **self._tables()})

    @classmethod
    def load(cls, path: str | Path) -> FrequencyModel:
        """A frequency model saved by ``save`` (``load_frequencies`` also reads per-quality ones)."""
        model = load_frequencies(path)
        if not isinstance(model, cls):
            raise CheckpointError(f"{path} holds frequency tables per quality, not one frequency model")
        return model

    def _tables(self) -> dict:
        return {"num_atoms": self.num_atoms, "coef_levels": self.coef_levels, "slots": self.slots,
                "stage_atoms": self.stage_atoms, "variable_count": self.variable_count, "fingerprint": self.fingerprint,
                **{part: [torch.from_numpy(a) for a in getattr(self, part)] for part in ("atoms", "levels", "counts")}}

    @classmethod
    def _from_tables(cls, payload: dict) -> FrequencyModel:
        return cls(int(payload["num_atoms"]), int(payload["coef_levels"]), int(payload["slots"]),
                   bool(payload["variable_count"]), str(payload["fingerprint"]),
                   *([t.numpy() for t in payload[key]] for key in ("atoms", "levels", "counts")),
                   int(payload["stage_atoms"]))

    def encode(self, maps: tuple[Codes, ...]) -> bytes:
        """One image's code maps ([H, W, q] each, canonical order, q <= K slots) -> the ANS-coded bytes."""
        coder = constriction.stream.stack.AnsCoder()
        for symbols, probabilities in self._pushes(maps):
            if probabilities.ndim == 2:  # a table per symbol
                coder.encode_reverse(symbols.astype(np.int32), _FAMILY, probabilities)
            elif len(symbols):
                coder.encode_reverse(symbols.astype(np.int32), constriction.stream.model.Categorical(
                    probabilities, perfect=False))
        return coder.get_compressed().astype("<u4").tobytes()

    def bits(self, maps: tuple[Codes, ...]) -> float:
        """The information content of one image's code maps under this model, -sum log2 p, in bits: what
        ``encode`` spends less the ANS coder's few bytes of rounding (the factorised baseline of the priors)."""
        total = 0.0
        for symbols, probabilities in self._pushes(maps):
            picked = probabilities[np.arange(len(symbols)), symbols] if probabilities.ndim == 2 else probabilities[symbols]
            total -= float(np.log2(picked).sum())
        return total

    def _pushes(self, maps: tuple[Codes, ...]) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        """(symbols, probabilities) in the order the ANS stack takes them, the reverse of the decoder's:
        probabilities [n] for one table, [n, N] for a table per symbol."""
        cut = self.map_slots(self.quality_of(maps))
        for index in reversed(range(len(maps))):
            slots, positions = cut[index], maps[index].atoms.shape[0] * maps[index].atoms.shape[1]
            atoms = maps[index].atoms.reshape(positions, slots).cpu().numpy().astype(np.int64)
            levels = maps[index].levels.reshape(positions, slots).cpu().numpy().astype(np.int64)
            count = (atoms != EMPTY).sum(axis=1)
            present = atoms != EMPTY
            if self.coef_levels > 1:
                for slot in reversed(range(slots)):
                    yield levels[present[:, slot], slot], self._level_table(index, slot, atoms[present[:, slot], slot])
            for slot in reversed(range(slots)):
                if self.stage_atoms:  # one table for every position
                    entries = atoms[count > slot, slot] - slot * self.stage_atoms
                    if not ((entries >= 0) & (entries < self.stage_atoms)).all():
                        raise ValueError(f"slot {slot} holds atoms outside rank {slot}'s entries")
                    yield entries, self.atoms[index][slot]
                    continue
                rows = np.nonzero(count > slot)[0]
                previous = atoms[rows, slot - 1] if slot else np.full(len(rows), -1)
                for start in reversed(range(0, len(rows), _ROWS)):
                    part = slice(start, start + _ROWS)
                    yield atoms[rows[part], slot], self._atom_table(index, previous[part], count[rows[part]], slot,
                                                                    slots)
            if self.variable_count:
                yield count, self.counts[index]

    def encode_many(self, images: list[tuple[Codes, ...]]) -> list[bytes | Exception]:
        """``encode`` of each image, or its error (the frequencies code an image alone as fast as in a batch)."""
        return [or_error(self.encode, maps) for maps in images]

    def decode_many(self, payloads: list[bytes], map_sizes: list[list[tuple[int, int]]],
                    qualities: list[int | None]) -> list[tuple[Codes, ...] | Exception]:
        """``decode`` of each payload, or its error (the ANS decoder's RuntimeError on data no encoder wrote)."""
        return [or_error(self.decode, *args, catch=(ValueError, RuntimeError))
                for args in zip(payloads, map_sizes, qualities)]

    @property
    def staged(self) -> bool:
        """Whether its qualities are prefixes of the slots (a residual VQ's: ``codes.staged_code``)."""
        return staged_code(self.stage_atoms, self.variable_count)

    @property
    def top_quality(self) -> int:
        return quality_range(self.slots, len(self.atoms), self.staged)[-1]

    def map_slots(self, quality: int) -> tuple[int, ...]:
        """The slots each map holds at ``quality`` (``codes.quality_slots``); ValueError for one it does not code."""
        return quality_slots(quality, self.slots, len(self.atoms), self.staged)

    def quality_of(self, maps: tuple[Codes, ...]) -> int:
        """The quality whose cut these code maps are (a staged code's stages in all maps; else K), or ValueError."""
        held = tuple(codes.atoms.shape[-1] for codes in maps)
        quality = sum(held) if self.staged else held[0]
        if len(held) != len(self.atoms) or self.map_slots(quality) != held:
            raise ValueError(f"code maps of {list(held)} slots are no quality this frequency model codes "
                             f"({len(self.atoms)} maps of up to {self.slots} slots)")
        return quality

    def decode(self, payload: bytes, map_sizes: list[tuple[int, int]], quality: int | None = None
               ) -> tuple[Codes, ...]:
        """The inverse of ``encode``, given the code maps' sizes and the quality coded (default: the highest)."""
        if len(map_sizes) != len(self.atoms):
            raise ValueError(f"{len(map_sizes)} code maps to decode; the frequency model codes {len(self.atoms)}")
        cut = self.map_slots(self.top_quality if quality is None else quality)
        if len(payload) % 4:
            raise ValueError("the coded payload is not a whole number of 32-bit words")
        coder = constriction.stream.stack.AnsCoder(np.frombuffer(payload, dtype="<u4").astype(np.uint32))
        maps = []
        for index, (height, width) in enumerate(map_sizes):
            positions, slots = height * width, cut[index]
            if self.variable_count:
                count = _pop(coder, positions, self.counts[index]).astype(np.int64)
            else:
                count = np.full(positions, slots)
            if self.stage_atoms:
                atoms = self._ranks(index, count, slots, lambda table, rows: _pop(coder, rows, table))
            else:
                atoms = self._atoms_by_slot(index, count, slots, lambda table: _decode_atoms(coder, table))
            levels = np.zeros_like(atoms)
            present = atoms != EMPTY
            if self.coef_levels > 1:
                for slot in range(slots):
                    table = self._level_table(index, slot, atoms[present[:, slot], slot])
                    levels[present[:, slot], slot] = (coder.decode(_FAMILY, table) if table.ndim == 2 else
                                                      _pop(coder, int(present[:, slot].sum()), table))
            shape = (height, width, slots)
            maps.append(Codes(torch.from_numpy(atoms.reshape(shape)), torch.from_numpy(levels.reshape(shape))))
        return tuple(maps)

    def sample(self, n: int, map_sizes: list[tuple[int, int]], generator: np.random.Generator) -> tuple[Codes, ...]:
        """``n`` random code maps [n, H, W, K] drawn from the frequencies (the seed's random-code synthesis:
        the decoder's view of typical codes, with no prior)."""
        maps = []
        for index, (height, width) in enumerate(map_sizes):
            positions = n * height * width
            if self.variable_count:
                count = generator.choice(self.slots + 1, size=positions, p=self.counts[index])
            else:
                count = np.full(positions, self.slots)
            if self.stage_atoms:
                atoms = self._ranks(index, count, self.slots, lambda table, rows: generator.choice(len(table), rows,
                                                                                                     p=table))
            else:
                atoms = self._atoms_by_slot(index, count, self.slots, lambda table: _draw_rows(table, generator))
            levels = np.zeros_like(atoms)
            for slot in range(self.slots):
                table = self._level_table(index, slot, np.where(atoms[:, slot] == EMPTY, slot * self.stage_atoms,
                                                                atoms[:, slot]))
                if table.ndim == 1:
                    levels[:, slot] = generator.choice(self.coef_levels, size=positions, p=table)
                else:
                    levels[:, slot] = _draw_rows(table, generator)
            levels *= atoms != EMPTY
            shape = (n, height, width, self.slots)
            maps.append(Codes(torch.from_numpy(atoms.reshape(shape)), torch.from_numpy(levels.reshape(shape))))
        return tuple(maps)

    def _level_table(self, index: int, slot: int, atoms: np.ndarray) -> np.ndarray:
        """The probabilities of the levels of ``slot``'s pairs holding ``atoms``: [n, L], each pair's atom's table
        (a ranked code's atom counted among its rank's entries); [L], the slot's one table, in a version-5 model."""
        table = self.levels[index][slot]
        if table.ndim == 1:
            return table
        return table[atoms - slot * self.stage_atoms]

    def _ranks(self, index: int, count: np.ndarray, slots: int, draw) -> np.ndarray:
        """Atoms [positions, slots] of a ranked code: ``draw(table, rows)`` picks the entry of rank k of each of the
        ``rows`` positions that hold k or more pairs from slot k's table of M (no slot: a map cut away)."""
        atoms = np.full((len(count), slots), EMPTY, dtype=np.int64)
        for slot in range(slots):
            rows = count > slot
            atoms[rows, slot] = draw(self.atoms[index][slot], int(rows.sum())) + slot * self.stage_atoms
        return atoms

    def _atoms_by_slot(self, index: int, count: np.ndarray, slots: int, draw) -> np.ndarray:
        """Atoms [positions, slots], slot by slot in the decoder's order: ``draw(table)`` picks one atom per
        row of a [rows, N] probability table (decoding, or sampling)."""
        atoms = np.full((len(count), slots), EMPTY, dtype=np.int64)
        for slot in range(slots):
            rows = np.nonzero(count > slot)[0]
            previous = atoms[rows, slot - 1] if slot else np.full(len(rows), -1)
            for start in range(0, len(rows), _ROWS):
                part = slice(start, start + _ROWS)
                atoms[rows[part], slot] = draw(self._atom_table(index, previous[part], count[rows[part]], slot,
                                                                slots))
        return atoms

    def _atom_table(self, index: int, previous: np.ndarray, count: np.ndarray, slot: int, slots: int) -> np.ndarray:
        """[rows, N] probabilities of the atom in ``slot`` (of ``slots`` coded): slot ``slot``'s frequencies,
        above the previous atom and leaving room for the ``count - slot - 1`` atoms still to come (all
        ascending)."""
        allowed = atom_window(np.arange(self.num_atoms), previous, last_atom(self.num_atoms, count - slot - 1)[:, None])
        table = self.atoms[index][slot][None, :] * allowed
        return table / table.sum(axis=1, keepdims=True)


@dataclass
class QualityFrequencyModel:
    """The factorised entropy model of a rate-controlled model (``config.rate_controlled``): a ``FrequencyModel`` a
    quality, each fitted to the training codes its encoder makes at that quality's multiplier
    (``codec.quality_frequencies``). Quality 1's codes hold few pairs a position and quality 10's many: one set of
    tables priced each quality at the other's frequencies (in the equal-rate study, quality 1's payload cost 0.565
    bits a pixel with quality 10's tables against 0.210 with its own). Every quality codes all K slots; the file's
    header names the quality, and so the tables its payload was coded with. ``bits`` and ``sample`` (the priors'
    factorised baseline, random codes) use the top quality's: the codes the model's own multiplier makes."""

    models: list[FrequencyModel]  # quality q's at q - 1
    kind = "factorised"
    per_quality = True

    def __post_init__(self) -> None:
        if not self.models or len({m.fingerprint for m in self.models}) != 1:
            raise ValueError("per-quality frequency tables need one model's tables for each of its qualities")

    @property
    def fingerprint(self) -> str:
        return self.models[0].fingerprint

    @property
    def num_atoms(self) -> int:
        return self.models[0].num_atoms

    @property
    def coef_levels(self) -> int:
        return self.models[0].coef_levels

    @property
    def top_quality(self) -> int:
        return len(self.models)

    def tables(self, quality: int | None) -> FrequencyModel:
        """Quality ``quality``'s frequency model (the top quality's for None); ValueError for one it lacks."""
        quality = self.top_quality if quality is None else quality
        if not 1 <= quality <= self.top_quality:
            raise ValueError(f"quality {quality} is not one these tables code: 1 to {self.top_quality}")
        return self.models[quality - 1]

    def encode_many(self, images: list[tuple[Codes, ...]], qualities: list[int]) -> list[bytes | Exception]:
        """Each image's code maps coded with its quality's tables (or why they cannot be)."""
        return [or_error(lambda maps, q: self.tables(q).encode(maps), maps, quality)
                for maps, quality in zip(images, qualities)]

    def decode_many(self, payloads: list[bytes], map_sizes: list[list[tuple[int, int]]],
                    qualities: list[int | None]) -> list[tuple[Codes, ...] | Exception]:
        return [or_error(lambda payload, sizes, q: self.tables(q).decode(payload, sizes), *args,
                         catch=(ValueError, RuntimeError)) for args in zip(payloads, map_sizes, qualities)]

    def bits(self, maps: tuple[Codes, ...]) -> float:
        return self.tables(None).bits(maps)

    def sample(self, n: int, map_sizes: list[tuple[int, int]], generator: np.random.Generator) -> tuple[Codes, ...]:
        return self.tables(None).sample(n, map_sizes, generator)

    def save(self, path: str | Path) -> None:
        save_payload(path, {"format": MODEL_FORMAT, "version": MODEL_VERSION,
                            "qualities": [model._tables() for model in self.models]})


def load_frequencies(path: str | Path) -> FrequencyModel | QualityFrequencyModel:
    """The factorised entropy model saved at ``path``: one set of tables, or a set a quality."""
    payload = load_payload(path, MODEL_FORMAT, READ_VERSIONS)
    try:
        if "qualities" in payload:
            return QualityFrequencyModel([FrequencyModel._from_tables(tables) for tables in payload["qualities"]])
        return FrequencyModel._from_tables(payload)
    except (KeyError, TypeError, AttributeError, ValueError) as error:
        raise CheckpointError(f"{path}: the frequency model in it cannot be rebuilt: {error}") from error


_FAMILY = constriction.stream.model.Categorical(perfect=False)  # probabilities given per symbol


def or_error(function: Callable, *args, catch: type[Exception] | tuple[type[Exception], ...] = ValueError):
    """``function(*args)``, or the error it raised: the ``*_many`` methods give each item its own outcome,
    so one bad image or file does not cost the others."""
    try:
        return function(*args)
    except catch as error:
        return error


def raised(result):
    """One item's ``*_many`` outcome: its value, or its error raised."""
    if isinstance(result, Exception):
        raise result
    return result


def _normalised(counts: torch.Tensor) -> np.ndarray:
    smoothed = counts.double().numpy() + 1.0
    return smoothed / smoothed.sum()


def _draw_rows(table: np.ndarray, generator: np.random.Generator) -> np.ndarray:
    """One symbol drawn from each row of a [rows, n] table (the last where rounding leaves the sum short of 1)."""
    return np.minimum((table.cumsum(axis=1) < generator.random(len(table))[:, None]).sum(axis=1), table.shape[1] - 1)


def _levels_given_atoms(counts: torch.Tensor) -> np.ndarray:
    """[N, L] level probabilities given each atom, from the counts of (atom, level) pairs [N, L]: each atom's counts
    plus ``LEVEL_BACKOFF`` x L pseudo-counts spread as its slot's add-one-smoothed levels, so an atom seen often codes
    its levels at its own frequencies and one seldom seen at its slot's."""
    slot = _normalised(counts.sum(0))
    pseudo = LEVEL_BACKOFF * counts.shape[1]
    counts = counts.double().numpy()
    return (counts + pseudo * slot) / (counts.sum(1, keepdims=True) + pseudo)


def _decode_atoms(coder, table: np.ndarray) -> np.ndarray:
    """One atom per row of a [rows, N] table. A payload forged behind a valid checksum can pick an atom its
    table rules out (the coder's fast quantisation, ``perfect=False``, can leave a zero-probability symbol
    some range when the row also holds probabilities far below its 2^-24 grain): that atom would break the
    ascending order (a silently wrong code), or leave the next slot no room and a 0/0 table for the coder."""
    atoms = coder.decode(_FAMILY, table)
    if not (table[np.arange(len(table)), atoms] > 0).all():
        raise ValueError("the coded payload picks an atom its position may not hold (atoms ascend, with room "
                         "for the pairs still to come)")
    return atoms


def _pop(coder, count: int, probabilities: np.ndarray) -> np.ndarray:
    if not count:
        return np.zeros(0, dtype=np.int64)
    return coder.decode(constriction.stream.model.Categorical(probabilities, perfect=False), count)
