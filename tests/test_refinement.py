"""Encoder-side refinement (``Codec.compress(..., effort=N)``): a better code in the same format, never a worse one."""

import pytest
import torch
import torch.nn.functional as F

from sparse_vqvae.codec import Codec, CodecError, colour_offsets, read_codes
from sparse_vqvae.codes import Codes
from sparse_vqvae.config import TrainConfig
from sparse_vqvae.entropy_coding import FrequencyModel
from sparse_vqvae.refinement import refined_codes
from sparse_vqvae.train import train

from .test_codec import metadata, trained
from .tiny import Images, tiny_config, tiny_images


@pytest.fixture(scope="module", params=[1, 2], ids=["one map", "two maps"])
def staged_codec(request) -> Codec:
    """A residual VQ trained long enough (150 steps, a high learning rate) that its qualities differ."""
    images = tiny_images(32, 32, seed=1)
    model, _ = train(tiny_config("rvq", maps=request.param, stages=3, stage_dropout=True),
                     TrainConfig(steps=150, batch_size=8, lr=3e-3), Images(images), progress=False)
    model.eval()
    with torch.no_grad():
        maps = model.encode(images)[1]
    return Codec(model, FrequencyModel.fit(maps, metadata(model, maps)))


def squared_error(codec: Codec, image: torch.Tensor, data: bytes) -> float:
    return F.mse_loss(codec.decompress(data), image).item()


def test_refined_files_decode_closer_to_the_image_in_the_same_format(staged_codec):
    image = tiny_images(1, 32, seed=5)[0]
    model = staged_codec.model
    gains = []
    for quality in staged_codec.qualities:
        plain, refined = staged_codec.compress(image, quality), staged_codec.compress(image, quality, effort=8)
        assert plain == staged_codec.compress(image, quality, effort=0)
        assert refined == staged_codec.compress(image, quality, effort=8)  # the same bytes every time
        # the file holds the refined code, cut to the quality's slots, and decodes to what the model makes of it
        _, maps = read_codes(refined, staged_codec.entropy)
        wanted = refined_codes(model, image[None], quality, 8)
        for codes, full in zip(maps, wanted):
            k = codes.atoms.shape[-1]
            assert torch.equal(codes.atoms, full.atoms[0, ..., :k])
            assert (full.atoms[0, ..., k:] < 0).all()  # the slots past the quality stay empty
        expected = model.decode_codes(tuple(Codes(c.atoms[None], c.levels[None]) for c in maps))[0].clamp(-1, 1)
        assert torch.equal(staged_codec.decompress(refined),
                           (expected + colour_offsets(refined)[:, None, None]).clamp(-1, 1))
        gains.append(squared_error(staged_codec, image, plain) - squared_error(staged_codec, image, refined))
    assert min(gains) > 0  # better at every quality
    assert all(p.requires_grad for p in model.parameters())  # the model is left as it was found


def test_refinement_starts_from_the_encoders_code(staged_codec):
    image = tiny_images(1, 32, seed=6)[0][None]
    with torch.no_grad():
        encoded = staged_codec.model.encode(image)[1]
    top = staged_codec.qualities[-1]
    for codes, full in zip(refined_codes(staged_codec.model, image, top, 0), encoded):
        assert torch.equal(codes.atoms, full.atoms)


def test_effort_is_checked_before_any_work():
    codec = trained("omp", levels=1)
    image = tiny_images(1, 16, seed=2)[0]
    with pytest.raises(CodecError, match="effort 2: refinement codes residual-VQ models cut by quality; this "
                                         "model's quantizer is 'omp'; use effort 0"):
        codec.compress(image, effort=2)
    assert codec.compress(image, effort=0) == codec.compress(image)
    for effort in (-1, 1.5):
        with pytest.raises(CodecError, match="effort must be a whole number of refinement steps, 0 or more"):
            codec.compress(image, effort=effort)


def test_a_step_too_long_costs_nothing(staged_codec, monkeypatch):
    """Steps that overshoot (a learning rate 100 times the latents' scale) make worse codes than the encoder's:
    refinement keeps the best code it decoded, so the file is never worse than the unrefined one."""
    monkeypatch.setattr("sparse_vqvae.refinement.REFINE_LR", 100.0)
    image = tiny_images(1, 32, seed=5)[0]
    top = staged_codec.qualities[-1]
    plain = staged_codec.compress(image, top)
    assert squared_error(staged_codec, image, staged_codec.compress(image, top, effort=4)) <= \
        squared_error(staged_codec, image, plain)
