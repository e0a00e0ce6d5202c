import numpy as np
import pytest
import torch
from sklearn.linear_model import orthogonal_mp_gram

from sparse_vqvae.sparse_coding import SparseCode, omp, random_dictionary

from .synthetic import DEVICES, make_sparse_signals

# The CPU's compiled per-row form, and the batched form GPUs run with each way of getting the correlations.
VARIANTS = {"rows": dict(form="rows"), "gemm": dict(form="batched", correlations="gemm"),
            "gram": dict(form="batched", correlations="gram")}
FORMS = ["rows", "batched"]


@pytest.mark.parametrize("variant", VARIANTS)
def test_recovers_supports_of_sparse_signals(variant):
    x, dictionary, support = make_sparse_signals(2000, 64, 256, 4, noise=0.01)
    code = omp(x, dictionary, 4, **VARIANTS[variant])
    found = code.indices.sort(dim=1).values
    recovered = (found == support.sort(dim=1).values).all(dim=1).float().mean().item()
    assert recovered >= 0.99


@pytest.mark.parametrize("variant", VARIANTS)
@pytest.mark.parametrize("k", [1, 5, 12])
def test_matches_scikit_learn_on_random_data(variant, k):
    g = torch.Generator().manual_seed(1)
    dictionary = random_dictionary(32, 128, generator=g, dtype=torch.float64)
    x = torch.randn(300, 32, generator=g, dtype=torch.float64)
    ours = omp(x, dictionary, k, chunk_size=64, **VARIANTS[variant]).to_dense(128)
    gram = (dictionary.t() @ dictionary).numpy()
    reference = orthogonal_mp_gram(gram, (x @ dictionary).numpy().T, n_nonzero_coefs=k).T
    np.testing.assert_allclose(ours.numpy(), reference, atol=1e-4)


@pytest.mark.parametrize("form", ["auto", "batched"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("device", DEVICES)
def test_codes_are_least_squares_on_their_support(dtype, device, form):
    x, dictionary, _ = make_sparse_signals(64, 16, 40, 3, noise=0.1, dtype=dtype)
    x, dictionary = x.to(device), dictionary.to(device)
    code = omp(x, dictionary, 6, form=form)
    assert code.indices.dtype == torch.long and code.indices.shape == (64, 6)
    assert code.values.dtype == dtype and code.values.device.type == device
    # Residual orthogonal to every selected atom: the normal equations of least squares.
    residual = x - code.to_dense(40) @ dictionary.t()
    selected = dictionary.t()[code.indices]  # [B, K, d]
    tol = 1e-4 if dtype == torch.float32 else 1e-10
    assert torch.bmm(selected, residual.unsqueeze(2)).abs().max().item() < tol


@pytest.mark.parametrize("form", FORMS)
def test_selection_order_and_dense_form(form):
    x, dictionary, _ = make_sparse_signals(10, 16, 32, 2, noise=0.0)
    code = omp(x, dictionary, 3, form=form)
    assert isinstance(code, SparseCode)
    dense = code.to_dense(32)
    assert torch.equal(dense.gather(1, code.indices), code.values)
    assert ((dense != 0).sum(dim=1) <= 3).all()
    # The first atom chosen is the one most correlated with the signal.
    assert torch.equal(code.indices[:, 0], (x @ dictionary).abs().argmax(dim=1))


@pytest.mark.parametrize("form", FORMS)
def test_zero_signals_give_zero_codes(form):
    _, dictionary, _ = make_sparse_signals(1, 16, 32, 2, noise=0.0)
    code = omp(torch.zeros(5, 16, dtype=torch.float64), dictionary, 4, form=form)
    assert torch.equal(code.values, torch.zeros(5, 4, dtype=torch.float64))
    assert all(row.unique().numel() == 4 for row in code.indices)


@pytest.mark.parametrize("form", FORMS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_more_atoms_than_dimensions_and_duplicates_stay_finite(dtype, form):
    g = torch.Generator().manual_seed(3)
    base = random_dictionary(8, 20, generator=g, dtype=dtype)
    dictionary = torch.cat([base, base[:, :5]], dim=1)  # five duplicated atoms
    x = torch.randn(50, 8, generator=g, dtype=dtype)
    code = omp(x, dictionary, 12, form=form)  # n_nonzero > d
    assert torch.isfinite(code.values).all()
    assert all(row.unique().numel() == 12 for row in code.indices)
    assert ((code.values != 0).sum(dim=1) <= 8).all()
    residual = x - code.to_dense(25) @ dictionary.t()
    assert residual.norm(dim=1).max().item() < (1e-3 if dtype == torch.float32 else 1e-9)


def test_the_forms_agree_and_a_row_does_not_depend_on_its_batch():
    x, dictionary, _ = make_sparse_signals(500, 32, 96, 5, noise=0.05)
    rows = omp(x, dictionary, 6, form="rows")
    batched = omp(x, dictionary, 6, form="batched")
    assert torch.equal(rows.indices, batched.indices)
    torch.testing.assert_close(rows.values, batched.values, atol=1e-10, rtol=0)
    assert torch.equal(omp(x[7:9], dictionary, 6, form="rows").values, rows.values[7:9])
    single = omp(x.float(), dictionary.float(), 6, form="rows")  # float64 inside: float32 in and out
    assert single.values.dtype == torch.float32
    assert (single.indices == rows.indices).all(dim=1).float().mean() > 0.99
    torch.testing.assert_close(single.values, rows.values.float(), atol=1e-4, rtol=0)
    one_atom = omp(x.float(), dictionary.float(), 1)  # auto on the CPU: one atom goes the batched way
    assert torch.equal(one_atom.values, omp(x.float(), dictionary.float(), 1, form="batched").values)



@pytest.mark.parametrize(
    "kwargs, name",
    [
        (dict(x=torch.zeros(4, 8, 1), n_nonzero=2), "x"),
        (dict(dictionary=torch.zeros(8), n_nonzero=2), "dictionary"),
        (dict(x=torch.zeros(4, 7), n_nonzero=2), "dimension"),
        (dict(n_nonzero=0), "n_nonzero"),
        (dict(n_nonzero=2.5), "n_nonzero"),
        (dict(n_nonzero=17), "n_nonzero"),
        (dict(x=torch.full((4, 8), float("nan")), n_nonzero=2), "x"),
        (dict(dictionary=torch.full((8, 16), float("inf")), n_nonzero=2), "dictionary"),
        (dict(n_nonzero=2, correlations="fast"), "correlations"),
        (dict(n_nonzero=2, chunk_size=0), "chunk_size"),
        (dict(n_nonzero=2, form="fast"), "form"),
        (dict(x=torch.randn(4, 8).half(), dictionary=torch.randn(8, 16).half(), n_nonzero=2, form="rows"), "form"),
    ],
)
def test_bad_input_names_the_argument(kwargs, name):
    args = dict(x=torch.randn(4, 8), dictionary=torch.randn(8, 16))
    args.update(kwargs)
    with pytest.raises(ValueError, match=name):
        omp(args.pop("x"), args.pop("dictionary"), **args)


def test_empty_batch():
    code = omp(torch.zeros(0, 8), torch.randn(8, 16), 3)
    assert code.indices.shape == (0, 3) and code.values.shape == (0, 3)
