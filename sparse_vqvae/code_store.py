"""A versioned LMDB store of extracted codes, and the Dataset that reads it for prior training.

Layout: one LMDB environment (a folder). Key ``meta`` holds JSON metadata (format version,
selection_fn, slots K, num_atoms, coef_levels, the code-map sizes, the model fingerprint, whether
pair counts vary, the record count); keys ``00000000``... hold one image each: its index, then per code map (top, then
bottom) the atom indices as int16 and the coefficient levels as uint8, [H, W, K] each. Codes
are stored compactly, never as dense float maps, and read so: ``CodeStore.batch`` gives the records of
any rows collated in those widths (a model widens them on its device), so training and evaluation hold
a batch, not the store.

Writing goes to ``<path>.tmp`` and is renamed to ``<path>`` only when complete, so a crash never
leaves a half store under the final name; ``manifest.json`` records the size the LMDB file must
have. The map size starts small and doubles when full.
"""

from __future__ import annotations

import json
import shutil
import struct
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Iterator, Sequence, Union

import lmdb
import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset
from tqdm.auto import tqdm

from .atomic import check_replaceable
from .codes import Codes, packed
from .config import ExtractConfig, stage_atoms
from .errors import CodeStoreError
from .rate_control import encode_ladder

if TYPE_CHECKING:
    from .vqvae import VQVAE2

FORMAT_VERSION = 3  # 3: the metadata says whether pair counts vary (a rate-controlled residual VQ's do)
STORE_FILES = ("data.mdb", "lock.mdb", "manifest.json")  # what a store folder holds (lock.mdb: older writers)
_META_KEY = b"meta"
_INDEX = struct.Struct("<I")
_INITIAL_MAP_SIZE = 16 << 20
_MANIFEST = "manifest.json"


@dataclass(frozen=True)
class StoreMetadata:
    format_version: int
    selection_fn: str
    slots: int  # K: pairs per position
    num_atoms: int  # the atom ids a code may hold (a residual VQ's stages stacked: quantizer.code_atoms)
    coef_levels: int
    map_sizes: list  # [[H, W], ...] per code map, top first
    model_fingerprint: str
    variable_count: bool  # a position holds 0..K pairs (empty slots last), or always K: ``config.codes_vary``
    count: int = 0

    @classmethod
    def for_model(cls, model: VQVAE2, map_sizes: list) -> StoreMetadata:
        quantizer = model.quantizers[0]
        if quantizer.code_atoms > 32767 or quantizer.coef_levels > 256:  # stored as int16 atoms and uint8 levels
            raise CodeStoreError(f"this store format holds at most 32767 atoms and 256 levels; the model has "
                                 f"{quantizer.code_atoms} atoms and {quantizer.coef_levels} levels")
        return cls(FORMAT_VERSION, model.config.selection_fn, quantizer.slots, quantizer.code_atoms,
                   quantizer.coef_levels, map_sizes, model.fingerprint(), model.config.codes_vary)

    @property
    def stage_atoms(self) -> int:
        """Entries a stage where slot k holds stage k's atoms (a residual VQ), else 0: ``config.stage_atoms``."""
        return stage_atoms(self.selection_fn, self.num_atoms, self.slots)

    @property
    def record_size(self) -> int:
        cells = sum(h * w for h, w in self.map_sizes) * self.slots
        return _INDEX.size + cells * 3  # int16 atom + uint8 level per pair


def _pack_maps(maps: tuple[Codes, ...]) -> bytes:
    """One image's code maps [H, W, K] as a record holds them after its index."""
    return b"".join(packed(codes) for codes in maps)


def _encode(index: int, maps: tuple[Codes, ...]) -> bytes:
    return _INDEX.pack(index) + _pack_maps(maps)


def _decode_records(records: np.ndarray, meta: StoreMetadata) -> tuple[np.ndarray, tuple[Codes, ...]]:
    """Records [B, record_size] (uint8) -> their indices [B] and code maps [B, H, W, K] in the stored widths (int16
    atoms, uint8 levels): one copy a map."""
    indices = records[:, : _INDEX.size].copy().view("<u4")[:, 0]
    maps, offset = [], _INDEX.size
    for h, w in meta.map_sizes:
        n = h * w * meta.slots
        atoms = records[:, offset : offset + 2 * n].copy().view("<i2").astype(np.int16, copy=False)
        levels = records[:, offset + 2 * n : offset + 3 * n].copy()
        offset += 3 * n
        shape = (len(records), h, w, meta.slots)
        maps.append(Codes(torch.from_numpy(atoms.reshape(shape)), torch.from_numpy(levels.reshape(shape))))
    return indices, tuple(maps)


def _decode(blob: bytes, meta: StoreMetadata) -> tuple[int, tuple[Codes, ...]]:
    """One record -> its index and its code maps [H, W, K], widened to int64."""
    if len(blob) != meta.record_size:
        raise CodeStoreError(f"a code record has {len(blob)} bytes, expected {meta.record_size}: the store is corrupt")
    indices, maps = _decode_records(np.frombuffer(blob, dtype=np.uint8).reshape(1, -1), meta)
    return int(indices[0]), tuple(Codes(codes.atoms[0].long(), codes.levels[0].long()) for codes in maps)


class _Writer:
    """Puts records into an LMDB environment, doubling its map size whenever it fills."""

    def __init__(self, path: Path) -> None:
        # No lock file: one writer, and a lock.mdb would hold this process's state (the store's hash would vary).
        self.env = lmdb.open(str(path), map_size=_INITIAL_MAP_SIZE, subdir=True, lock=False)

    def put_many(self, items: list[tuple[bytes, bytes]]) -> None:
        while True:
            try:
                with self.env.begin(write=True) as txn:
                    for key, value in items:
                        txn.put(key, value)
                return
            except lmdb.MapFullError:
                self.env.set_mapsize(self.env.info()["map_size"] * 2)

    def close(self) -> None:
        self.env.sync()
        self.env.close()


def check_store_path(path: str | Path) -> None:
    """Fail if ``path`` or its scratch ``<name>.tmp`` holds anything but a code store: extraction
    replaces both, and must never delete a folder of the user's."""
    path = Path(path)
    for folder in (path, path.with_name(path.name + ".tmp")):
        check_replaceable(folder, "code store", files=STORE_FILES)


@torch.no_grad()
def encode_images(model: VQVAE2, images: torch.Tensor, first: int) -> tuple[list[bytes], list[list[int]]]:
    """A batch of images [B, 3, H, W], store indices ``first``.., through the encoder: each image's code maps as the
    store keeps them (``packed``, top first), and the maps' sizes [[H, W], ...]. A rate-controlled model codes each
    image at its quality of the ladder (``rate_control.encode_ladder``)."""
    if model.config.rate_controlled:
        maps = encode_ladder(model, images, first)
    else:
        _, maps, _, _ = model.encode(images)
    maps = [codes.to("cpu") for codes in maps]
    records = [_pack_maps(tuple(codes[i] for codes in maps)) for i in range(images.shape[0])]
    return records, [list(codes.atoms.shape[1:3]) for codes in maps]


class StoreWriter:
    """Writes the store of ``model``'s codes at ``path``: ``write`` the images' records in index order (one
    transaction a call), then ``finish``; until then it is ``<path>.tmp``, so a crash never leaves a half store
    under the final name. One writer: LMDB has one (a distributed extraction writes from its driver)."""

    def __init__(self, model: VQVAE2, path: str | Path) -> None:
        self.model, self.path = model, Path(path)
        check_store_path(self.path)
        self.tmp = self.path.with_name(self.path.name + ".tmp")
        shutil.rmtree(self.tmp, ignore_errors=True)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.meta: StoreMetadata | None = None
        self.count = 0
        self._writer = _Writer(self.tmp)

    def write(self, records: list[bytes], map_sizes: list[list[int]]) -> None:
        """The next images' code maps (``encode_images``' records and sizes)."""
        if self.meta is None:
            self.meta = StoreMetadata.for_model(self.model, map_sizes)
        self._writer.put_many([(_key(self.count + i), _INDEX.pack(self.count + i) + record)
                               for i, record in enumerate(records)])
        self.count += len(records)

    def finish(self) -> int:
        """Write the metadata, close, and move the store to its name; returns the number of images."""
        try:
            if self.meta is None:
                raise CodeStoreError("the dataset is empty: no codes to store")
            meta = StoreMetadata(**{**asdict(self.meta), "count": self.count})
            self._writer.put_many([(_META_KEY, json.dumps(asdict(meta)).encode())])
        finally:
            self._writer.close()
        # LMDB maps its file into memory: reading a truncated one kills the process (SIGBUS), so the
        # size it must have is recorded beside it and checked before it is ever opened.
        manifest = {"format_version": FORMAT_VERSION, "data_bytes": (self.tmp / "data.mdb").stat().st_size}
        (self.tmp / _MANIFEST).write_text(json.dumps(manifest))
        if self.path.exists():
            shutil.rmtree(self.path)
        self.tmp.rename(self.path)
        return self.count

    def close(self) -> None:
        """Give up (after an error): the scratch store stays under ``<path>.tmp`` until the next extraction."""
        self._writer.close()


def extract_codes(model: VQVAE2, dataset: Dataset, path: str | Path, batch_size: int = ExtractConfig().batch_size,
                  progress: bool = True) -> dict[str, float]:
    """Encode every image of ``dataset`` and store its codes at ``path``; returns count and images/s."""
    device = next(model.parameters()).device
    model.eval()
    writer = StoreWriter(model, path)
    start = time.perf_counter()
    try:
        loader = DataLoader(dataset, batch_size=batch_size, shuffle=False)
        for images in tqdm(loader, desc="extract codes", disable=not progress):
            writer.write(*encode_images(model, images.to(device), writer.count))
    except BaseException:
        writer.close()
        raise
    count = writer.finish()
    seconds = time.perf_counter() - start
    return {"images": count, "images_per_s": count / seconds if seconds > 0 else float("inf")}


def _key(index: int) -> bytes:
    return b"%08d" % index


Rows = Union[Sequence[int], slice, torch.Tensor]  # which records: indices, a slice, a 1-D index tensor


class CodeStore(Dataset):
    """The codes of one extraction: item i is ``(index, (top Codes, bottom Codes))`` of [H, W, K] maps."""

    def __init__(self, path: str | Path, expected_fingerprint: str | None = None) -> None:
        self.path = Path(path)
        data = self.path / "data.mdb"
        if not data.is_file():
            raise CodeStoreError(f"no code store at {self.path} (expected an LMDB folder with data.mdb)")
        try:
            expected_bytes = json.loads((self.path / _MANIFEST).read_text())["data_bytes"]
        except (OSError, ValueError, KeyError, TypeError) as error:
            raise CodeStoreError(f"{self.path} has no readable {_MANIFEST}: the extraction did not finish") from error
        if data.stat().st_size != expected_bytes:
            raise CodeStoreError(f"{data} has {data.stat().st_size} bytes but the extraction wrote {expected_bytes}: "
                                 "the store is truncated or was modified")
        try:
            self.env = lmdb.open(str(self.path), readonly=True, lock=False, readahead=False, subdir=True)
            with self.env.begin() as txn:
                raw = txn.get(_META_KEY)
                entries = txn.stat()["entries"]
        except lmdb.Error as error:
            raise CodeStoreError(f"{self.path} is not a readable code store (truncated or corrupt?): {error}") from error
        if raw is None:
            raise CodeStoreError(f"{self.path} has no metadata record: the extraction did not finish")
        try:
            fields = json.loads(raw)
            version = fields["format_version"]
        except (ValueError, TypeError, KeyError) as error:
            raise CodeStoreError(f"{self.path} has unreadable metadata: {error!r}") from error
        if version != FORMAT_VERSION:  # before the fields: another format's need not fit this one's
            raise CodeStoreError(f"{self.path} is code-store format {version}; this code reads {FORMAT_VERSION}: "
                                 "extract the codes again")
        try:
            meta = StoreMetadata(**fields)
        except TypeError as error:
            raise CodeStoreError(f"{self.path} has unreadable metadata: {error}") from error
        if expected_fingerprint is not None and meta.model_fingerprint != expected_fingerprint:
            raise CodeStoreError(f"{self.path} holds codes of model {meta.model_fingerprint}, not of model "
                                 f"{expected_fingerprint}: extract the codes again with this model")
        if entries != meta.count + 1:
            raise CodeStoreError(f"{self.path} holds {entries - 1} records but its metadata promises {meta.count}: "
                                 "the store is incomplete")
        self.meta = meta

    def __len__(self) -> int:
        return self.meta.count

    def close(self) -> None:
        """Release the LMDB environment (a process opens a store's folder once at a time)."""
        self.env.close()

    def __getitem__(self, i: int) -> tuple[int, tuple[Codes, ...]]:
        """Record ``i``: its index and its code maps [H, W, K], widened to int64."""
        maps = self.batch([i])
        return i, tuple(Codes(codes.atoms[0].long(), codes.levels[0].long()) for codes in maps)

    def batch(self, rows: Rows) -> tuple[Codes, ...]:
        """The records ``rows`` (indices in any order, repeats allowed: a sequence, a slice or a 1-D tensor),
        collated per code map (top first) as Codes [B, H, W, K] of the widths the store keeps: int16 atoms,
        uint8 levels. One read transaction; the record bytes are cut into maps with one copy per map."""
        if isinstance(rows, slice):
            rows = range(*rows.indices(len(self)))
        elif isinstance(rows, torch.Tensor):
            rows = rows.tolist()
        size, blobs = self.meta.record_size, []
        with self.env.begin() as txn:
            for i in rows:
                if not 0 <= i < len(self):
                    raise IndexError(i)
                blob = txn.get(_key(i))
                if blob is None:
                    raise CodeStoreError(f"{self.path}: record {i} is missing: the store is corrupt")
                if len(blob) != size:
                    raise CodeStoreError(f"{self.path}: record {i} has {len(blob)} bytes, expected {size}: "
                                         "the store is corrupt")
                blobs.append(blob)
        indices, maps = _decode_records(np.frombuffer(b"".join(blobs), dtype=np.uint8).reshape(len(blobs), size),
                                        self.meta)
        if not np.array_equal(indices, np.asarray(rows, dtype=np.int64)):
            raise CodeStoreError(f"{self.path}: a record holds another index than its key: the store is corrupt")
        return maps


class MapsInMemory:
    """Batched code maps [count, H, W, K] held in memory, read as a store is (``len``, ``batch``)."""

    def __init__(self, maps: Sequence[Codes]) -> None:
        self.maps = tuple(maps)

    def __len__(self) -> int:
        return self.maps[0].atoms.shape[0]

    def batch(self, rows: Rows) -> tuple[Codes, ...]:
        return tuple(codes[rows] for codes in self.maps)


CodeSource = Union[CodeStore, MapsInMemory, Sequence[Codes]]  # a store, or code maps in memory


def code_source(codes: CodeSource) -> CodeStore | MapsInMemory:
    """``codes`` as something with ``len`` and ``batch(rows)``: a store as it is, code maps in memory wrapped."""
    return codes if isinstance(codes, (CodeStore, MapsInMemory)) else MapsInMemory(codes)


def code_batches(codes: CodeSource, batch_size: int) -> Iterator[tuple[Codes, ...]]:
    """The codes in order, ``batch_size`` images at a time (the last batch may be smaller)."""
    source = code_source(codes)
    for start in range(0, len(source), batch_size):
        yield source.batch(slice(start, min(start + batch_size, len(source))))


def collate_codes(items: list[tuple[int, tuple[Codes, ...]]]) -> tuple[torch.Tensor, tuple[Codes, ...]]:
    """DataLoader collate: stack per-image code maps into batched Codes [B, H, W, K]."""
    indices = torch.tensor([index for index, _ in items])
    levels = len(items[0][1])
    maps = tuple(Codes(torch.stack([m[level].atoms for _, m in items]), torch.stack([m[level].levels for _, m in items]))
                 for level in range(levels))
    return indices, maps
