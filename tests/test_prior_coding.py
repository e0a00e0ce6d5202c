"""Entropy coding driven by the PixelSNAIL priors: lossless, as cheap as the prior says, checked."""

import random
import zlib

import pytest
import torch

from sparse_vqvae.code_store import StoreMetadata
from sparse_vqvae.codec import Codec, CodecError, colour_offsets, entropy_model_of, read_codes
from sparse_vqvae.maps import prior_file
from sparse_vqvae.pixelsnail import PixelSNAIL, bits
from sparse_vqvae import prior_coding
from sparse_vqvae.prior_coding import PriorEntropyModel
from sparse_vqvae.prior_train import prior_configs, save_prior, train_prior

from .test_codec import trained
from .tiny import SELECTION_FNS, tiny_images

pytestmark = pytest.mark.slow  # trains PixelSNAIL priors per quantizer; sequential prior coding


def with_priors(codec: Codec, positions: str = "learned", attention_rows: int = 0) -> PriorEntropyModel:
    """Priors over a tiny model's codes (16x16 images), trained a few steps so that they are not uniform."""
    model = codec.model
    with torch.no_grad():
        maps = model.encode(tiny_images(32, 16, seed=1))[1]
    meta = StoreMetadata.for_model(model, [list(m.atoms.shape[1:3]) for m in maps])
    priors = []
    for level, config in enumerate(prior_configs(meta, channels=8, blocks=1, res_per_block=1, dropout=0.0,
                                                 positions=positions, attention_rows=attention_rows)):
        prior = PixelSNAIL(config)
        train_prior(prior, maps, level, steps=5, batch_size=8, progress=False)
        priors.append(prior.eval())
    return PriorEntropyModel(priors, model.fingerprint())


@pytest.fixture(scope="module", params=SELECTION_FNS)
def codecs(request):
    factorised = trained(request.param)
    return factorised, Codec(factorised.model, with_priors(factorised))


def test_codes_survive_exactly_and_cost_what_the_prior_says(codecs):
    factorised, codec = codecs
    image = tiny_images(1, 16, seed=5)[0]
    data = codec.compress(image)
    assert entropy_model_of(data) == "prior"
    (_, _), maps = read_codes(data, codec.entropy)
    with torch.no_grad():
        expected = codec.model.encode(image[None])[1]
        reference = codec.model(image[None]).reconstruction[0].clamp(-1, 1)
    assert all(got.equal(want[0]) for got, want in zip(maps, expected))
    assert torch.equal(codec.decompress(data), (reference + colour_offsets(data)[:, None, None]).clamp(-1, 1))
    priors = codec.entropy.priors
    with torch.no_grad():
        model_bits = float(bits(priors[0].log_prob(expected[0]))) + sum(
            float(bits(prior.log_prob(expected[level], expected[0]))) for level, prior in enumerate(priors) if level)
    payload = codec.entropy.encode(tuple(m[0] for m in expected))
    assert payload in data
    # ANS costs the information content plus its final state and the rounding to 32-bit words (< 64 bits),
    # never less: a file cheaper than -log2 p was coded with another distribution.
    assert -1 <= 8 * len(payload) - model_bits <= 0.002 * model_bits + 64


def test_a_file_needs_the_entropy_model_it_was_coded_with(codecs):
    factorised, codec = codecs
    image = tiny_images(1, 16, seed=6)[0]
    with pytest.raises(CodecError, match="coded with the prior entropy model"):
        factorised.decompress(codec.compress(image))
    with pytest.raises(CodecError, match="coded with the factorised entropy model"):
        codec.decompress(factorised.compress(image))


def test_other_image_sizes_are_refused_with_the_way_out(codecs):
    _, codec = codecs
    with pytest.raises(CodecError, match="factorised entropy model for other sizes"):
        codec.compress(tiny_images(1, 24, seed=6)[0])


@pytest.mark.parametrize("size, rows", [((24, 24), 0), ((40, 16), 0), ((8, 8), 0), ((40, 16), 1)])
def test_priors_without_positions_code_any_image_size(codecs, size, rows):
    """Priors without positions code maps of any size, attending to every earlier position or to a window of rows,
    at the cost their full pass says."""
    factorised, _ = codecs
    entropy = with_priors(factorised, positions="none", attention_rows=rows)
    codec = Codec(factorised.model, entropy)
    image = tiny_images(1, 48, seed=8)[0, :, : size[0], : size[1]]
    data = codec.compress(image)
    (_, _), maps = read_codes(data, entropy)
    with torch.no_grad():
        expected = codec.model.encode(image[None])[1]
    assert all(got.equal(want[0]) for got, want in zip(maps, expected))
    with torch.no_grad():
        model_bits = float(bits(entropy.priors[0].log_prob(expected[0]))) + sum(
            float(bits(prior.log_prob(expected[level], expected[0])))
            for level, prior in enumerate(entropy.priors) if level)
    payload = entropy.encode(tuple(m[0] for m in expected))
    assert -1 <= 8 * len(payload) - model_bits <= 0.002 * model_bits + 64  # the same model, coded incrementally


def test_prior_coded_files_that_are_mutated_or_truncated_fail_cleanly(codecs):
    _, codec = codecs
    data = codec.compress(tiny_images(1, 16, seed=4)[0])
    rng = random.Random(1)
    for trial in range(60):  # bounded: stops by itself
        mutated = bytearray(data)
        if trial % 2:
            mutated = mutated[: rng.randrange(len(mutated))]
        else:
            mutated[rng.randrange(len(mutated))] ^= rng.randint(1, 255)
        with pytest.raises(CodecError):
            codec.decompress(bytes(mutated))


def test_the_priors_load_from_their_checkpoints(codecs, tmp_path):
    _, codec = codecs
    paths = []
    for level, prior in enumerate(codec.entropy.priors):
        paths.append(prior_file(tmp_path, level))
        save_prior(paths[-1], prior, None, 5, codec.entropy.fingerprint)
    loaded = Codec(codec.model, PriorEntropyModel.load(paths))
    image = tiny_images(1, 16, seed=3)[0]
    assert loaded.compress(image) == codec.compress(image)


def test_random_payloads_behind_a_valid_checksum_never_crash(codecs):
    """The checksum stops accidents; a payload forged behind a matching one must still end cleanly."""
    _, codec = codecs
    data = codec.compress(tiny_images(1, 16, seed=4)[0])
    payload_start = len(data) - 4 - len(codec.entropy.encode(read_codes(data, codec.entropy)[1]))
    rng = random.Random(2)
    for _ in range(20):
        body = data[:payload_start] + bytes(rng.randrange(256) for _ in range(len(data) - 4 - payload_start))
        forged = body + zlib.crc32(body).to_bytes(4, "little")
        try:
            image = codec.decompress(forged)
        except CodecError:
            continue
        assert image.shape == (3, 16, 16) and bool(image.isfinite().all())


def test_the_priors_code_whole_codes_only():
    codec = trained("rvq")  # the tiny rvq model: 2 maps of 2 stages, qualities 1..4
    priors = Codec(codec.model, with_priors(codec))
    image = tiny_images(1, 16, seed=3)[0]
    with pytest.raises(CodecError, match=r"the priors code all 2 slots of every map, not \[1, 0\]: use the factorised"):
        priors.compress(image, 1)
    data = bytearray(priors.compress(image))
    data[4 + 1 + 1 + 8 + 2 + 2 + 1] = 1  # the header says quality 1
    data[-4:] = zlib.crc32(bytes(data[:-4])).to_bytes(4, "little")
    with pytest.raises(CodecError, match=r"the priors code the top quality \(4\) only, not 1"):
        priors.decompress(bytes(data))


def test_files_coded_together_hold_the_bytes_each_has_alone(codecs):
    _, codec = codecs
    images = list(tiny_images(5, 16, seed=21))
    alone = [codec.compress(image) for image in images]
    together = codec.compress_many(images)
    assert together == alone
    decoded = codec.decompress_many(together)
    for data, image in zip(alone, decoded):
        assert torch.equal(image, codec.decompress(data))


def test_fixed_count_loops_give_the_general_loops_bytes_and_codes(codecs, monkeypatch):
    """A residual VQ's priors (every slot held, one level) code by the fixed-count loops: the encoder's backbone over
    the known codes first, then the head in chunks of positions from the last, over threads; the decoder in numpy.
    Same bytes as ``generate``'s general loop, same decoded images, whatever the chunk and the thread count."""
    _, codec = codecs
    if not codec.entropy._fixed():
        pytest.skip("these priors code levels or END tokens: the general loop only")
    images = list(tiny_images(3, 16, seed=23))
    monkeypatch.setattr(prior_coding, "_CHUNK", 7)  # several chunks, the last a partial one
    monkeypatch.setattr(prior_coding.torch, "get_num_threads", lambda: 3)  # rows split over 3 threads
    files = codec.compress_many(images)
    fast = codec.decompress_many(files)
    monkeypatch.setattr(PriorEntropyModel, "_fixed", lambda self: False)
    assert codec.compress_many(images) == files
    for data, image in zip(files, fast):
        assert torch.equal(image, codec.decompress(data))


def test_one_bad_file_or_image_in_a_batch_costs_only_itself(codecs):
    _, codec = codecs
    images = list(tiny_images(3, 16, seed=22))
    files = codec.compress_many([images[0], images[1][:, :8], images[2]])  # the priors code 16x16 only
    assert isinstance(files[1], CodecError) and "cannot code a 8x16 image" in str(files[1])
    good = [files[0], files[2]]
    broken = bytearray(good[1])
    broken[len(broken) // 2] ^= 0xFF
    results = codec.decompress_many([good[0], bytes(broken), b"not a file"])
    assert torch.equal(results[0], codec.decompress(good[0]))
    assert isinstance(results[1], CodecError) and isinstance(results[2], CodecError)
