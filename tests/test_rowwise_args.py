"""The C entry points fed bad arguments. sparse_coding/_rowwise.c's (``omp``, ``lasso_paths``,
``lasso_certified``) refuse them with a ValueError or a TypeError that names the argument (wrong dtype, size,
layout, a read-only output, negative or zero counts, counts whose products overflow, NaN or infinity in the signals
or the dictionary, with the row named), before any memory is read or written; good arguments still code. At the
end, the same for _incremental.c's (the plan, the head and the calls with a row count). Where an extension is not
built there is nothing to feed."""

from __future__ import annotations

import numpy as np
import pytest

_rowwise = pytest.importorskip("sparse_vqvae.sparse_coding._rowwise")
_incremental = pytest.importorskip("sparse_vqvae._incremental")

ROWS, DIM, N, COUNT = 5, 4, 6, 2
HUGE = 2**61  # x 8 bytes wraps a 64-bit size to 0: an empty buffer would pass a size check that overflowed


def dictionary() -> np.ndarray:
    d = np.random.default_rng(0).standard_normal((DIM, N))
    return d / np.linalg.norm(d, axis=0)


def omp_args(**changes) -> dict:
    d = dictionary()
    args = dict(signals=np.random.default_rng(1).standard_normal((ROWS, DIM)), dictionary=d, gram=d.T @ d,
                rows=ROWS, dim=DIM, n=N, count=COUNT, dependence=1e-12,
                indices=np.zeros((ROWS, COUNT), dtype=np.int64), values=np.zeros((ROWS, COUNT)))
    return args | changes


def lasso_args(**changes) -> dict:
    d = dictionary()
    args = dict(signals=np.random.default_rng(1).standard_normal((ROWS, DIM)), dictionary=d, gram=d.T @ d,
                rows=ROWS, n=N, dim=DIM, alpha=0.1, cap=0, max_steps=100, codes=np.zeros((ROWS, N)),
                penalties=np.full(ROWS, 0.1), done=np.zeros(ROWS, dtype=np.bool_))
    return args | changes


def certified_args(**changes) -> dict:
    d = dictionary()
    x = np.random.default_rng(1).standard_normal(DIM)
    args = dict(start=d.T @ x, gram=d.T @ d, n=N, atoms=np.array([0, 1], dtype=np.int64),
                values=np.array([0.5, -0.5]), k=2, penalty=0.1, code=np.zeros(N))
    return args | changes


def omp(**changes):
    return _rowwise.omp(*omp_args(**changes).values())


def lasso(**changes):
    return _rowwise.lasso_paths(*lasso_args(**changes).values())


def certified(**changes):
    return _rowwise.lasso_certified(*certified_args(**changes).values())


ENTRY_POINTS = {"omp": (omp, omp_args), "lasso_paths": (lasso, lasso_args), "lasso_certified": (certified, certified_args)}


def test_good_arguments_code():
    args = omp_args()
    _rowwise.omp(*args.values())
    correlations = np.abs(args["signals"] @ args["dictionary"])
    assert np.array_equal(args["indices"][:, 0], correlations.argmax(axis=1))  # OMP's first atom: the most correlated
    args = lasso_args()
    _rowwise.lasso_paths(*args.values())
    assert args["done"].all() and (args["codes"] != 0).any()
    assert isinstance(certified(), bool)


# Each entry point's array arguments, each given the wrong dtype, the wrong size, a non-contiguous view, an object
# that is no array, and (outputs) a read-only array.
ARRAYS = [("omp", name) for name in ("signals", "dictionary", "gram", "indices", "values")] + \
         [("lasso_paths", name) for name in ("signals", "dictionary", "gram", "codes", "penalties", "done")] + \
         [("lasso_certified", name) for name in ("start", "gram", "atoms", "values", "code")]
OUTPUTS = {("omp", "indices"), ("omp", "values"), ("lasso_paths", "codes"), ("lasso_paths", "penalties"),
           ("lasso_paths", "done"), ("lasso_certified", "code")}


def wrong_dtype(good: np.ndarray) -> np.ndarray:
    if good.dtype == np.int64:
        return good.astype(np.int32)
    if good.dtype == np.bool_:
        return good.astype(np.int32)
    return good.astype(np.int32 if good.dtype == np.float32 else np.float16)


@pytest.mark.parametrize("entry, name", ARRAYS)
def test_an_array_of_the_wrong_dtype_size_or_layout_is_refused_by_name(entry, name):
    call, args = ENTRY_POINTS[entry]
    good = args()[name]
    with pytest.raises(ValueError, match=f"^{name}: expected"):
        call(**{name: wrong_dtype(good)})
    with pytest.raises(ValueError, match=f"^{name}: expected"):
        call(**{name: good.reshape(-1)[:-1].copy()})  # one item short
    wide = np.zeros(good.shape[:-1] + (2 * good.shape[-1],), dtype=good.dtype)
    with pytest.raises(ValueError, match=f"^{name}: expected a C-contiguous.*not C-contiguous"):
        call(**{name: wide[..., ::2]})  # the right size and dtype, every other item
    with pytest.raises(TypeError, match=f"^{name}: expected .*list"):
        call(**{name: good.tolist()})
    if (entry, name) in OUTPUTS:
        frozen = good.copy()
        frozen.flags.writeable = False
        with pytest.raises(ValueError, match=f"^{name}: expected a C-contiguous, writable.*read-only"):
            call(**{name: frozen})


@pytest.mark.parametrize("entry, name, value, message", [
    ("omp", "rows", -1, "rows must be at least 0, got -1"),
    ("omp", "dim", 0, "dim must be at least 1, got 0"),
    ("omp", "n", -6, "n must be at least 1, got -6"),
    ("omp", "count", 0, r"count: 0 is not in 1\.\.6"),
    ("omp", "count", N + 1, r"count: 7 is not in 1\.\.6"),
    ("omp", "count", -2, r"count: -2 is not in 1\.\.6"),
    ("omp", "dependence", -1.0, "dependence must be a finite number >= 0, got -1.0"),
    ("omp", "dependence", float("nan"), "dependence must be a finite number >= 0, got nan"),
    ("lasso_paths", "rows", -5, "rows must be at least 0, got -5"),
    ("lasso_paths", "n", 0, "n must be at least 1, got 0"),
    ("lasso_paths", "dim", -4, "dim must be at least 1, got -4"),
    ("lasso_paths", "cap", -1, "cap must be at least 0, got -1"),  # was a memset of (size_t)-8 bytes
    ("lasso_paths", "max_steps", -1, "max_steps must be at least 0, got -1"),
    ("lasso_paths", "alpha", -0.1, "alpha must be a finite number >= 0, got -0.1"),
    ("lasso_paths", "alpha", float("inf"), "alpha must be a finite number >= 0, got inf"),
    ("lasso_certified", "n", 0, "n must be at least 1, got 0"),
    ("lasso_certified", "k", -1, "k must be at least 0, got -1"),
    ("lasso_certified", "k", N + 1, "k: 7 atoms are more than the 6 there are"),
    ("lasso_certified", "penalty", float("nan"), "penalty must be a finite number >= 0, got nan"),
])
def test_a_count_or_number_out_of_range_is_refused_by_name(entry, name, value, message):
    call, _ = ENTRY_POINTS[entry]
    with pytest.raises(ValueError, match=f"^{message}$"):
        call(**{name: value})


@pytest.mark.parametrize("entry, changes, name", [
    ("omp", dict(rows=HUGE, dim=1), "signals"),  # HUGE x 8 bytes: 0, as an empty array's
    ("omp", dict(n=HUGE), "dictionary"),
    ("omp", dict(rows=2**40, dim=1, n=2**21, count=2**21), "indices"),
    ("lasso_paths", dict(rows=HUGE, dim=1), "signals"),
    ("lasso_paths", dict(n=HUGE), "dictionary"),
    ("lasso_paths", dict(rows=2**40, dim=1, n=2**21), "codes"),
    ("lasso_certified", dict(n=HUGE), "gram"),
])
def test_counts_whose_products_overflow_are_refused(entry, changes, name):
    call, _ = ENTRY_POINTS[entry]
    with pytest.raises(ValueError, match=f"^{name}: .* items are more than memory can address"):
        call(**changes)


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("entry", ["omp", "lasso_paths"])
def test_a_signal_row_holding_nan_or_infinity_is_named(entry, dtype, bad):
    """An all-NaN row made OMP choose atom -1 (reading gram[-n-1]); one NaN anywhere in a row is refused, with
    the row's index, and nothing is written."""
    call, args = ENTRY_POINTS[entry]
    for row, columns in ((3, slice(None)), (1, slice(2, 3))):  # a whole row, and one value of another
        given = args(signals=args()["signals"].astype(dtype))
        given["signals"][row, columns] = bad
        with pytest.raises(ValueError, match=f"^signals: row {row} holds NaN or infinity$"):
            ENTRY_POINTS[entry][0](**given)
        outputs = [given[name] for name in ("indices", "values", "codes", "done") if name in given]
        assert all(not output.any() for output in outputs)


@pytest.mark.parametrize("entry, name", [("omp", "dictionary"), ("lasso_paths", "dictionary"),
                                         ("lasso_certified", "start"), ("lasso_certified", "gram"),
                                         ("lasso_certified", "values")])
def test_nan_in_the_dictionary_or_a_rows_numbers_is_refused(entry, name):
    """Not the Gram matrix of ``omp`` and ``lasso_paths`` (reading all of it would cost as much as the coding):
    a NaN there reads no memory out of bounds (the test below)."""
    call, args = ENTRY_POINTS[entry]
    good = args()[name].copy()
    good.reshape(-1)[1] = np.nan
    with pytest.raises(ValueError, match=f"^{name} holds NaN or infinity$"):
        call(**{name: good})


@pytest.mark.parametrize("entry", ["omp", "lasso_paths"])
def test_a_nan_gram_matrix_reads_no_memory_out_of_bounds(entry):
    call, args = ENTRY_POINTS[entry]
    given = args(gram=np.full((N, N), np.nan))
    try:
        call(**given)
    except ValueError as error:
        assert "has no atom to choose" in str(error)
    if entry == "omp":
        assert ((given["indices"] >= 0) & (given["indices"] < N)).all()
    else:
        assert not given["done"].any()  # uncertified: FISTA codes these rows


def test_correlations_that_overflow_to_nan_are_an_error_not_atom_minus_one():
    """Finite signals whose correlations overflow (1e309 - 1e309): every score NaN, no atom to choose."""
    signals = np.zeros((ROWS, DIM))
    signals[0, 0], signals[1:, :2] = 1.0, [1e308, -1e308]  # from row 1: inf + -inf
    overflowing = dict(signals=signals, dictionary=np.full((DIM, N), 10.0), gram=np.full((N, N), 400.0))
    args = omp_args(**overflowing)
    with pytest.raises(ValueError, match="^signals: row 1 has no atom to choose"):
        _rowwise.omp(*args.values())
    args = lasso_args(**overflowing)
    _rowwise.lasso_paths(*args.values())  # the path cannot start: not certified (FISTA codes it), nothing written
    assert not args["done"][1:].any() and not args["codes"][1:].any()


def test_no_rows_is_no_work():
    args = omp_args(signals=np.zeros((0, DIM)), rows=0, indices=np.zeros((0, COUNT), np.int64),
                    values=np.zeros((0, COUNT)))
    assert _rowwise.omp(*args.values()) is None


# _incremental.c: a plan of one image (n 1) of 2 channels on a 2x2 map, radii 1, one layer with attention (over
# every earlier position); a head of 2 slots over 6 atoms and 3 levels.
PLAN_DIMS = dict(n=1, channels=2, height=2, width=2, in_radius=1, radius=1, layers=1, per_block=1, heads=1,
                 num_atoms=3, coef_levels=2, slots=1, attention_rows=0)
PLAN_SIZES = dict(atom_table=8, level_table=4, in_weight=16, in_bias=2, position=0, first_weight=20, first_bias=2,
                  second_weight=40, second_bias=4, conditions=0, qkv_weight=12, qkv_bias=6, out_weight=4, out_bias=2,
                  embedded=32, inputs=32, hidden=32)  # in_taps 4, taps 5, padded areas 16
HEAD_DIMS = dict(channels=2, num_atoms=6, coef_levels=3, slots=2, stage_atoms=0, variable=0)
HEAD_SIZES = dict(atom_weight=12, atom_bias=6, atom_in=12, level_weight=6, level_bias=3, pair_atom=12, pair_level=6,
                  update_weight=4, update_bias=2, update_out_weight=4, update_out_bias=2)


def plan(arrays=None, **dims):
    arrays = arrays if arrays is not None else tuple(np.full(size, 0.1) for size in PLAN_SIZES.values())
    return _incremental.plan(arrays, tuple((PLAN_DIMS | dims).values()) + (0, 0))


def head(arrays=None, **dims):
    arrays = arrays if arrays is not None else tuple(np.full(size, 0.1) for size in HEAD_SIZES.values())
    return _incremental.head(arrays, tuple((HEAD_DIMS | dims).values()))


def test_good_arguments_run_the_incremental_pass_and_head():
    capsule, out = plan(), np.zeros((1, 2))
    _incremental.write(capsule, 0, 0, np.zeros((1, 1), np.int64), np.zeros((1, 1), np.int64))
    _incremental.step(capsule, 1, 1, out)
    assert np.isfinite(out).all() and out.any()
    pair, state, logits = head(), np.full((3, 2), 0.5), np.zeros((3, 6))
    _incremental.atom_logits(pair, state, np.array([-1, 1, 2]), 3, 1, 5, logits)
    assert np.isneginf(logits[1, :2]).all() and np.isfinite(logits[0]).all()  # slot 1: atoms above the previous
    _incremental.atom_logits(pair, state, np.array([-1, 1, 2]), 3, 1, 4, logits)
    assert np.isneginf(logits[:, 5]).all() and np.isfinite(logits[0, :5]).all()  # and at most the last
    with pytest.raises(ValueError, match="^last atom 6 is outside the head's 6$"):
        _incremental.atom_logits(pair, state, np.array([-1, 1, 2]), 3, 1, 6, logits)
    _incremental.level_logits(pair, state, np.array([0, 5, 2]), 3, np.zeros((3, 3)))
    _incremental.advance(pair, state, np.array([0, 5, 2]), np.array([0, 2, 1]), 3, np.zeros((3, 2)))


@pytest.mark.parametrize("name, value", [("n", 0), ("channels", -2), ("radius", 0), ("layers", -1),
                                         ("channels", 2**61), ("height", 2**40), ("num_atoms", 2**24 + 1)])
def test_a_plan_dimension_out_of_range_is_refused(name, value):
    """2^61 channels made every array's size wrap to 0 bytes: 17 empty arrays passed for a plan."""
    empty = tuple(np.zeros(0) for _ in PLAN_SIZES)
    with pytest.raises(ValueError, match=r"^plan: dimension \d+ .* is -?\d+, not in 1\.\.16777216$"):
        plan(empty, **{name: value})


def test_a_negative_attention_window_is_refused():
    empty = tuple(np.zeros(0) for _ in PLAN_SIZES)
    with pytest.raises(ValueError, match=r"^plan: attention_rows is -1, not 0 \(all\) or more$"):
        plan(empty, attention_rows=-1)


@pytest.mark.parametrize("dims", [dict(channels=2**61), dict(num_atoms=0), dict(variable=5), dict(variable=-1),
                                  dict(slots=-1), dict(stage_atoms=-3)])
def test_a_head_dimension_out_of_range_is_refused(dims):
    empty = tuple(np.zeros(0) for _ in HEAD_SIZES)
    with pytest.raises(ValueError, match="^head: inconsistent dimensions"):
        head(empty, **dims)


@pytest.mark.parametrize("call", ["atom_logits", "level_logits", "advance"])
@pytest.mark.parametrize("rows, message", [(-1, "rows must be at least 0, got -1"),
                                           (2**61, "rows: 2305843009213693952 rows of .* than memory can address")])
def test_a_head_call_with_a_bad_row_count_is_refused(call, rows, message):
    pair, empty, indices = head(), np.zeros(0), np.zeros(0, np.int64)
    arguments = {"atom_logits": (pair, empty, indices, rows, 0, 5, empty),
                 "level_logits": (pair, empty, indices, rows, empty),
                 "advance": (pair, empty, indices, indices, rows, empty)}[call]
    with pytest.raises(ValueError, match=f"^{message}$"):
        getattr(_incremental, call)(*arguments)


def test_incremental_arrays_of_the_wrong_dtype_layout_or_writability_are_refused_by_name():
    pair, state = head(), np.full((3, 2), 0.5)
    with pytest.raises(ValueError, match="^state: expected"):
        _incremental.atom_logits(pair, state.astype(np.float32), np.zeros(3, np.int64), 3, 0, 5, np.zeros((3, 6)))
    with pytest.raises(ValueError, match="^previous: expected"):
        _incremental.atom_logits(pair, state, np.zeros(3, np.int32), 3, 0, 5, np.zeros((3, 6)))
    with pytest.raises(ValueError, match="^out: expected a C-contiguous, writable.*not C-contiguous"):
        _incremental.atom_logits(pair, state, np.zeros(3, np.int64), 3, 0, 5, np.zeros((3, 12))[:, ::2])
    frozen = np.zeros((1, 2))
    frozen.flags.writeable = False
    with pytest.raises(ValueError, match="^out: expected a C-contiguous, writable.*read-only"):
        _incremental.step(plan(), 0, 0, frozen)
    with pytest.raises(TypeError, match="^atoms: expected .*list"):
        _incremental.write(plan(), 0, 0, [[0]], np.zeros((1, 1), np.int64))
    arrays = [np.full(size, 0.1) for size in PLAN_SIZES.values()]
    arrays[0] = arrays[0][:-1]  # atom_table one short
    with pytest.raises(ValueError, match="^atom_table: expected 8 contiguous items"):
        plan(tuple(arrays))
