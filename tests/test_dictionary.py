import pytest
import torch

from sparse_vqvae.sparse_coding import init_dictionary_from_data, normalize_atoms, omp, random_dictionary

from .synthetic import make_sparse_signals


def test_normalize_atoms_gives_unit_columns_and_keeps_zero_columns():
    d = torch.randn(8, 5, dtype=torch.float64) * 3
    d[:, 2] = 0
    unit = normalize_atoms(d)
    norms = unit.norm(dim=0)
    assert torch.allclose(norms[[0, 1, 3, 4]], torch.ones(4, dtype=torch.float64))
    assert norms[2] == 0


def test_random_dictionary_is_seeded():
    a = random_dictionary(8, 16, generator=torch.Generator().manual_seed(1))
    b = random_dictionary(8, 16, generator=torch.Generator().manual_seed(1))
    assert torch.equal(a, b) and torch.allclose(a.norm(dim=0), torch.ones(16))


def test_init_from_data_fits_the_data_better_than_random():
    x, _, _ = make_sparse_signals(2000, 16, 32, 2, noise=0.01)
    g = torch.Generator().manual_seed(0)
    learned = init_dictionary_from_data(x, 32, 2, mod_iterations=10, generator=g)
    assert learned.shape == (16, 32)
    assert torch.allclose(learned.norm(dim=0), torch.ones(32, dtype=torch.float64))

    def error(dictionary):
        code = omp(x, dictionary, 2).to_dense(32)
        return ((x - code @ dictionary.t()) ** 2).sum(dim=1).mean().item()

    random = random_dictionary(16, 32, generator=torch.Generator().manual_seed(123), dtype=torch.float64)
    assert error(learned) < 0.5 * error(random)
    again = init_dictionary_from_data(x, 32, 2, mod_iterations=10, generator=torch.Generator().manual_seed(0))
    assert torch.equal(learned, again)


def test_init_with_fewer_signals_than_atoms():
    x = torch.randn(5, 8)
    d = init_dictionary_from_data(x, 20, 2, mod_iterations=2, generator=torch.Generator().manual_seed(0))
    assert d.shape == (8, 20) and torch.isfinite(d).all()


def test_init_rejects_bad_input():
    with pytest.raises(ValueError, match="num_atoms"):
        init_dictionary_from_data(torch.randn(10, 4), 0, 1)
    with pytest.raises(ValueError, match="non-zero rows"):
        init_dictionary_from_data(torch.zeros(10, 4), 8, 1)
