import numpy as np
import pytest
import torch

from sparse_vqvae.codes import EMPTY, validate_codes
from sparse_vqvae.quantizers import SparseQuantizer, VectorQuantizerEMA, build_quantizer, uniform_levels
from sparse_vqvae.sparse_coding import random_dictionary

from .tiny import SELECTION_FNS, tiny_config


def features(batch=4, dim=8, size=4, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(batch, dim, size, size, generator=g)


@pytest.mark.parametrize("selection_fn", SELECTION_FNS)
def test_output_shapes_codes_and_exact_decoding(selection_fn):
    torch.manual_seed(0)
    quantizer = build_quantizer(tiny_config(selection_fn))
    z = features()
    quantizer.train()
    quantizer(z)  # first training batch initialises from data
    quantizer.eval()
    out = quantizer(z)
    assert out.z_q.shape == z.shape and out.loss.dim() == 0
    slots = {"vanilla": 1, "rvq": 2, "fsq": 1, "omp": 2, "qmp": 2, "lasso": 3}[selection_fn]
    assert out.codes.atoms.shape == (4, 4, 4, slots)
    validate_codes(out.codes, {"rvq": 64, "fsq": 240, "qmp": 64}.get(selection_fn, 32),
                   {"vanilla": 1, "rvq": 1, "fsq": 1, "qmp": 32}.get(selection_fn, 16))
    if selection_fn in ("vanilla", "rvq", "fsq"):
        assert out.codes.present.all()
    assert torch.equal(quantizer.decode_codes(out.codes), out.z_q)
    # what the atoms index (pictures of it): a quantised pursuit's ranks share one dictionary, ids modulo its N
    indexed = quantizer.num_atoms if selection_fn == "qmp" else quantizer.code_atoms
    assert quantizer.codebook().shape == (8, indexed)
    # The usage figures, recomputed from the codes: atom counts over the pairs present, their perplexity, the
    # share of atoms unused, pairs per position, and the level histogram.
    present = out.codes.present.numpy()
    counts = np.bincount(out.codes.atoms.numpy()[present] % indexed, minlength=indexed)
    p = counts[counts > 0] / counts.sum()
    assert out.stats["perplexity"].item() == pytest.approx(np.exp(-(p * np.log(p)).sum()), rel=1e-5)
    assert 1 <= out.stats["perplexity"].item() <= (counts > 0).sum() + 1e-4
    assert out.stats["dead_share"].item() == pytest.approx((counts == 0).mean(), rel=1e-6)
    assert out.stats["nonzeros_per_position"].item() == pytest.approx(present.sum(-1).mean(), rel=1e-6)
    assert np.array_equal(out.stats["level_histogram"].numpy(),
                          np.bincount(out.codes.levels.numpy()[present], minlength=quantizer.coef_levels))


def test_lasso_codes_hold_at_most_max_nonzero_pairs_in_canonical_order():
    torch.manual_seed(0)
    quantizer = build_quantizer(tiny_config("lasso", alpha=0.5))
    out = quantizer.train()(features())
    atoms = out.codes.atoms
    assert (out.codes.present.sum(-1) <= 3).all() and (~out.codes.present).any()
    key = torch.where(atoms == EMPTY, 10**6, atoms)
    assert torch.equal(key, key.sort(dim=-1).values)
    assert (out.codes.levels[~out.codes.present] == 0).all()


def _reconstruction_gradient(quantizer, z: torch.Tensor, upstream: torch.Tensor) -> torch.Tensor:
    """The encoder's gradient from a reconstruction-like loss <z_q, upstream> alone."""
    z = z.clone().requires_grad_()
    (quantizer(z).z_q * upstream).sum().backward()
    return z.grad


@pytest.mark.parametrize("selection_fn, overrides", [
    ("omp", dict(n_nonzero=1, normalize_latents=True)),
    ("omp", dict(n_nonzero=1, normalize_latents=False)),
    ("lasso", dict(normalize_latents=True)),
])
def test_the_reconstruction_loss_alone_trains_the_encoder_as_vanillas_does(selection_fn, overrides):
    # Vanilla's encoder gets the upstream gradient of its coding target (the latent itself); a sparse
    # quantizer's must be as large and point the same way - not projected onto the few chosen atoms.
    config = tiny_config(selection_fn, embed_dim=16, commitment=0.0, dictionary_loss_weight=0.0, **overrides)
    torch.manual_seed(0)
    quantizer = build_quantizer(config).train()
    quantizer(features(dim=16))  # initialise
    z, upstream = features(dim=16, seed=1), features(dim=16, seed=2)
    got = _reconstruction_gradient(quantizer, z, upstream)
    vanilla = build_quantizer(tiny_config("vanilla", embed_dim=16, commitment=0.0)).train()
    vanilla(features(dim=16))
    assert torch.equal(_reconstruction_gradient(vanilla, z, upstream), upstream)
    target = z.clone().requires_grad_()
    (quantizer.coding_target(target) * upstream).sum().backward()  # the gradient through the coding target
    cosine = torch.nn.functional.cosine_similarity(got.flatten(), target.grad.flatten(), dim=0)
    assert cosine > 0.99 and 0.5 < got.norm() / target.grad.norm() < 2


def test_the_dictionary_learns_through_the_sparse_code():
    # Task-driven learning: the reconstruction loss reaches the dictionary through the code's dependence
    # on it, not only through z_q = D c with the code held fixed.
    torch.manual_seed(0)
    quantizer = build_quantizer(tiny_config("omp", commitment=0.0, dictionary_loss_weight=0.0)).train()
    quantizer(features())  # initialise
    z, upstream = features(seed=1), features(seed=2)
    out = quantizer(z)
    (out.z_q * upstream).sum().backward()
    full = quantizer.dictionary.grad.clone()
    quantizer.dictionary.grad = None
    held = quantizer.decode_codes(out.codes)  # the same z_q, with the code as constants
    (held * upstream).sum().backward()
    fixed_code = quantizer.dictionary.grad
    assert fixed_code.abs().sum() > 0
    assert (full - fixed_code).norm() > 0.1 * full.norm()


def test_task_driven_encoder_gradient_stays_inside_the_chosen_atoms_span():
    torch.manual_seed(0)
    config = tiny_config("omp", embed_dim=16, n_nonzero=1, normalize_latents=False, commitment=0.0,
                         dictionary_loss_weight=0.0, encoder_gradient="task_driven")
    quantizer = build_quantizer(config).train()
    quantizer(features(dim=16))
    z, upstream = features(dim=16, seed=1), features(dim=16, seed=2)
    got = _reconstruction_gradient(quantizer, z, upstream).permute(0, 2, 3, 1).reshape(-1, 16)
    chosen = quantizer.codebook().detach()[:, quantizer.eval()(z).codes.atoms.reshape(-1).clamp_min(0)].t()
    assert torch.allclose(got, (got * chosen).sum(1, keepdim=True) * chosen, atol=1e-5)  # parallel to the atom


def test_omp_with_one_atom_picks_the_nearest_unit_atom():
    g = torch.Generator().manual_seed(0)
    atoms = random_dictionary(8, 32, generator=g)
    z = atoms[:, torch.randint(32, (64,), generator=g)].t() + 0.05 * torch.randn(64, 8, generator=g)
    z = z.reshape(4, 4, 4, 8).permute(0, 3, 1, 2)
    sparse = SparseQuantizer(8, 32, "omp", n_nonzero=1, normalize_latents=True, restart_dead=False).eval()
    sparse.dictionary.data.copy_(atoms)
    sparse.initialized.fill_(True)
    vanilla = VectorQuantizerEMA(8, 32, restart_dead=False).eval()
    vanilla.embed.copy_(atoms)
    normalized = torch.nn.functional.normalize(z, dim=1)
    assert torch.equal(sparse(z).codes.atoms, vanilla(normalized).codes.atoms)


def test_ema_codebook_moves_towards_its_assigned_vectors():
    torch.manual_seed(0)
    quantizer = VectorQuantizerEMA(8, 32, decay=0.5, restart_dead=False).train()
    z = features()
    flat = z.permute(0, 2, 3, 1).reshape(-1, 8)
    quantizer.embed.copy_(flat[:32].t())  # started from data but not yet at the cluster means (k-means would be)
    quantizer.embed_avg.copy_(quantizer.embed)
    quantizer.initialized.fill_(True)
    before = quantizer.embed.clone()
    for _ in range(5):
        quantizer(z)
    index = quantizer.eval()(z).codes.atoms.reshape(-1)
    used = index.unique()
    mean = torch.stack([flat[index == i].mean(0) for i in used], dim=1)
    assert (quantizer.embed[:, used] - mean).norm() < (before[:, used] - mean).norm()


@pytest.mark.parametrize("selection_fn", ["vanilla", "omp", "lasso"])  # rvq: each stage is a vanilla codebook
def test_dead_entries_are_reseeded_from_encoder_outputs(selection_fn):
    torch.manual_seed(0)
    quantizer = build_quantizer(tiny_config(selection_fn)).train()
    quantizer(features())
    quantizer.after_step()
    vanilla = selection_fn == "vanilla"
    table = (lambda: quantizer.embed.clone()) if vanilla else (lambda: quantizer.dictionary.detach().clone())
    before = table()
    starved = torch.arange(32) % 2 == 0
    quantizer.usage[starved] = 0.0  # as if unused for a long while
    # A batch made of odd entries only: the starved even ones stay unused, so they are dead.
    odd = before[:, 1::2] if vanilla else quantizer.codebook().detach()[:, 1::2]
    z = odd[:, torch.arange(64) % 16].t().reshape(4, 4, 4, 8).permute(0, 3, 1, 2).contiguous()
    quantizer(z)
    quantizer.after_step()
    flat = z.permute(0, 2, 3, 1).reshape(-1, 8)
    seeds = flat if vanilla else torch.nn.functional.normalize(flat, dim=1)
    after = table()
    reseeded = [j for j in range(32) if (seeds - after[:, j]).norm(dim=1).min() < 1e-5
                and (after[:, j] - before[:, j]).norm() > 1e-3]
    assert len(reseeded) >= 8
    assert all(starved[j] for j in reseeded)
    if not vanilla:  # nothing else moves without an optimizer step
        assert torch.allclose(after[:, ~starved], before[:, ~starved], atol=1e-6)


def test_uniform_levels_cover_the_fitted_range():
    quantizer = SparseQuantizer(8, 32, "omp", coef_levels=5, coef_quantizer="uniform")
    quantizer.coef_range.fill_(2.0)
    quantizer.level_table.copy_(uniform_levels(5, quantizer.coef_range))
    values = torch.tensor([-5.0, -2.0, -0.9, 0.0, 1.1, 2.0, 9.0])
    levels = quantizer.quantize_coefficients(values)
    assert levels.tolist() == [0, 0, 1, 2, 3, 4, 4]
    assert quantizer.level_table.tolist() == [-2.0, -1.0, 0.0, 1.0, 2.0]
    assert uniform_levels(2, torch.tensor(0.5)).tolist() == [-0.5, 0.5]  # two levels: the sign
    assert uniform_levels(4, torch.tensor(3.0)).tolist() == [-3.0, -1.0, 1.0, 3.0]


@pytest.mark.parametrize("coef_levels", [2, 3, 4, 8, 16])
@pytest.mark.parametrize("coef_quantizer", ["uniform", "learned"])
def test_few_levels_train_and_decode_exactly(coef_levels, coef_quantizer):
    torch.manual_seed(0)
    quantizer = build_quantizer(tiny_config("omp", coef_levels=coef_levels, coef_quantizer=coef_quantizer)).train()
    for seed in range(3):
        quantizer(features(seed=seed))
        quantizer.after_step()
    table = quantizer.level_table
    assert table.shape == (coef_levels,) and bool((table[1:] > table[:-1]).all())  # ascending, distinct
    out = quantizer.eval()(features(seed=5))
    validate_codes(out.codes, 32, coef_levels)
    assert torch.equal(quantizer.decode_codes(out.codes), out.z_q)
    assert (quantizer.level_table[out.codes.levels[out.codes.present]] != 0).all()


def test_pairs_quantised_to_zero_are_not_coded():
    torch.manual_seed(0)
    config = tiny_config("omp", n_nonzero=3, coef_levels=3, normalize_latents=True)  # levels -m, 0, m
    quantizer = build_quantizer(config).train()
    quantizer(features())
    quantizer.coef_range.fill_(1.2)  # |c| < 0.6 rounds to the zero level: most, not all (unit-norm latents)
    quantizer.level_table.copy_(uniform_levels(3, quantizer.coef_range))
    out = quantizer.eval()(features(seed=1))
    assert (~out.codes.present).any() and out.codes.present.any()
    assert (out.codes.levels[out.codes.present] != 1).all()
    key = torch.where(out.codes.present, out.codes.atoms, 10**6)
    assert torch.equal(key, key.sort(dim=-1).values)  # canonical order: empty slots last
    assert torch.equal(quantizer.decode_codes(out.codes), out.z_q)


def test_learned_levels_move_to_the_mean_of_the_coefficients_they_quantise():
    quantizer = SparseQuantizer(8, 32, "omp", coef_levels=2, coef_quantizer="learned", coef_decay=0.5)
    quantizer.level_table.copy_(torch.tensor([-1.0, 1.0]))
    quantizer.level_sum.copy_(quantizer.level_table)
    values = torch.tensor([-0.2, -0.4, 0.3, 0.5, 0.7])
    for _ in range(20):
        quantizer._fit_levels(values)
    assert torch.allclose(quantizer.level_table, torch.tensor([-0.3, 0.5]), atol=1e-4)


def test_residual_stages_code_what_the_earlier_ones_left():
    torch.manual_seed(0)
    z = features(batch=16)
    errors = []
    for stages in (1, 2, 4):
        torch.manual_seed(0)
        quantizer = build_quantizer(tiny_config("rvq", stages=stages)).train()
        quantizer(z)  # k-means start, stage by stage on the residuals
        out = quantizer.eval()(z)
        atoms = out.codes.atoms.reshape(-1, stages)
        assert all(((atoms[:, k] >= 32 * k) & (atoms[:, k] < 32 * (k + 1))).all() for k in range(stages))
        flat = z.permute(0, 2, 3, 1).reshape(-1, 8)
        expected = sum(quantizer.stages[k].embed[:, atoms[:, k] - 32 * k].t() for k in range(stages))
        assert torch.allclose(out.z_q.permute(0, 2, 3, 1).reshape(-1, 8), expected, atol=1e-5)
        errors.append(float((out.z_q - z).square().mean()))
    assert errors[0] > errors[1] > errors[2]


def test_a_residual_vq_codes_a_large_map_in_blocks_as_in_one():
    """Outside training the nearest-entry search runs in blocks of rows (speed): the codes are each
    stage's nearest entries to the residual, as one search over all rows gives them."""
    torch.manual_seed(0)
    z = torch.randn(2, 8, 64, 48)  # 6,144 vectors: more than a block
    quantizer = build_quantizer(tiny_config("rvq", stages=3)).train()
    quantizer(z[:, :, :8])  # k-means start
    out = quantizer.eval()(z)
    residual = z.permute(0, 2, 3, 1).reshape(-1, 8)
    for k, stage in enumerate(quantizer.stages):
        nearest = stage.assign(residual)  # all rows at once
        assert torch.equal(out.codes.atoms.reshape(-1, 3)[:, k], nearest + 32 * k)
        residual = residual - stage.embed[:, nearest].t()


def test_a_zero_latent_decodes_to_zero():
    torch.manual_seed(0)
    quantizer = build_quantizer(tiny_config("omp")).train()
    quantizer(features())
    z = features()
    z[0, :, 0, 0] = 0  # OMP gives it K atoms with coefficient 0
    out = quantizer.eval()(z)
    assert torch.equal(out.z_q[0, :, 0, 0], torch.zeros(8))


def test_a_residual_vq_codes_the_stages_each_image_keeps():
    """``kept`` (the model's stage dropout) cuts each image's code to its first stages; an image that keeps none is
    not sent: zero to the decoder, and no gradient to its encoder output."""
    torch.manual_seed(0)
    z = features(batch=4).requires_grad_(True)
    quantizer = build_quantizer(tiny_config("rvq", stages=4)).train()
    out = quantizer(z, torch.tensor([0, 1, 3, 4]))
    kept = out.codes.present.sum(-1).flatten(1)  # [B, positions]
    assert (kept == torch.tensor([0, 1, 3, 4])[:, None]).all()
    assert (out.codes.present == (torch.arange(4) < out.codes.present.sum(-1, keepdim=True))).all()  # prefixes
    assert torch.allclose(out.z_q, quantizer.decode_codes(out.codes), atol=1e-6)
    assert torch.equal(out.z_q[0], torch.zeros_like(out.z_q[0]))
    out.z_q.sum().backward()
    assert torch.equal(z.grad[0], torch.zeros_like(z.grad[0])) and (z.grad[1:] == 1).all()
    assert quantizer.eval()(z).codes.present.all()  # by default every stage


def test_any_prefix_of_residual_stages_decodes_to_the_sum_of_its_entries():
    torch.manual_seed(0)
    z = features(batch=16)
    quantizer = build_quantizer(tiny_config("rvq", stages=3)).train()
    quantizer(z)
    codes = quantizer.eval()(z).codes
    errors = []
    for q in (1, 2, 3):
        prefix = type(codes)(codes.atoms[..., :q], codes.levels[..., :q])
        atoms = prefix.atoms.reshape(-1, q)
        expected = sum(quantizer.stages[k].embed[:, atoms[:, k] - 32 * k].t() for k in range(q))
        decoded = quantizer.decode_codes(prefix).permute(0, 2, 3, 1).reshape(-1, 8)
        assert torch.allclose(decoded, expected, atol=1e-5)
        errors.append(float((decoded - z.permute(0, 2, 3, 1).reshape(-1, 8)).square().mean()))
    assert errors[0] > errors[1] > errors[2]


def test_stage_dropout_is_for_residual_vq_only():
    with pytest.raises(ValueError, match="model.stage_dropout is for selection_fn rvq only"):
        tiny_config("omp", stage_dropout=True)
