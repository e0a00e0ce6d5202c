import pytest
import torch

from sparse_vqvae.codes import EMPTY, validate_codes
from sparse_vqvae.quantizers import SparseQuantizer, VectorQuantizerEMA, build_quantizer
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
    slots = {"vanilla": 1, "omp": 2, "fista": 3}[selection_fn]
    assert out.codes.atoms.shape == (4, 4, 4, slots)
    validate_codes(out.codes, 32, 1 if selection_fn == "vanilla" else 16)
    if selection_fn == "omp":
        assert out.codes.present.all()
    assert torch.equal(quantizer.decode_codes(out.codes), out.z_q)
    for key in ("perplexity", "dead_share", "nonzeros_per_position", "level_histogram"):
        assert key in out.stats


def test_fista_codes_hold_at_most_max_nonzero_pairs_in_canonical_order():
    torch.manual_seed(0)
    quantizer = build_quantizer(tiny_config("fista", alpha=0.5))
    out = quantizer.train()(features())
    atoms = out.codes.atoms
    assert (out.codes.present.sum(-1) <= 3).all() and (~out.codes.present).any()
    key = torch.where(atoms == EMPTY, 10**6, atoms)
    assert torch.equal(key, key.sort(dim=-1).values)
    assert (out.codes.levels[~out.codes.present] == 0).all()


def test_gradients_reach_encoder_and_dictionary_through_the_sparse_code():
    torch.manual_seed(0)
    quantizer = build_quantizer(tiny_config("omp")).train()
    quantizer(features())  # initialise
    z = features(seed=1).requires_grad_()
    out = quantizer(z)
    (out.z_q.square().sum() + out.loss).backward()
    assert z.grad is not None and z.grad.abs().sum() > 0
    assert quantizer.dictionary.grad is not None and quantizer.dictionary.grad.abs().sum() > 0


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


@pytest.mark.parametrize("selection_fn", SELECTION_FNS)
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
    odd = before[:, 1::2] if vanilla else quantizer.atoms.detach()[:, 1::2]
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


def test_coefficient_levels_cover_the_fitted_range():
    quantizer = SparseQuantizer(8, 32, "omp", coef_levels=5)
    quantizer.coef_range.fill_(2.0)
    values = torch.tensor([-5.0, -2.0, -0.9, 0.0, 1.1, 2.0, 9.0])
    levels = quantizer.quantize_coefficients(values)
    assert levels.tolist() == [0, 0, 1, 2, 3, 4, 4]
    assert quantizer.level_values().tolist() == [-2.0, -1.0, 0.0, 1.0, 2.0]
    even = SparseQuantizer(8, 32, "omp", coef_levels=4)
    even.coef_range.fill_(2.0)
    assert even.level_values().tolist() == [-2.0, -1.0, 0.0, 1.0]  # zero is always a level
    assert even.quantize_coefficients(torch.tensor([0.0, -7.0, 7.0])).tolist() == [2, 0, 3]


def test_a_zero_latent_decodes_to_zero():
    torch.manual_seed(0)
    quantizer = build_quantizer(tiny_config("omp")).train()
    quantizer(features())
    z = features()
    z[0, :, 0, 0] = 0  # OMP gives it K atoms with coefficient 0
    out = quantizer.eval()(z)
    assert torch.equal(out.z_q[0, :, 0, 0], torch.zeros(8))
