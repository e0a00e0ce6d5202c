import numpy as np
import pytest
import torch

from sparse_vqvae.sparse_coding import fista, lasso

from .synthetic import DEVICES, make_sparse_signals
from .test_fista import lasso_objective, worst_gap_to_scikit_learn


FORMS = ["rows", "batched"]  # the CPU's compiled per-row path, and the batched one GPUs run


@pytest.mark.parametrize("form", FORMS)
@pytest.mark.parametrize("alpha", [0.02, 0.1, 0.5])
def test_objective_matches_scikit_learn_lasso(alpha, form):
    x, dictionary, _ = make_sparse_signals(40, 32, 96, 4, noise=0.05)
    assert worst_gap_to_scikit_learn(lasso(x, dictionary, alpha, form=form), x, dictionary, alpha) <= 1e-4


@pytest.mark.parametrize("form", FORMS)
def test_equals_fista_exact_to_rounding(form):
    x, dictionary, _ = make_sparse_signals(300, 32, 96, 4, noise=0.05)
    torch.testing.assert_close(lasso(x, dictionary, 0.1, form=form), fista(x, dictionary, 0.1, n_iter=3000),
                               atol=1e-9, rtol=0)


def test_the_forms_agree_and_a_row_does_not_depend_on_its_batch():
    # In float64 the two walk the same paths; in float32 the batched path's rounding can take another event
    # order on a near-tie (1 row in 500 here), which the per-row path, in float64 inside, does not.
    x, dictionary, _ = make_sparse_signals(500, 32, 96, 5, noise=0.05)
    rows = lasso(x, dictionary, 0.05, form="rows", max_nonzero=4)
    torch.testing.assert_close(rows, lasso(x, dictionary, 0.05, form="batched", max_nonzero=4), atol=1e-9, rtol=0)
    assert torch.equal(rows[7:9], lasso(x[7:9], dictionary, 0.05, form="rows", max_nonzero=4))
    single = lasso(x.float(), dictionary.float(), 0.05, form="rows", max_nonzero=4)
    torch.testing.assert_close(single, rows.float(), atol=1e-5, rtol=0)


@pytest.mark.parametrize("form", FORMS)
def test_max_nonzero_gives_the_exact_lasso_code_at_a_larger_penalty(form):
    x, dictionary, _ = make_sparse_signals(200, 32, 96, 6, noise=0.05)
    code = lasso(x, dictionary, 0.01, max_nonzero=3, form=form)
    count = (code != 0).sum(dim=1)
    assert (count <= 3).all() and (count == 3).float().mean() > 0.9
    # On its path point the code solves the LASSO for lambda' = max |d_j^T r| >= alpha (KKT).
    correlation = (x - code @ dictionary.t()) @ dictionary
    level = correlation.abs().amax(dim=1, keepdim=True)
    assert (level >= 0.01 - 1e-12).all()
    active = code != 0
    np.testing.assert_allclose(correlation[active].numpy(), (level * code.sign()).expand_as(code)[active].numpy(),
                               rtol=1e-7)


@pytest.mark.slow
@pytest.mark.parametrize("form", ["auto", "batched"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("device", DEVICES)
def test_dtypes_devices_and_degenerate_rows(dtype, device, form):
    x, dictionary, _ = make_sparse_signals(300, 16, 48, 3, noise=0.05, dtype=dtype)
    x[0] = 0
    doubled = torch.cat([dictionary, dictionary[:, :4]], dim=1)  # duplicated atoms
    code = lasso(x.to(device), doubled.to(device), 0.1, chunk_size=128, form=form)
    assert code.shape == (300, 52) and code.dtype == dtype and code.device.type == device
    assert torch.isfinite(code).all() and (code[0] == 0).all()
    best = lasso_objective(fista(x.double(), doubled.double(), 0.1, n_iter=3000), x.double(), doubled.double(), 0.1)
    ours = lasso_objective(code.cpu().double(), x.double(), doubled.double(), 0.1)
    assert ((ours - best) / best.clamp_min(1e-12)).max().item() < 1e-4


@pytest.mark.parametrize("form", FORMS)
def test_alpha_above_every_correlation_gives_zero(form):
    x, dictionary, _ = make_sparse_signals(20, 16, 48, 3, noise=0.05)
    alpha = (x @ dictionary).abs().max().item() * 1.01
    assert torch.equal(lasso(x, dictionary, alpha, form=form), torch.zeros(20, 48, dtype=torch.float64))


@pytest.mark.parametrize(
    "kwargs, name",
    [(dict(alpha=-0.1), "alpha"), (dict(alpha=0.1, max_nonzero=0), "max_nonzero"),
     (dict(alpha=0.1, max_nonzero=17), "max_nonzero"), (dict(alpha=0.1, max_steps=0), "max_steps"),
     (dict(alpha=0.1, form="fast"), "form"), (dict(alpha=0.1, form="rows", dtype=torch.float16), "form")],
)
def test_bad_input_names_the_argument(kwargs, name):
    dtype = kwargs.pop("dtype", torch.float32)
    with pytest.raises(ValueError, match=name):
        lasso(torch.randn(4, 8, dtype=dtype), torch.randn(8, 16, dtype=dtype), **kwargs)



def test_the_per_row_path_certifies_nearly_every_row_and_refuses_a_wrong_support():
    from sparse_vqvae.sparse_coding.rowwise import certified, lasso_rows

    x, dictionary, _ = make_sparse_signals(400, 32, 96, 4, noise=0.05)
    code = torch.zeros(400, 96, dtype=x.dtype)
    certified_rows = lasso_rows(x, dictionary, 0.1, None, 128, code)
    assert certified_rows.float().mean() > 0.99  # FISTA is the exception, not the rule
    exact = fista(x, dictionary, 0.1, n_iter=3000)
    torch.testing.assert_close(code[certified_rows], exact[certified_rows], atol=1e-9, rtol=0)
    start, gram = (x[0] @ dictionary).numpy(), (dictionary.t() @ dictionary).numpy()
    support = code[0].nonzero().flatten().numpy()

    def certifies(values: np.ndarray, penalty: float = 0.1) -> bool:
        return certified(start, gram, support, values, penalty, np.zeros(96))

    assert certifies(code[0][support].numpy())
    assert not certifies(-code[0][support].numpy())  # the signs disagree
    assert not certifies(code[0][support].numpy(), 0.01)  # at a lower penalty more atoms join: KKT fails
