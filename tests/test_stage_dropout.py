"""Stage dropout across the maps: a two-map residual VQ trains each image on one of the codec's qualities - a
prefix of the stages, the top map's first - so every quality the codec sends is one the decoder learnt; and the
codec's files at each quality decode to the model's decoding of that prefix."""

from __future__ import annotations

import pytest
import torch

from sparse_vqvae.codec import Codec, colour_offsets, qualities
from sparse_vqvae.codes import quality_range, quality_slots
from sparse_vqvae.config import TrainConfig
from sparse_vqvae.entropy_coding import FrequencyModel
from sparse_vqvae.train import train
from sparse_vqvae.vqvae import VQVAE2

from .test_codec import metadata
from .tiny import Images, tiny_config, tiny_images


@pytest.mark.parametrize("quality, want", [(1, (1, 0)), (3, (3, 0)), (4, (3, 1)), (6, (3, 3))])
def test_a_quality_is_a_prefix_of_the_stages_in_map_order(quality, want):
    assert quality_slots(quality, 3, 2, staged=True) == want


def test_other_codes_have_one_quality_with_every_slot():
    assert list(quality_range(2, 2, staged=False)) == [2]
    assert quality_slots(2, 2, 2, staged=False) == (2, 2)
    with pytest.raises(ValueError, match="quality 1 is not one these codes have"):
        quality_slots(1, 2, 2, staged=False)


@pytest.mark.parametrize("maps", [1, 2])
def test_each_training_image_keeps_the_stages_of_one_quality(maps):
    torch.manual_seed(0)
    model = VQVAE2(tiny_config("rvq", maps=maps, stages=3, stage_dropout=True)).train()
    _, codes, _, _ = model.encode(tiny_images(64, 16))
    held = [c.present.sum(-1).flatten(1) for c in codes]  # per map [B, positions]
    assert all((counts == counts[:, :1]).all() for counts in held)  # one cut an image, the same everywhere
    cuts = {tuple(row) for row in torch.stack([counts[:, 0] for counts in held], dim=1).tolist()}
    assert cuts == {quality_slots(q, 3, maps, staged=True) for q in quality_range(3, maps, staged=True)}
    model.eval()
    assert all(c.present.all() for c in model.encode(tiny_images(4, 16))[1])  # evaluation: every stage


def test_a_top_share_trains_that_share_of_the_images_at_the_top_quality():
    """stage_dropout_top_share 0.5 with 4 qualities: half the images keep every stage, the other half draw
    uniformly (a quarter of them the top quality too): 5/8 at the top, 1/8 at each other quality."""
    torch.manual_seed(0)
    model = VQVAE2(tiny_config("rvq", maps=1, stages=4, stage_dropout=True, stage_dropout_top_share=0.5)).train()
    [kept] = model._kept_stages(4000)
    shares = torch.bincount(kept, minlength=5)[1:] / 4000
    assert shares[-1] == pytest.approx(5 / 8, abs=0.03)
    assert shares[:-1].tolist() == pytest.approx([1 / 8] * 3, abs=0.02)


def test_a_top_share_needs_stage_dropout():
    with pytest.raises(ValueError, match="stage_dropout_top_share weights stage dropout's draw"):
        tiny_config("rvq", stages=2, stage_dropout_top_share=0.5)
    with pytest.raises(ValueError, match=r"model.stage_dropout_top_share must be a number in \[0, 1\); got 1"):
        tiny_config("rvq", stages=2, stage_dropout=True, stage_dropout_top_share=1)


def test_files_at_every_quality_of_a_two_map_model_decode_to_that_prefix():
    images = tiny_images(16, 16)
    model, _ = train(tiny_config("rvq", maps=2, stages=2, stage_dropout=True), TrainConfig(steps=3, batch_size=8),
                     Images(images), progress=False)
    model.eval()
    with torch.no_grad():
        maps = model.encode(images)[1]
    codec = Codec(model, FrequencyModel.fit(maps, metadata(model, maps)))
    assert list(qualities(model)) == [1, 2, 3, 4]
    sizes = []
    for quality in qualities(model):
        data = codec.compress(images[0], quality)
        sizes.append(len(data))
        cut = quality_slots(quality, 2, 2, staged=True)
        prefix = tuple(type(c)(c.atoms[:1, ..., :k], c.levels[:1, ..., :k]) for c, k in zip(maps, cut))
        with torch.no_grad():
            expected = model.decode_codes(prefix)[0].clamp(-1, 1)
        shifted = (expected + colour_offsets(data)[:, None, None]).clamp(-1, 1)  # the file adds its colour offsets
        torch.testing.assert_close(codec.decompress(data), shifted, rtol=0, atol=1e-6)
    assert sizes == sorted(sizes) and sizes[0] < sizes[-1]
