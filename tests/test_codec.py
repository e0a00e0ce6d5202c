import random
import zlib

import numpy as np
import pytest
import torch

from sparse_vqvae.code_store import StoreMetadata
from sparse_vqvae.codec import COLOUR_STEP, Codec, CodecError, bits_per_pixel, colour_offsets, payload_size, read_codes
from sparse_vqvae.config import TrainConfig
from sparse_vqvae.entropy_coding import FrequencyModel
from sparse_vqvae.rate_distortion import sparse_vqvae_point
from sparse_vqvae.train import train

from .tiny import SELECTION_FNS, Images, tiny_config, tiny_images


def trained(selection_fn: str, levels: int = 2):
    images = tiny_images(16, 16, seed=1)
    model, _ = train(tiny_config(selection_fn, maps=levels), TrainConfig(steps=3, batch_size=8), Images(images),
                     progress=False)
    model.eval()
    with torch.no_grad():
        maps = model.encode(images)[1]
    return Codec(model, FrequencyModel.fit(maps, metadata(model, maps)))


def metadata(model, maps) -> StoreMetadata:
    """What a code store of these maps would record of the model."""
    return StoreMetadata.for_model(model, [list(codes.atoms.shape[1:3]) for codes in maps])


@pytest.fixture(scope="module", params=SELECTION_FNS)
def codec(request):
    return trained(request.param)


@pytest.mark.parametrize("size", [(16, 16), (21, 13), (40, 24)])
def test_codes_survive_the_file_exactly_and_decode_to_the_reconstruction(codec, size):
    model, entropy = codec.model, codec.entropy
    image = tiny_images(1, 48, seed=5)[0, :, : size[0], : size[1]]
    data = codec.compress(image)
    (height, width), maps = read_codes(data, entropy)
    assert (height, width) == size
    stride = model.config.stride
    padded = torch.nn.functional.pad(image[None], (0, -size[1] % stride, 0, -size[0] % stride), mode="replicate")
    with torch.no_grad():
        _, expected, _, _ = model.encode(padded)
        reference = model(padded).reconstruction[0, :, : size[0], : size[1]].clamp(-1, 1)
    assert all(got.equal(want[0]) for got, want in zip(maps, expected))  # lossless over the codes
    assert torch.equal(codec.decompress(data), (reference + colour_offsets(data)[:, None, None]).clamp(-1, 1))
    shift = (image.mean(dim=(1, 2)) - reference.mean(dim=(1, 2))) * 127.5  # levels of 255
    assert torch.allclose(colour_offsets(data) * 127.5, (shift / COLOUR_STEP).round() * COLOUR_STEP, atol=1e-5)
    assert bits_per_pixel(data, *size) == 8 * len(data) / (size[0] * size[1])


def test_one_level_models_round_trip_too():
    codec = trained("omp", levels=1)
    image = tiny_images(1, 16, seed=7)[0]
    (_, _), maps = read_codes(codec.compress(image), codec.entropy)
    assert len(maps) == 1


def test_the_frequency_model_saves_and_loads(codec, tmp_path):
    codec.entropy.save(tmp_path / "codec.pt")
    loaded = Codec(codec.model, FrequencyModel.load(tmp_path / "codec.pt"))
    image = tiny_images(1, 16, seed=3)[0]
    assert loaded.compress(image) == codec.compress(image)


def test_header_checks_say_what_is_wrong(codec):
    data = codec.compress(tiny_images(1, 16, seed=2)[0])
    with pytest.raises(CodecError, match="no SVQC magic"):
        codec.decompress(b"PNG" + data[3:])
    with pytest.raises(CodecError, match="version 10"):
        codec.decompress(data[:4] + b"\x0a" + data[5:])
    with pytest.raises(CodecError, match="checksum"):
        codec.decompress(data[:-5])
    other = trained("omp" if codec.model.config.selection_fn != "omp" else "vanilla")
    with pytest.raises(CodecError, match="compressed with model"):
        other.decompress(data)
    with pytest.raises(CodecError, match="fitted to the codes of model"):
        Codec(other.model, codec.entropy)


def test_mutated_truncated_and_random_files_fail_cleanly(codec):
    data = codec.compress(tiny_images(1, 24, seed=4)[0, :, :24, :16])
    rng = random.Random(0)
    for trial in range(300):  # bounded: stops by itself
        kind = trial % 3
        if kind == 0:
            mutated = bytearray(data)
            for _ in range(rng.randint(1, 4)):
                mutated[rng.randrange(len(mutated))] ^= rng.randint(1, 255)
        elif kind == 1:
            mutated = data[: rng.randrange(len(data))]
        else:
            mutated = data[:4] + bytes(rng.randrange(256) for _ in range(rng.randint(0, 3 * len(data))))
        with pytest.raises(CodecError):
            codec.decompress(bytes(mutated))


def test_quality_cuts_a_residual_vq_code_to_its_first_stages():
    images = tiny_images(16, 16, seed=1)
    model, _ = train(tiny_config("rvq", maps=1, stages=4, stage_dropout=True), TrainConfig(steps=3, batch_size=8),
                     Images(images), progress=False)
    model.eval()
    with torch.no_grad():
        maps = model.encode(images)[1]
    codec = Codec(model, FrequencyModel.fit(maps, metadata(model, maps)))
    assert list(codec.qualities) == [1, 2, 3, 4]
    image = tiny_images(1, 24, seed=7)[0]
    with torch.no_grad():
        full = model.encode(image[None])[1][0]
    sizes = []
    for quality in codec.qualities:
        data = codec.compress(image, quality)
        _, (codes,) = read_codes(data, codec.entropy)
        assert codes.atoms.shape[-1] == quality and torch.equal(codes.atoms, full.atoms[0, ..., :quality])
        expected = model.decode_codes((type(codes)(codes.atoms[None], codes.levels[None]),))[0].clamp(-1, 1)
        assert torch.equal(codec.decompress(data), (expected + colour_offsets(data)[:, None, None]).clamp(-1, 1))
        sizes.append(len(data))
    assert sizes == sorted(sizes) and sizes[0] < sizes[-1]
    assert codec.compress(image) == codec.compress(image, 4)  # the default is the highest quality
    for quality in (0, 5):
        with pytest.raises(CodecError, match=f"quality {quality} is not one this model codes: 1 to 4"):
            codec.compress(image, quality)


def test_a_residual_vqs_slot_is_coded_among_its_stage_only():
    """One table of M entries a slot (not K*M, not a table a position), fitted to that stage's codes;
    codes whose slot holds another stage's atom are refused, not coded."""
    images = tiny_images(16, 16, seed=1)
    model, _ = train(tiny_config("rvq", maps=1, stages=3), TrainConfig(steps=2, batch_size=8), Images(images),
                     progress=False)
    with torch.no_grad():
        maps = model.eval().encode(images)[1]
    entropy = FrequencyModel.fit(maps, metadata(model, maps))
    m = model.quantizers[0].num_atoms
    assert entropy.stage_atoms == m and entropy.atoms[0].shape == (3, m)
    for slot in range(3):
        counts = torch.bincount(maps[0].atoms[..., slot].reshape(-1) - slot * m, minlength=m).double() + 1
        assert np.allclose(entropy.atoms[0][slot], (counts / counts.sum()).numpy())
    one = tuple(type(codes)(codes.atoms[0], codes.levels[0]) for codes in maps)
    decoded = entropy.decode(entropy.encode(one), [tuple(one[0].atoms.shape[:2])])
    assert torch.equal(decoded[0].atoms, one[0].atoms)
    swapped = one[0].atoms.clone()
    swapped[..., 1] = swapped[..., 0]
    with pytest.raises(ValueError, match="slot 1 holds atoms outside rank 1"):
        entropy.encode((type(one[0])(swapped, one[0].levels),))


def test_a_quantised_pursuits_pairs_are_coded_by_rank():
    """A qmp code is ranked: slot k among rank k's N atoms and its level from slot k's own table, the count first;
    the codes survive; a code whose slot holds another rank's atom is refused."""
    images = tiny_images(16, 16, seed=1)
    model, _ = train(tiny_config("qmp", maps=1, n_nonzero=3), TrainConfig(steps=2, batch_size=8), Images(images),
                     progress=False)
    with torch.no_grad():
        maps = model.eval().encode(images)[1]
    entropy, quantizer = FrequencyModel.fit(maps, metadata(model, maps)), model.quantizers[0]
    n, values = quantizer.num_atoms, 2 * quantizer.magnitudes
    assert entropy.variable_count and entropy.stage_atoms == n and entropy.atoms[0].shape == (3, n)
    assert entropy.levels[0].shape == (3, n, 3 * values)  # a level table a rank and atom
    for slot in range(3):  # only rank `slot`'s level symbols are seen there: the others hold smoothing alone
        picked = maps[0].atoms[..., slot][maps[0].present[..., slot]]
        atom, seen = torch.unique(picked - slot * n, return_counts=True)
        table = entropy.levels[0][slot][int(atom[seen.argmax()])]  # the atom picked most in this rank
        assert table[slot * values : (slot + 1) * values].sum() > 0.5
    one = tuple(type(codes)(codes.atoms[0], codes.levels[0]) for codes in maps)
    assert one[0].present[..., 1].any()  # a second rank to code
    decoded = entropy.decode(entropy.encode(one), [tuple(one[0].atoms.shape[:2])])
    assert torch.equal(decoded[0].atoms, one[0].atoms) and torch.equal(decoded[0].levels, one[0].levels)
    swapped = one[0].atoms.clone()
    swapped[..., 1] = torch.where(swapped[..., 1] == -1, -1, swapped[..., 0])
    with pytest.raises(ValueError, match="slot 1 holds atoms outside rank 1"):
        entropy.encode((type(one[0])(swapped, one[0].levels),))


@pytest.mark.parametrize("codec", [name for name in SELECTION_FNS if name != "rvq"], indirect=True)
def test_other_quantizers_have_one_quality(codec):
    """Only a residual VQ has a quality per stage (tested above)."""
    slots = codec.model.quantizers[0].slots
    assert list(codec.qualities) == [slots]
    image = tiny_images(1, 16, seed=2)[0]
    assert codec.compress(image, slots) == codec.compress(image)
    if slots > 1:
        with pytest.raises(CodecError, match="is not one this model codes"):
            codec.compress(image, 1)


def test_the_payload_is_the_file_less_its_header_and_checksums():
    codec = trained("omp")
    data = codec.compress(tiny_images(1, 16, seed=4)[0])
    assert payload_size(data) == len(data) - 43  # two maps: a 23-byte header, 4 a map, length, CRCs
    point = sparse_vqvae_point(codec, [tiny_images(1, 16, seed=4)[0]], progress=False)
    assert point["payload_bpp"] == pytest.approx(point["bpp"] - 8 * 43 / 256)
    with pytest.raises(CodecError, match="truncated or corrupted"):
        payload_size(data[:-1])
    forged = bytearray(data)
    forged[4 + 1 + 1 + 8 + 2 + 2] = 200  # 200 maps' sizes: more than the file holds
    forged[-4:] = zlib.crc32(bytes(forged[:-4])).to_bytes(4, "little")
    with pytest.raises(CodecError, match="too short for its header"):
        payload_size(bytes(forged))
