"""Residual VQ with the quantised pursuit's per-position early stop (the study's fairness clause): a position takes
stage k only while the stage's drop in error pays for its bits at lambda; trained over a range of lambdas, one model
is the codec's ten qualities, and its variable stage counts go through the store, the priors and the files."""

from __future__ import annotations

import pytest
import torch

from sparse_vqvae.code_store import CodeStore, extract_codes
from sparse_vqvae.codec import Codec, colour_offsets, qualities, quality_frequencies
from sparse_vqvae.rate_control import quality_lambda, rate_lambda
from sparse_vqvae.codes import EMPTY
from sparse_vqvae.config import ModelConfig, TrainConfig
from sparse_vqvae.quantizers import ResidualVQ, build_quantizer
from sparse_vqvae.train import train

from .tiny import Images, tiny_config, tiny_images

LAMBDAS = (1e-3, 1e-1)


def trained(stages: int = 3, steps: int = 5) -> tuple[ResidualVQ, torch.Tensor]:
    torch.manual_seed(0)
    quantizer = ResidualVQ(8, 16, stages, train_lambdas=LAMBDAS).train()
    z = torch.randn(8, 8, 6, 6) * 2
    for _ in range(steps):
        quantizer(z)
    return quantizer.eval(), z


def rows(z: torch.Tensor) -> torch.Tensor:
    return z.permute(0, 2, 3, 1).reshape(-1, z.shape[1])


def test_at_lambda_zero_every_position_takes_every_stage_as_a_plain_residual_vq_would():
    quantizer, z = trained()
    plain = ResidualVQ(8, 16, 3)
    plain.load_state_dict({k: v for k, v in quantizer.state_dict().items() if k in plain.state_dict()})
    codes = quantizer(z).codes
    assert codes.present.all()
    assert torch.equal(codes.atoms, plain.eval()(z).codes.atoms)


def test_a_position_takes_a_stage_only_while_its_drop_in_error_pays_for_its_bits():
    quantizer, z = trained()
    lam = 0.05
    quantizer.rate_lambda = lam
    atoms = quantizer(z).codes.atoms.reshape(-1, 3)
    go, stop = quantizer.count_bits(quantizer.count_freq)
    residual = rows(z)
    still = torch.ones(residual.shape[0], dtype=torch.bool)
    for k, stage in enumerate(quantizer.stages):
        index, error = stage.nearest(residual)
        bits = quantizer.symbol_bits(quantizer.entry_freq[k])[index] + go[k] - stop[k]
        pays = residual.square().sum(1) - error > lam * float(quantizer.energy) * bits
        still &= pays
        assert torch.equal(atoms[:, k] != EMPTY, still)
        assert torch.equal(atoms[still, k], index[still] + k * 16)
        residual = residual - stage.entries()[index] * still[:, None]
    assert 0 < still.sum() and not still.all()  # some positions stopped early, some went on


def test_stage_counts_fall_as_lambda_rises():
    quantizer, z = trained()
    means = []
    for lam in (0.0, 0.01, 0.1, 1.0):
        quantizer.rate_lambda = lam
        means.append(float(quantizer(z).codes.present.sum(-1).float().mean()))
    assert means == sorted(means, reverse=True) and means[0] == 3 and means[-1] < 1


def test_training_draws_lambda_per_image_and_a_stage_learns_only_from_the_positions_that_took_it():
    quantizer, z = trained()
    quantizer.train()
    counts = quantizer(z).codes.present.sum(-1).flatten(1)  # [B, positions]
    assert len({int(c) for c in counts.flatten()}) > 1
    before = [stage.embed.clone() for stage in quantizer.stages]
    quantizer.train_lambdas, quantizer.FULL_RATE_SHARE = (1e6, 1e6), 0.0  # no stage pays for any image
    assert not quantizer(z).codes.present.any()
    for stage, old in zip(quantizer.stages, before):  # an EMA step with no vector: only its smoothing moves
        torch.testing.assert_close(stage.embed, old, rtol=1e-4, atol=1e-6)


def test_a_plain_residual_vq_keeps_its_state_dict():
    """The shipped photo codec is a plain residual VQ: its weights load as before."""
    keys = set(ResidualVQ(8, 16, 2).state_dict())
    assert not any(name.startswith(("entry_freq", "count_freq", "energy")) for name in keys)
    assert {"entry_freq", "count_freq", "energy"} <= set(ResidualVQ(8, 16, 2, train_lambdas=LAMBDAS).state_dict())


def test_the_config_builds_it_and_names_what_does_not_fit():
    quantizer = build_quantizer(ModelConfig(selection_fn="rvq", stages=3, train_lambda_min=0.01, train_lambda_max=0.2))
    assert isinstance(quantizer, ResidualVQ) and quantizer.rate_controlled and quantizer.train_lambdas == (0.01, 0.2)
    config = ModelConfig(selection_fn="rvq", stages=3, train_lambda_min=0.01, train_lambda_max=0.2)
    assert config.rate_controlled and config.codes_vary
    assert not ModelConfig(selection_fn="rvq", stages=3).codes_vary
    with pytest.raises(ValueError, match="stage_dropout and model.train_lambda_max"):
        ModelConfig(selection_fn="rvq", stages=3, stage_dropout=True, train_lambda_min=0.01, train_lambda_max=0.2)
    with pytest.raises(ValueError, match="selection_fn qmp or rvq; got selection_fn 'vanilla'"):
        ModelConfig(selection_fn="vanilla", train_lambda_min=0.01, train_lambda_max=0.2)
    with pytest.raises(ValueError, match="rate_lambda: a residual VQ stops early only when trained to"):
        ModelConfig(selection_fn="rvq", stages=2, rate_lambda=0.1)


def test_a_two_map_model_takes_ten_qualities_and_its_files_decode_to_its_codes(tmp_path):
    """Each quality's files code its own stage counts (its own tables) in both maps, and decode to the model's
    decoding of the codes its encoder chose at that quality's multiplier."""
    images = tiny_images(16, 16)
    model, _ = train(tiny_config("rvq", stages=3, train_lambda_min=LAMBDAS[0], train_lambda_max=LAMBDAS[1]),
                     TrainConfig(steps=3, batch_size=8), Images(images), progress=False)
    model.eval()
    extract_codes(model, Images(images), tmp_path / "codes", progress=False)
    store = CodeStore(tmp_path / "codes", model.fingerprint())
    assert store.meta.variable_count
    codec = Codec(model, quality_frequencies(model, Images(images), store.meta, batch_size=8, progress=False))
    assert list(qualities(model)) == list(range(1, 11))
    sizes = []
    for quality in (1, 5, 10):
        data = codec.compress(images[0], quality)
        sizes.append(len(data))
        with torch.no_grad(), rate_lambda(model, quality_lambda(model, quality)):
            codes = model.encode(images[:1])[1]
            expected = model.decode_codes(codes)[0].clamp(-1, 1)
        assert all(c.present.any() for c in codes) or quality == 1  # both maps are sent, not a staged prefix
        shifted = (expected + colour_offsets(data)[:, None, None]).clamp(-1, 1)
        torch.testing.assert_close(codec.decompress(data), shifted, rtol=0, atol=1e-6)
    assert sizes == sorted(sizes) and sizes[0] < sizes[-1]


def test_prior_coded_files_hold_the_stage_counts_each_position_chose(tmp_path):
    """PixelSNAIL priors over the variable counts (each rank's entries + END) code a file at a low quality exactly."""
    from sparse_vqvae.codec import read_codes
    from sparse_vqvae.pixelsnail import PixelSNAIL
    from sparse_vqvae.prior_coding import PriorEntropyModel
    from sparse_vqvae.prior_train import load_maps, prior_configs, train_prior

    images = tiny_images(16, 16)
    model, _ = train(tiny_config("rvq", stages=3, train_lambda_min=LAMBDAS[0], train_lambda_max=LAMBDAS[1]),
                     TrainConfig(steps=3, batch_size=8), Images(images), progress=False)
    model.eval()
    extract_codes(model, Images(images), tmp_path / "codes", progress=False)  # the quality ladder: every quality
    store = CodeStore(tmp_path / "codes", model.fingerprint())
    maps = load_maps(store)
    priors = []
    for level, config in enumerate(prior_configs(store.meta, channels=8, blocks=1, res_per_block=1, dropout=0.0)):
        prior = PixelSNAIL(config)
        train_prior(prior, maps, level, steps=5, batch_size=8, progress=False)
        priors.append(prior.eval())
    codec = Codec(model, PriorEntropyModel(priors, model.fingerprint()))
    data = codec.compress(images[0], 1)
    (_, _), decoded = read_codes(data, codec.entropy)
    with torch.no_grad(), rate_lambda(model, quality_lambda(model, 1)):
        expected = model.encode(images[:1])[1]
    assert not all(c.present.all() for c in expected)  # some positions stopped early
    assert all(got.equal(want[0]) for got, want in zip(decoded, expected))


def test_a_store_holds_each_image_at_its_quality_of_the_ladder(tmp_path):
    """So the priors learn every quality's codes: image i at quality i % 10 + 1, whatever the batches."""
    from sparse_vqvae.prior_train import load_maps
    from sparse_vqvae.rate_control import ladder_quality

    images = tiny_images(23, 16)
    model, _ = train(tiny_config("rvq", stages=3, train_lambda_min=LAMBDAS[0], train_lambda_max=LAMBDAS[1]),
                     TrainConfig(steps=3, batch_size=8), Images(images), progress=False)
    model.eval()
    extract_codes(model, Images(images), tmp_path / "codes", batch_size=7, progress=False)
    stored = load_maps(CodeStore(tmp_path / "codes", model.fingerprint()))
    for index in (0, 6, 7, 9, 10, 22):
        with torch.no_grad(), rate_lambda(model, quality_lambda(model, ladder_quality(index))):
            want = model.encode(images[index:index + 1])[1]
        assert all(torch.equal(s.atoms[index], w.atoms[0]) for s, w in zip(stored, want)), index
    counts = [float(m.present.sum(-1).float().mean()) for m in stored]
    top = [float(w.present.sum(-1).float().mean()) for w in model.encode(images)[1]]
    assert counts < top  # fewer stages than at lambda 0 alone
