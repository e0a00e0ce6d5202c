"""The compressed file format: one image -> a few bytes of entropy-coded sparse codes -> the image.

Layout (little-endian):

    magic "SVQC" | version u8 | entropy model u8 | model fingerprint (8 bytes) | image height u16
    | width u16 | code maps u8 | quality u8 | colour offsets 3 x i8 | per map: height u16, width u16
    | payload length u32
    | CRC-32 of the header (up to the payload length) and the code maps u32 | payload
    | CRC-32 of everything before it, u32

The payload is the ANS-coded code maps, coded by the entropy model the header names: 0, the
factorised frequencies (``entropy_coding.FrequencyModel``: fast, any image size) or 1, the
PixelSNAIL priors (``prior_coding.PriorEntropyModel``: fewer bits, sequential decoding, the
priors' training size only). Images of any size are padded (edge pixels repeated) to the model's
stride and cropped back. Every check a decoder makes - magic, version, entropy model, model,
sizes, length, checksum - fails with a ``CodecError`` that says which. The content checksum (the
header and the decoded codes) is checked after decoding: an entropy model that computed other
probabilities than the encoder's desynchronises the decoder, and that must be an error, never a
wrong image; and a file whose header was altered and its file CRC recomputed (the size, the
quality, the colour offsets: fields the payload does not check) fails the same way.

Quality (rate control at encode time): a residual-VQ model's codes may be cut to their first q
stages (``codes.quality_range``), in map order - the top map's stages first, then the bottom's - q = 1 the
smallest files; the header's quality tells the decoder q, and so each map's slots
(``codes.quality_slots``). A quantised-pursuit model trained over a range of rate-distortion multipliers takes
qualities 1..10 as multipliers (``quality_lambda``): its encoder stops each position's pairs where they no longer
pay for their bits, and the file codes the pairs it chose with quality q's own frequency tables
(``QualityFrequencyModel``, fitted by ``quality_frequencies``; the header says q) - or, prior-coded or with one
set of tables, as its top quality (the header says K). Models of other quantizers code all their slots, their one
quality (K).

Colour: the encoder decodes its own codes and stores, per channel, the difference between the mean
of the image and of its reconstruction (quarter levels of 255, clipped to +-31.75); the decoder adds
it back. Three bytes keep a photograph's mean colour where it was, whatever the model's bias.

Versions: 3 added the codes' CRC; 4 codes with the priors in one fixed arithmetic (``prior_coding``:
CPU, float64), so prior-coded files made on a GPU decode on a CPU and the other way round; 5 adds
the slots coded (the quality) and per-slot atom frequencies; 6 the colour offsets; 7 codes a
residual VQ's slot among its stage's entries, and its content checksum covers the header too; 8 reads the
header's slot byte as the quality, which for a two-map residual VQ spans both maps' stages; 9 codes the levels
from a table per slot, and a quantised pursuit's codes ranked (slot k among rank k's atoms, ``config.ranked``).
"""

from __future__ import annotations

import struct
import zlib
from dataclasses import dataclass
from functools import partial
from typing import TYPE_CHECKING, Callable

import torch
import torch.nn.functional as F
from torch.utils.data import Dataset, Subset
from tqdm import tqdm

from .codes import Codes, packed, quality_range, quality_slots, validate_codes
from .config import staged
from .entropy_coding import FrequencyModel, QualityFrequencyModel, or_error, raised
from .errors import CodecError
from .prior_coding import PriorEntropyModel
from .rate_control import LAMBDA_QUALITIES, quality_lambda, rate_lambda
from .refinement import refined_codes, unrefinable
from .vqvae import VQVAE2, encode_all

if TYPE_CHECKING:
    from .code_store import CodeSource, StoreMetadata

MAGIC = b"SVQC"
VERSION = 9  # bump on any change of layout or coding (tests/golden pins the bytes)
ENTROPY_MODELS = ("factorised", "prior")  # the header's entropy-model byte indexes this
EntropyModel = FrequencyModel | QualityFrequencyModel | PriorEntropyModel
_HEADER = struct.Struct("<4sBB8sHHBB3b")
COLOUR_STEP = 1 / 4  # the colour offsets' unit, in levels of 255
_MAP = struct.Struct("<HH")
_LENGTH = struct.Struct("<II")  # payload length, CRC-32 of the header and the codes
_CRC = struct.Struct("<I")


def map_sizes(model: VQVAE2, height: int, width: int) -> list[tuple[int, int]]:
    """The code maps' sizes for an image of ``height`` x ``width`` padded to the model's stride."""
    stride = model.config.stride
    padded_h, padded_w = -(-height // stride) * stride, -(-width // stride) * stride
    if model.config.maps == 2:
        return [(padded_h // 8, padded_w // 8), (padded_h // 4, padded_w // 4)]
    return [(padded_h // stride, padded_w // stride)]


def entropy_model_of(data: bytes) -> str:
    """Which entropy model a file was coded with ("factorised" or "prior"), from its checked header."""
    if len(data) < _HEADER.size or data[:4] != MAGIC:
        raise CodecError("not a sparse-vqvae compressed file (no SVQC magic)")
    if len(data) < _HEADER.size + _LENGTH.size + _CRC.size:
        raise CodecError(f"the file is truncated: {len(data)} bytes, shorter than any header")
    _, version, kind, *_ = _HEADER.unpack_from(data)
    if version != VERSION:
        raise CodecError(f"compressed-file version {version}; this code reads version {VERSION}")
    if zlib.crc32(data[: -_CRC.size]) != _CRC.unpack_from(data, len(data) - _CRC.size)[0]:
        raise CodecError("the file is truncated or corrupted: its checksum does not match")
    if kind >= len(ENTROPY_MODELS):
        raise CodecError(f"entropy model {kind} is not one this code knows ({', '.join(ENTROPY_MODELS)})")
    return ENTROPY_MODELS[kind]


@dataclass(frozen=True)
class _Parsed:
    """A file's checked header: what decoding its payload needs and what the content checksum covers."""

    header: bytes
    height: int
    width: int
    sizes: list[tuple[int, int]]
    quality: int
    payload: bytes
    content_crc: int


def _parsed(data: bytes, entropy: EntropyModel, expected_sizes: Callable[[int, int], list] | None) -> _Parsed:
    kind = entropy_model_of(data)
    if kind != entropy.kind:
        raise CodecError(f"the file was coded with the {kind} entropy model, and this codec holds the "
                         f"{entropy.kind} one")
    _, _, _, fingerprint, height, width, count, quality, *_ = _HEADER.unpack_from(data)
    if fingerprint.hex() != entropy.fingerprint:
        raise CodecError(f"the file was compressed with model {fingerprint.hex()}, not with this model "
                         f"({entropy.fingerprint}): decompress it with the model that made it")
    offset = _HEADER.size
    if len(data) < offset + count * _MAP.size + _LENGTH.size + _CRC.size:
        raise CodecError(f"the header names {count} code maps, and the file is too short for their sizes")
    sizes = []
    for _ in range(count):
        sizes.append(_MAP.unpack_from(data, offset))
        offset += _MAP.size
    if expected_sizes is not None and [tuple(size) for size in sizes] != [tuple(e) for e in expected_sizes(height, width)]:
        raise CodecError(f"the file's code maps {[list(size) for size in sizes]} do not fit a {height}x{width} image "
                         f"for this model (expected {[list(e) for e in expected_sizes(height, width)]})")
    length, content_crc = _LENGTH.unpack_from(data, offset)
    header = data[:offset]
    offset += _LENGTH.size
    if offset + length + _CRC.size != len(data):
        raise CodecError(f"the payload should be {length} bytes but the file holds {len(data) - offset - _CRC.size}")
    return _Parsed(header, height, width, [tuple(size) for size in sizes], quality, data[offset : offset + length],
                   content_crc)


def _checked(parsed: _Parsed, decoded: tuple[Codes, ...] | Exception, entropy: EntropyModel) -> tuple[Codes, ...]:
    """The decoded code maps, once they are valid codes and match the file's content checksum."""
    try:
        raised(decoded)
        for codes in decoded:
            validate_codes(codes, entropy.num_atoms, entropy.coef_levels)
    except (ValueError, RuntimeError) as error:  # a payload whose checksum matched by chance
        raise CodecError(f"the coded payload cannot be decoded: {error}") from error
    if content_checksum(parsed.header, decoded) != parsed.content_crc:
        raise CodecError(f"the header or the decoded codes differ from the encoded ones (checksum mismatch): the "
                         f"file was altered, or the {entropy.kind} entropy model computed other probabilities here "
                         "than where the file was made")
    return decoded


def read_codes(data: bytes, entropy: EntropyModel, expected_sizes: Callable[[int, int], list] | None = None,
               ) -> tuple[tuple[int, int], tuple[Codes, ...]]:
    """Check a file and decode its code maps; returns ((height, width), maps [H, W, K]). With
    ``expected_sizes(height, width)`` the header's map sizes are checked before anything is decoded
    (a forged header cannot make the decoder allocate for maps the image does not have)."""
    parsed = _parsed(data, entropy, expected_sizes)
    decoded = entropy.decode_many([parsed.payload], [parsed.sizes], [parsed.quality])[0]
    return (parsed.height, parsed.width), _checked(parsed, decoded, entropy)


def colour_offsets(data: bytes) -> torch.Tensor:
    """A file's colour offsets [3] in the model's range ([-1, 1] spans 255 levels); the file is checked first."""
    entropy_model_of(data)
    return torch.tensor(_HEADER.unpack_from(data)[-3:], dtype=torch.float32) * (COLOUR_STEP / 127.5)


def write_codes(maps: tuple[Codes, ...], entropy: EntropyModel, height: int, width: int,
                colour: tuple[int, int, int] = (0, 0, 0)) -> bytes:
    """The bytes of a file holding one image's code maps ([H, W, K] each) and its colour offsets (in
    ``COLOUR_STEP`` units): the inverse of ``read_codes`` and ``colour_offsets``."""
    return raised(write_many([(maps, height, width, colour)], entropy)[0])


def write_many(images: list[tuple[tuple[Codes, ...], int, int, tuple[int, int, int]]], entropy: EntropyModel,
               quality: int | None = None) -> list[bytes | CodecError]:
    """``write_codes`` of each (maps, height, width, colour), the entropy model coding them together; an
    image it cannot code (a size the priors do not model) gets its ``CodecError``. The header's quality is the cut
    the maps are (``quality_of``), or with per-quality tables ``quality``: the tables they are coded with."""
    files: list[bytes | CodecError] = []
    maps_list = [maps for maps, *_ in images]
    if entropy.per_quality:
        if quality is None:
            raise ValueError("per-quality frequency tables code an image at a quality: none was given")
        payloads = entropy.encode_many(maps_list, [quality] * len(images))
    else:
        payloads = entropy.encode_many(maps_list)
    for (maps, height, width, colour), payload in zip(images, payloads):
        if isinstance(payload, Exception):
            files.append(CodecError(f"cannot code a {height}x{width} image: {payload}"))
            continue
        held = quality if entropy.per_quality else entropy.quality_of(maps)
        body = _HEADER.pack(MAGIC, VERSION, ENTROPY_MODELS.index(entropy.kind), bytes.fromhex(entropy.fingerprint),
                            height, width, len(maps), held, *colour)
        body += b"".join(_MAP.pack(*codes.atoms.shape[:2]) for codes in maps)
        body += _LENGTH.pack(len(payload), content_checksum(body, maps)) + payload
        files.append(body + _CRC.pack(zlib.crc32(body)))
    return files


def qualities(model: VQVAE2) -> range:
    """The qualities ``Codec.compress`` takes: 1 .. maps x K stages of a residual VQ; 1 .. 10 multipliers of a
    rate-controlled model; else only the model's K."""
    if model.config.rate_controlled:
        return range(1, LAMBDA_QUALITIES + 1)
    return quality_range(model.quantizers[0].slots, len(model.quantizers), staged(model.config.selection_fn))


def fit_frequencies(model: VQVAE2, codes: CodeSource, meta: StoreMetadata, images: Dataset
                    ) -> FrequencyModel | QualityFrequencyModel:
    """The codec's factorised entropy model of ``model``: fitted to its training ``codes`` (a code store, or maps in
    memory), a batch at a time; a rate-controlled model's a set per quality, from its training ``images`` encoded at
    each quality's multiplier (``quality_frequencies``)."""
    if model.config.rate_controlled:
        return quality_frequencies(model, images, meta)
    return FrequencyModel.fit(codes, meta)


QUALITY_FIT_IMAGES = 2048  # training images each quality's tables are fitted to (32x32 crops: 655k positions)


@torch.no_grad()
def quality_frequencies(model: VQVAE2, images: Dataset, meta: StoreMetadata, count: int = QUALITY_FIT_IMAGES,
                        batch_size: int = 256, progress: bool = True) -> QualityFrequencyModel:
    """A rate-controlled model's factorised entropy model: its first ``count`` training ``images`` (a dataset of
    image tensors) encoded at each quality's multiplier, and a ``FrequencyModel`` fitted to each quality's codes."""
    model.eval()
    fitted = Subset(images, range(min(count, len(images))))
    models = []
    for quality in tqdm(qualities(model), desc="tables per quality", disable=not progress):
        with rate_lambda(model, quality_lambda(model, quality)):
            maps = tuple(codes.to("cpu") for codes in encode_all(model, fitted, batch_size))
        models.append(FrequencyModel.fit(maps, meta))
    return QualityFrequencyModel(models)


def content_checksum(header: bytes, maps: tuple[Codes, ...]) -> int:
    """CRC-32 of the header (up to the payload length) and the code maps, map after map, in the code
    store's byte form: everything the decoded image depends on."""
    return zlib.crc32(b"".join(packed(codes) for codes in maps), zlib.crc32(header))


def payload_size(data: bytes) -> int:
    """The bytes of a file's entropy-coded payload: the file less its header and checksums (43 bytes for two maps,
    a third of a 32x32 image's bit budget at 1 bpp), from a checked header."""
    entropy_model_of(data)
    offset = _HEADER.size + _HEADER.unpack_from(data)[6] * _MAP.size
    if len(data) < offset + _LENGTH.size:
        raise CodecError("the file is too short for its header")
    return _LENGTH.unpack_from(data, offset)[0]


def bits_per_pixel(data: bytes, height: int, width: int) -> float:
    """The real rate: 8 x file size / pixels."""
    return 8 * len(data) / (height * width)


class Codec:
    """A trained VQ-VAE and an entropy model of its codes, checked once to belong together."""

    def __init__(self, model: VQVAE2, entropy: EntropyModel) -> None:
        if entropy.fingerprint != model.fingerprint():
            raise CodecError(f"the {entropy.kind} entropy model was fitted to the codes of model "
                             f"{entropy.fingerprint}, not of this model ({model.fingerprint()})")
        if entropy.per_quality and list(range(1, entropy.top_quality + 1)) != list(qualities(model)):
            raise CodecError(f"frequency tables for qualities 1 to {entropy.top_quality} do not fit this model, "
                             f"whose qualities are {qualities(model)[0]} to {qualities(model)[-1]}")
        self.model, self.entropy = model.eval(), entropy
        self.device = next(model.parameters()).device

    @property
    def qualities(self) -> range:
        return qualities(self.model)

    def resolved_quality(self, quality: int | None) -> int:
        """``quality``, the highest by default; a ``CodecError`` if this model does not code it."""
        quality = self.qualities[-1] if quality is None else quality
        if quality not in self.qualities:
            raise CodecError(f"quality {quality} is not one this model codes: {self.qualities[0]} to "
                             f"{self.qualities[-1]}")
        return quality

    def compress(self, image: torch.Tensor, quality: int | None = None, effort: int = 0) -> bytes:
        """An image [3, H, W] in [-1, 1] -> the bytes of a compressed file, at ``quality`` (one of
        ``qualities``; default the highest), its code refined by ``effort`` steps (``refinement``; 0: the
        encoder's own code)."""
        return raised(self.compress_many([image], quality, effort)[0])

    def decompress(self, data: bytes) -> torch.Tensor:
        """The bytes of a compressed file -> the image [3, H, W] in [-1, 1]."""
        return raised(self.decompress_many([data])[0])

    def check_effort(self, effort: int) -> None:
        """A ``CodecError`` unless this model's codes can be refined by ``effort`` steps (0 always can)."""
        if not isinstance(effort, int) or effort < 0:
            raise CodecError(f"effort must be a whole number of refinement steps, 0 or more; got {effort!r}")
        refused = unrefinable(self.model) if effort else None
        if refused:
            raise CodecError(f"effort {effort}: {refused}; use effort 0")

    @torch.no_grad()
    def compress_many(self, images: list[torch.Tensor], quality: int | None = None,
                      effort: int = 0) -> list[bytes | CodecError]:
        """``compress`` of each image (or why it cannot be), the entropy model coding them together: the
        priors run over a batch at once, and every file holds the bytes it would alone."""
        quality = self.resolved_quality(quality)
        self.check_effort(effort)
        coded = [or_error(self._codes, image, quality, effort, catch=CodecError) for image in images]
        valid = [row for row, item in enumerate(coded) if not isinstance(item, CodecError)]
        results: list[bytes | CodecError] = list(coded)
        for row, data in zip(valid, write_many([coded[row] for row in valid], self.entropy, quality)):
            results[row] = data
        return results

    @torch.no_grad()
    def decompress_many(self, files: list[bytes]) -> list[torch.Tensor | CodecError]:
        """``decompress`` of each file (or why it cannot be), the entropy model decoding them together."""
        parsed = [or_error(_parsed, data, self.entropy, partial(map_sizes, self.model), catch=CodecError)
                  for data in files]
        valid = [row for row, item in enumerate(parsed) if not isinstance(item, CodecError)]
        decoded = self.entropy.decode_many([parsed[row].payload for row in valid], [parsed[row].sizes for row in valid],
                                           [parsed[row].quality for row in valid])
        results: list[torch.Tensor | CodecError] = list(parsed)
        for row, maps in zip(valid, decoded):
            item = parsed[row]
            try:
                image = self._decode(_checked(item, maps, self.entropy), item.height, item.width)
                results[row] = (image + colour_offsets(files[row])[:, None, None]).clamp(-1, 1)
            except CodecError as error:
                results[row] = error
        return results

    def _codes(self, image: torch.Tensor, quality: int,
               effort: int) -> tuple[tuple[Codes, ...], int, int, tuple[int, int, int]]:
        """An image's code maps at ``quality`` (refined by ``effort`` steps), its size and its colour offsets: all
        of a file but the payload."""
        _, height, width = image.shape
        if not (0 < height < 65536 and 0 < width < 65536):
            raise CodecError(f"image size {height}x{width} is outside what the format holds (1..65535 per side)")
        stride = self.model.config.stride
        padded = F.pad(image[None], (0, -width % stride, 0, -height % stride), mode="replicate")
        slots = self.model.quantizers[0].slots
        if self.model.config.rate_controlled:  # the codes decide their pair counts: every slot is coded
            with rate_lambda(self.model, quality_lambda(self.model, quality)):
                _, maps, _, _ = self.model.encode(padded.to(self.device))
            cut = (slots,) * len(maps)
        else:
            maps = (refined_codes(self.model, padded.to(self.device), quality, effort) if effort
                    else self.model.encode(padded.to(self.device))[1])
            cut = quality_slots(quality, slots, len(maps), staged(self.model.config.selection_fn))
        maps = tuple(Codes(codes.atoms[0, ..., :k], codes.levels[0, ..., :k]).to("cpu") for codes, k in zip(maps, cut))
        decoded = self._decode(maps, height, width)
        shift = (image.mean(dim=(1, 2)) - decoded.mean(dim=(1, 2))) * (127.5 / COLOUR_STEP)
        return maps, height, width, tuple(int(v) for v in shift.round().clamp(-127, 127).tolist())

    def _decode(self, maps: tuple[Codes, ...], height: int, width: int) -> torch.Tensor:
        """One image's code maps -> the model's reconstruction [3, height, width], clamped, on the CPU."""
        image = self.model.decode_codes(tuple(Codes(c.atoms[None], c.levels[None]).to(self.device) for c in maps))
        return image[0, :, :height, :width].clamp(-1, 1).cpu()

