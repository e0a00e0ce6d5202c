"""Quantised matching pursuit (qmp): each pick is the exact best (atom, value) pair on the quantised residual,
codes decode to what the decoder was given, signs are symmetric, lambda trades pairs for error, and training
keeps the tables sane and reaches the dictionary and the encoder."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch

from sparse_vqvae.codes import EMPTY, Codes, canonical_order, validate_codes
from sparse_vqvae.config import ModelConfig
from sparse_vqvae.quantizers import QuantisedPursuit, build_quantizer


def trained(slots: int = 2, values: int = 8, **kwargs) -> tuple[QuantisedPursuit, torch.Tensor]:
    torch.manual_seed(0)
    quantizer = QuantisedPursuit(8, 16, slots, values, **kwargs)
    z = torch.randn(4, 8, 5, 5) * 3
    quantizer.train()
    for _ in range(3):
        quantizer(z)
        quantizer.after_step()
    return quantizer.eval(), z


def rows(z: torch.Tensor) -> torch.Tensor:
    return z.permute(0, 2, 3, 1).reshape(-1, z.shape[1])


def test_the_first_pick_is_the_exact_optimum_over_atoms_and_signed_values():
    quantizer, z = trained(slots=1)
    flat = rows(z)
    atoms, levels, _ = quantizer.pursue(flat, quantizer.codebook(), torch.zeros(flat.shape[0]))
    values = quantizer.level_values()  # rank 0's 2L values
    candidates = values[None, :, None, None] * quantizer.codebook().T[None, None]  # [1, 2L, N, C]
    best = (flat[:, None, None] - candidates).square().sum(-1).flatten(1).min(1).values
    chosen = (flat - values[levels[:, 0]][:, None] * quantizer.codebook().T[atoms[:, 0]]).square().sum(1)
    coded = atoms[:, 0] != EMPTY
    assert coded.any()
    torch.testing.assert_close(chosen[coded], best[coded], rtol=0, atol=1e-4)
    assert bool((best[~coded] >= flat[~coded].square().sum(1) - 1e-4).all())  # stopped: no pair helps


def test_each_rank_codes_the_residual_of_the_quantised_ranks_before_it():
    quantizer, z = trained(slots=3)
    flat = rows(z)
    atoms, levels, _ = quantizer.pursue(flat, quantizer.codebook(), torch.zeros(flat.shape[0]))
    values, dictionary = quantizer.level_values(), quantizer.codebook()
    residual = flat - values[levels[:, 0]][:, None] * dictionary.T[atoms[:, 0]] * (atoms[:, :1] != EMPTY)
    second = values[levels[:, 1]][:, None] * dictionary.T[atoms[:, 1].clamp_min(0)]
    rank1 = values[2 * quantizer.magnitudes:4 * quantizer.magnitudes]  # rank 1's table
    candidates = rank1[None, :, None, None] * dictionary.T[None, None]
    best = (residual[:, None, None] - candidates).square().sum(-1)
    best[torch.arange(len(flat)), :, atoms[:, 0].clamp_min(0)] = float("inf")  # an atom is used once a position
    coded = atoms[:, 1] != EMPTY
    got = (residual - second).square().sum(1)
    assert coded.sum() > 20
    torch.testing.assert_close(got[coded], best.flatten(1).min(1).values[coded], rtol=0, atol=1e-4)


def test_codes_are_ranked_and_decode_to_z_q():
    """Slot k holds the pursuit's k-th pick under rank k's ids (k*N + atom, level symbols of rank k), a position's
    empty slots last: canonical (ascending) order is rank order."""
    quantizer, z = trained(slots=3)
    out = quantizer(z)
    assert quantizer.code_atoms == 3 * quantizer.num_atoms
    validate_codes(out.codes, quantizer.code_atoms, quantizer.coef_levels)
    flat_atoms, flat_levels = out.codes.atoms.reshape(-1, 3), out.codes.levels.reshape(-1, 3)
    assert torch.equal(canonical_order(flat_atoms), torch.arange(3).expand_as(flat_atoms))
    present = flat_atoms != EMPTY
    rank = torch.arange(3).expand_as(flat_atoms)
    assert torch.equal(flat_atoms[present] // quantizer.num_atoms, rank[present])
    assert torch.equal(flat_levels[present] // (2 * quantizer.magnitudes), rank[present])
    assert not (present[:, 1:] & ~present[:, :-1]).any()  # no pair after an empty slot
    torch.testing.assert_close(quantizer.decode_codes(out.codes), out.z_q, rtol=0, atol=1e-5)


def test_negating_the_input_mirrors_the_values():
    quantizer, z = trained(slots=2)
    a, b = quantizer(z), quantizer(-z)
    assert torch.equal(a.codes.atoms, b.codes.atoms)
    torch.testing.assert_close(a.z_q, -b.z_q, rtol=0, atol=1e-5)
    values = quantizer.level_values()
    present = a.codes.present
    assert torch.equal(values[a.codes.levels[present]], -values[b.codes.levels[present]])


def test_a_larger_lambda_codes_fewer_pairs_at_more_error():
    quantizer, z = trained(slots=4)
    pairs, errors = [], []
    for lam in (0.0, 0.01, 0.1, 10.0):
        quantizer.rate_lambda = lam
        out = quantizer(z)
        pairs.append(int(out.codes.present.sum()))
        errors.append(float((out.z_q.detach() - z).square().sum()))
    assert pairs == sorted(pairs, reverse=True) and errors == sorted(errors)
    assert pairs[-1] == 0 and pairs[0] > pairs[1]


def test_training_keeps_positive_ascending_magnitudes_and_unit_atoms():
    quantizer, _ = trained(slots=2, values=6, train_lambdas=(1e-3, 1e-1))
    table = quantizer.magnitude_table
    assert bool((table > 0).all()) and bool((table[:, 1:] >= table[:, :-1]).all())
    torch.testing.assert_close(quantizer.dictionary.norm(dim=0), torch.ones(16))


def test_the_magnitudes_move_to_the_mean_correlation_of_their_picks():
    torch.manual_seed(1)
    quantizer = QuantisedPursuit(8, 16, 1, 2, decay=0.0, restart_dead=False).train()  # one magnitude: the mean
    z = torch.randn(2, 8, 4, 4)
    quantizer(z)
    flat = rows(z)
    atoms, _, picked = quantizer.pursue(flat, quantizer.codebook(), torch.zeros(flat.shape[0]))
    quantizer(z)
    torch.testing.assert_close(quantizer.magnitude_table[0, 0], picked[atoms[:, 0] != EMPTY, 0].mean(),
                               rtol=1e-5, atol=1e-6)


def test_gradients_reach_the_dictionary_and_pass_straight_to_the_encoder():
    quantizer, z = trained(slots=2)
    z = z.clone().requires_grad_(True)
    out = quantizer(z)
    out.z_q.sum().backward()
    torch.testing.assert_close(z.grad, torch.ones_like(z))  # straight through: z + sg(z_q - z)
    assert quantizer.dictionary.grad is not None and bool(quantizer.dictionary.grad.abs().sum() > 0)


@pytest.mark.parametrize("settings, message", [
    (dict(coef_levels=7), "model.coef_levels must be even for qmp"),
    (dict(train_lambda_max=0.1), r"model.train_lambda_min must be in \(0, train_lambda_max\]"),
    (dict(rate_lambda=-1.0), "model.rate_lambda must be a number >= 0"),
])
def test_bad_settings_name_the_key(settings, message):
    with pytest.raises(ValueError, match=message):
        ModelConfig(selection_fn="qmp", **settings)


def test_the_config_builds_it_with_its_lambdas():
    quantizer = build_quantizer(ModelConfig(selection_fn="qmp", n_nonzero=3, coef_levels=4, rate_lambda=0.05,
                                            train_lambda_min=0.01, train_lambda_max=0.2))
    assert isinstance(quantizer, QuantisedPursuit)
    assert (quantizer.slots, quantizer.magnitudes, quantizer.coef_levels) == (3, 2, 12)
    assert quantizer.rate_lambda == 0.05 and quantizer.train_lambdas == (0.01, 0.2)


def test_a_rate_controlled_model_takes_ten_qualities_and_its_files_shrink_with_them():
    """qmp trained over multipliers: the codec's quality is the encoder's multiplier (quality 10: none), every file
    codes the pairs its encoder chose and decodes to the model's decoding of them."""
    from sparse_vqvae.codec import Codec, fit_frequencies, qualities
    from sparse_vqvae.rate_control import quality_lambda
    from sparse_vqvae.config import TrainConfig
    from sparse_vqvae.train import train

    from .test_codec import metadata
    from .tiny import Images, tiny_config, tiny_images

    images = tiny_images(16, 16)
    model, _ = train(tiny_config("qmp", n_nonzero=4, train_lambda_min=1e-3, train_lambda_max=1e-1),
                     TrainConfig(steps=3, batch_size=8), Images(images), progress=False)
    model.eval()
    with torch.no_grad():
        maps = model.encode(images)[1]
    codec = Codec(model, fit_frequencies(model, maps, metadata(model, maps), Images(images)))  # as it ships
    assert list(qualities(model)) == list(range(1, 11))
    assert quality_lambda(model, 1) == pytest.approx(0.1) and quality_lambda(model, 9) == pytest.approx(1e-3)
    assert quality_lambda(model, 10) == 0
    sizes = [len(codec.compress(images[0], quality)) for quality in (1, 5, 10)]
    assert sizes[0] < sizes[-1] and sizes == sorted(sizes)
    assert all(q.rate_lambda == 0 for q in model.quantizers)  # the encoder's own multiplier is back
    decoded = codec.decompress(codec.compress(images[0], 3))
    assert decoded.shape == (3, 16, 16) and decoded.isfinite().all()


def test_a_map_that_codes_nothing_has_every_atom_fall_dead():
    """Vectors given but none coded (every |c| under half the smallest magnitude): usage decays as for any atom
    unused, so the atoms restart; a batch with no vector at all (a dropped stage) says nothing about usage."""
    quantizer = QuantisedPursuit(8, 16, 2, 4)
    nothing = torch.full((50, 2), EMPTY)
    dead = [quantizer._track_usage(nothing) for _ in range(30)]
    assert not dead[0].any() and bool(dead[-1].all())
    assert not quantizer._track_usage(torch.zeros((0, 2), dtype=torch.long)).any()


def stale(quantizer: QuantisedPursuit, rank: int, cell: int, value: float) -> None:
    """Make a magnitude no pick has reached for a long time: its EMA frequency gone, its value ``value``."""
    quantizer.magnitude_table[rank, cell] = value
    quantizer.magnitude_sum[rank, cell] = value * quantizer.magnitude_count[rank, cell]
    quantizer.magnitude_freq[rank, cell] = 0.0


def test_a_stale_magnitude_is_reseeded_among_the_coefficients():
    quantizer, z = trained(slots=2)
    stale(quantizer, 0, quantizer.magnitudes - 1, 1e3)
    flat = quantizer.coding_target(rows(z))
    _, _, picked = quantizer.pursue(flat, quantizer.codebook(), torch.zeros(flat.shape[0]))
    quantizer.train()(z)
    assert float(quantizer.magnitude_table[0].max()) <= float(picked[:, 0].max())
    assert bool((quantizer.magnitude_table[:, 1:] >= quantizer.magnitude_table[:, :-1]).all())


def test_a_dead_map_codes_again():
    """Every magnitude far above every |c|: nothing is coded, and training brings the map back."""
    quantizer, z = trained(slots=2)
    far = 1e3 * torch.arange(1.0, quantizer.magnitudes + 1).repeat(2, 1)
    quantizer.magnitude_table.copy_(far)
    quantizer.magnitude_sum.copy_(far * quantizer.magnitude_count)
    assert not quantizer(z).codes.present.any()
    quantizer.train()
    for _ in range(400):
        quantizer(z)
        quantizer.after_step()
    quantizer.eval()
    assert quantizer(z).codes.present[..., 0].float().mean() > 0.5


def test_training_decodes_the_values_the_pursuit_chose_though_the_tables_reorder():
    """_learn re-sorts a rank's magnitudes when one overtakes another; z_q is still made of the values the pursuit
    picked (not of whatever the picked indices name after the sort)."""
    quantizer, z = trained(slots=2)
    before = copy.deepcopy(quantizer)
    quantizer.magnitude_sum[0, 0] = 1e3 * quantizer.magnitude_count[0, 0]  # its centroid jumps past the others
    out = quantizer.train()(z)
    assert float(quantizer.magnitude_table[0, -1]) > float(before.magnitude_table[0, -1])  # cell 0 went last
    torch.testing.assert_close(out.z_q, before(z).z_q, rtol=0, atol=1e-4)


def test_training_codes_the_latent_at_the_energy_the_dictionary_was_fitted_at():
    """However far the encoder scales its output, training codes it at the reference energy, and no gradient
    grows or shrinks it (as through a batch norm): the latent's scale is no direction of descent."""
    quantizer, z = trained(slots=3)
    quantizer.train()
    for scale in (1e-2, 1e2):
        scaled = (z * scale).requires_grad_(True)
        out, held = copy.deepcopy(quantizer)(scaled), copy.deepcopy(quantizer)(z)
        torch.testing.assert_close(out.z_q, held.z_q, rtol=0, atol=1e-4)
        (out.z_q.square().sum() + out.loss).backward()
        radial = (scaled.grad * scaled.detach()).sum() / (scaled.grad.norm() * scaled.detach().norm())
        assert abs(float(radial)) < 1e-4


def test_a_rate_controlled_model_codes_each_quality_with_its_own_tables(tmp_path):
    """Per-quality tables: quality q's fitted to the training codes at q's multiplier; a file names its quality and
    decodes with its tables; fitted to the codes they code, they spend fewer bits than quality 10's tables."""
    from sparse_vqvae.codec import Codec, quality_frequencies, read_codes
    from sparse_vqvae.rate_control import quality_lambda, rate_lambda
    from sparse_vqvae.config import TrainConfig
    from sparse_vqvae.entropy_coding import FrequencyModel, QualityFrequencyModel, load_frequencies
    from sparse_vqvae.errors import CheckpointError, CodecError
    from sparse_vqvae.train import train

    from .test_codec import metadata
    from .tiny import Images, tiny_config, tiny_images

    images = tiny_images(16, 16)
    model, _ = train(tiny_config("qmp", n_nonzero=4, train_lambda_min=1e-2, train_lambda_max=1.0),
                     TrainConfig(steps=3, batch_size=8), Images(images), progress=False)
    model.eval()
    with torch.no_grad():
        maps = model.encode(images)[1]
        with rate_lambda(model, quality_lambda(model, 1)):
            coarse = model.encode(images)[1]
    meta = metadata(model, maps)
    tables = quality_frequencies(model, Images(images), meta, batch_size=5, progress=False)
    assert isinstance(tables, QualityFrequencyModel) and tables.top_quality == 10
    want = FrequencyModel.fit(coarse, meta)
    assert all(np.array_equal(a, b) for a, b in zip(tables.tables(1).counts, want.counts))
    assert not np.array_equal(tables.tables(1).counts[1], tables.tables(10).counts[1])  # fewer pairs at quality 1
    tables.save(tmp_path / "codec.pt")
    loaded = load_frequencies(tmp_path / "codec.pt")
    assert all(np.array_equal(a, b) for a, b in zip(loaded.tables(3).atoms, tables.tables(3).atoms))
    with pytest.raises(CheckpointError, match="per quality"):
        FrequencyModel.load(tmp_path / "codec.pt")
    codec, single = Codec(model, loaded), Codec(model, FrequencyModel.fit(maps, meta))
    data = codec.compress(images[0], 1)
    assert data[19] == 1  # the quality byte (after magic, version, model, fingerprint, size, maps) names the tables
    (_, _), decoded = read_codes(data, loaded)
    assert all(d.equal(c[0]) for d, c in zip(decoded, (Codes(m.atoms[:1], m.levels[:1]) for m in coarse)))
    assert torch.equal(codec.decompress(data), single.decompress(single.compress(images[0], 1)))
    own, pooled = (sum(entropy.bits(tuple(Codes(m.atoms[i], m.levels[i]) for m in coarse)) for i in range(16))
                   for entropy in (loaded.tables(1), single.entropy))
    assert own < pooled
    with pytest.raises(CodecError, match="cannot be decoded|not one"):
        single.decompress(data)
