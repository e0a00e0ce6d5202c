"""FSQ, the anchor quantizer: a code is a grid point, decoding it gives back exactly the training forward's latent,
every grid point is reachable, and a model with it trains end to end."""

from __future__ import annotations

import math

import pytest
import torch

from sparse_vqvae.config import FSQ_LEVELS, ModelConfig, TrainConfig
from sparse_vqvae.quantizers import FiniteScalarQuantizer, build_quantizer
from sparse_vqvae.train import train

from .tiny import Images, tiny_config, tiny_images


@pytest.mark.parametrize("num_atoms", sorted(FSQ_LEVELS))
def test_codes_decode_to_the_latents_the_forward_pass_made(num_atoms):
    quantizer = FiniteScalarQuantizer(8, num_atoms).eval()
    z = torch.randn(3, 8, 4, 5) * 3
    out = quantizer(z)
    grid = quantizer.num_atoms  # the product of the levels: about the nominal size
    assert grid == math.prod(FSQ_LEVELS[num_atoms]) and 0.9 < grid / num_atoms < 1.1
    assert out.codes.atoms.shape == (3, 4, 5, 1) and ((out.codes.atoms >= 0) & (out.codes.atoms < grid)).all()
    torch.testing.assert_close(quantizer.decode_codes(out.codes), out.z_q, rtol=0, atol=1e-6)


@pytest.mark.parametrize("num_atoms", sorted(FSQ_LEVELS))
def test_every_grid_point_is_one_code_and_each_end_of_each_dimension_is_reached(num_atoms):
    quantizer = FiniteScalarQuantizer(len(FSQ_LEVELS[num_atoms]), num_atoms).eval()
    with torch.no_grad():
        quantizer.project_in.weight.copy_(torch.eye(len(FSQ_LEVELS[num_atoms])))
        quantizer.project_in.bias.zero_()
        grid = quantizer._grid(torch.linspace(-20, 20, 4001)[:, None].expand(-1, len(FSQ_LEVELS[num_atoms])))
    for column, levels in zip(grid.t(), FSQ_LEVELS[num_atoms]):
        assert column.unique().numel() == levels  # both ends reached, even L included
    assert (quantizer._grid(torch.zeros(1, len(FSQ_LEVELS[num_atoms]))) == 0).all()  # centred: 0 -> the middle
    codebook = quantizer.codebook()
    assert codebook.shape == (len(FSQ_LEVELS[num_atoms]), quantizer.num_atoms)
    assert torch.unique(codebook.t(), dim=0).shape[0] == quantizer.num_atoms  # distinct: the index is a bijection


def test_the_gradient_reaches_the_encoder_through_the_rounding():
    quantizer = FiniteScalarQuantizer(8, 256).train()
    z = torch.randn(2, 8, 3, 3, requires_grad=True)
    quantizer(z).z_q.square().sum().backward()
    assert z.grad.abs().sum() > 0 and quantizer.project_in.weight.grad.abs().sum() > 0


def test_initialisation_fits_the_latents_so_the_first_codes_already_approximate_them():
    g = torch.Generator().manual_seed(0)
    latents = torch.randn(4096, 3, generator=g) @ torch.randn(3, 8, generator=g) + 5  # a 3-dim subspace, offset
    quantizer = FiniteScalarQuantizer(8, 1024)
    quantizer.initialize(latents)
    quantizer.eval()
    decoded = quantizer(latents.t().reshape(1, 8, 64, 64)).z_q.reshape(8, -1).t()
    relative = (decoded - latents).square().sum() / (latents - latents.mean(0)).square().sum()
    assert relative < 0.2  # rounding to 5-8 values over four standard deviations; untrained projections leave ~1.0


def test_fsq_takes_only_the_sizes_with_published_levels():
    with pytest.raises(ValueError, match="model.num_atoms must be one of 256, 1024, 4096, 16384"):
        ModelConfig(selection_fn="fsq", num_atoms=512)
    assert isinstance(build_quantizer(ModelConfig(selection_fn="fsq", num_atoms=1024)), FiniteScalarQuantizer)


def test_a_model_with_fsq_trains_and_its_codes_decode_to_its_reconstruction():
    images = tiny_images(16, 16)
    model, _ = train(tiny_config("fsq", num_atoms=256), TrainConfig(steps=3, batch_size=8), Images(images),
                     progress=False)
    model.eval()
    with torch.no_grad():
        out = model(images[:4])
        torch.testing.assert_close(model.decode_codes(out.codes), out.reconstruction, rtol=0, atol=1e-5)
