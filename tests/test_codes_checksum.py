"""A decoder whose entropy model gives other probabilities than the encoder's (a prior evaluated on
another machine kind) must fail with a clear error, never return other codes."""

import zlib

import numpy as np
import pytest

from sparse_vqvae.codec import CodecError, read_codes, write_codes

from .test_golden_formats import fixed_frequency_model, fixed_maps


def test_a_desynchronised_decoder_is_an_error_not_a_wrong_image():
    data = write_codes(fixed_maps(), fixed_frequency_model(), 16, 32)
    rng = np.random.default_rng(0)
    wrong = 0
    for _ in range(50):
        other = fixed_frequency_model()  # the same model, computed a little differently
        other.atoms = [a * rng.uniform(0.5, 1.5, a.shape) for a in other.atoms]
        other.atoms = [a / a.sum() for a in other.atoms]
        try:
            _, maps = read_codes(data, other)
        except CodecError as error:
            wrong += 1
            assert "checksum" in str(error) or "cannot be decoded" in str(error)
            continue
        assert all(got.equal(want) for got, want in zip(maps, fixed_maps()))  # decoded right, or an error
    assert wrong > 25


def test_the_codes_checksum_is_checked():
    data = bytearray(write_codes(fixed_maps(), fixed_frequency_model(), 16, 32))
    offset = 4 + 1 + 1 + 8 + 2 + 2 + 1 + 1 + 3 + 2 * 4 + 4  # the codes' CRC, after the payload length
    data[offset] ^= 1
    data[-4:] = zlib.crc32(bytes(data[:-4])).to_bytes(4, "little")  # a consistent file CRC
    with pytest.raises(CodecError, match="checksum"):
        read_codes(bytes(data), fixed_frequency_model())


def test_map_sizes_that_do_not_fit_the_image_are_refused_before_decoding():
    expected = lambda height, width: [(2, 2), (2, 4)]  # noqa: E731  (what a model would make of 16x32)
    data = write_codes(fixed_maps(), fixed_frequency_model(), 16, 32)
    assert read_codes(data, fixed_frequency_model(), expected)[0] == (16, 32)
    forged = bytearray(data)
    forged[4 + 1 + 1 + 8 + 2 + 2 + 1 + 1 + 3: 4 + 1 + 1 + 8 + 2 + 2 + 1 + 1 + 3 + 4] = (65535).to_bytes(2, "little") * 2  # top map
    forged[-4:] = zlib.crc32(bytes(forged[:-4])).to_bytes(4, "little")
    with pytest.raises(CodecError, match="do not fit a 16x32 image"):
        read_codes(bytes(forged), fixed_frequency_model(), expected)


def test_a_header_that_names_more_code_maps_than_the_file_holds_is_refused():
    data = bytearray(write_codes(fixed_maps(), fixed_frequency_model(), 16, 32))
    data[4 + 1 + 1 + 8 + 2 + 2] = 200  # code maps: 200 sizes would run past the end of the file
    data[-4:] = zlib.crc32(bytes(data[:-4])).to_bytes(4, "little")
    with pytest.raises(CodecError, match="the header names 200 code maps, and the file is too short"):
        read_codes(bytes(data), fixed_frequency_model())


@pytest.mark.parametrize("field, offset", [("height", 14), ("width", 16), ("slots coded", 19), ("colour offset", 21)])
def test_a_forged_header_is_an_error_not_a_wrong_image(field, offset):
    """Header fields the payload does not check - the image size, the quality, the colour offsets -
    altered with the file CRC recomputed: the content checksum catches them."""
    data = bytearray(write_codes(fixed_maps(), fixed_frequency_model(), 16, 32))
    data[offset] ^= 1
    data[-4:] = zlib.crc32(bytes(data[:-4])).to_bytes(4, "little")
    with pytest.raises(CodecError):
        read_codes(bytes(data), fixed_frequency_model())
