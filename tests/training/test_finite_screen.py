"""``check_finite_state`` screens whole float32 arrays 8 to a kernel call
(``kernels.multi.first_non_finite_multi``) and names a bad one exactly as
the one-by-one check does: the first bad array in order, its row."""
import numpy as np
import pytest

from sparse_train import GlobalStep, RowSparseGrad, Variable, optim
from sparse_train.kernels.multi import MAX_VARIABLES, first_non_finite_multi
from sparse_train.training import NonFiniteError, apply_groups, check_finite_state

EMPTY = np.empty(0, np.float32)


@pytest.mark.parametrize("bad_at", [None, 0, 3, 7])
@pytest.mark.parametrize("value", [np.nan, np.inf, -np.inf])
def test_kernel_finds_the_first_array_holding_a_non_finite(bad_at, value):
    rng = np.random.default_rng(0)
    arrays = [rng.standard_normal(n).astype(np.float32) for n in (5, 0, 17, 64, 1, 3, 100, 9)]
    if bad_at is not None:
        arrays[bad_at][-1] = value
        if bad_at < 7:
            arrays[7][0] = np.nan   # a later bad one is not reported
    expected = next((i for i, a in enumerate(arrays) if not np.isfinite(a).all()), -1)
    assert first_non_finite_multi(tuple(arrays)) == expected
    assert expected == (-1 if bad_at is None else bad_at)


def test_kernel_of_empty_arrays_finds_nothing():
    assert first_non_finite_multi((EMPTY,) * MAX_VARIABLES) == -1


def _stepped(num_dense=10):
    """A table on LazyAdam and ``num_dense`` dense variables on Adam after
    one applied step (more than 8: two screening calls)."""
    rng = np.random.default_rng(1)
    table = Variable(rng.standard_normal((6, 2)).astype(np.float32), "table")
    dense = [Variable(rng.standard_normal((3, 2)).astype(np.float32), f"d{i}")
             for i in range(num_dense)]
    sparse_opt, dense_opt, step = optim.LazyAdam(0.1, name="sparse"), optim.Adam(0.1), GlobalStep()
    groups = [(sparse_opt, [(RowSparseGrad([4, 1], np.ones((2, 2), np.float32), (6, 2)), table)]),
              (dense_opt, [(np.ones((3, 2), np.float32), v) for v in dense])]
    prepared = apply_groups(groups, step)
    return table, dense, sparse_opt, dense_opt, step, prepared


def test_finite_state_passes():
    *_, step, prepared = _stepped()
    check_finite_state(prepared, step)


@pytest.mark.parametrize("where, message", [
    (lambda t, d, so, do: d[0].value, r"after step 1: d0 holds nan \(row 1\)"),
    (lambda t, d, so, do: d[9].value, r"after step 1: d9 holds nan \(row 1\)"),
    (lambda t, d, so, do: do.get_slot(d[8], "m").value,
     r"after step 1: d8 \(slot 'm' of optimizer 'Adam'\) holds nan \(row 1\)"),
    (lambda t, d, so, do: do.get_slot(d[2], "v").value,
     r"after step 1: d2 \(slot 'v' of optimizer 'Adam'\) holds nan \(row 1\)"),
    (lambda t, d, so, do: t.value,
     r"after step 1: table holds nan \(row 1\)"),
])
def test_a_bad_array_is_named_as_before(where, message):
    table, dense, sparse_opt, dense_opt, step, prepared = _stepped()
    where(table, dense, sparse_opt, dense_opt).reshape(-1)[2] = np.nan   # row 1 of [., 2]
    with pytest.raises(NonFiniteError, match=message):
        check_finite_state(prepared, step)


def test_the_shared_state_is_named_as_before():
    table, dense, sparse_opt, dense_opt, step, prepared = _stepped()
    dense_opt.beta2_power.value[...] = np.inf
    with pytest.raises(NonFiniteError, match=r"Adam/beta2_power \(state 'beta2_power' of "
                                             r"optimizer 'Adam'\) holds inf \(row 0\)"):
        check_finite_state(prepared, step)


def test_the_first_bad_array_in_order_is_named():
    """Two bad arrays: the earlier in the one-by-one order is named,
    whether or not the other was screened."""
    table, dense, sparse_opt, dense_opt, step, prepared = _stepped()
    dense_opt.get_slot(dense[5], "v").value[0, 0] = np.inf
    dense[7].value[2, 1] = np.nan
    with pytest.raises(NonFiniteError, match=r"d5 \(slot 'v' of optimizer 'Adam'\) holds inf "
                                             r"\(row 0\)"):
        check_finite_state(prepared, step)
    # an untouched bad row of a table is not read (O(touched rows))
    table, dense, sparse_opt, dense_opt, step, prepared = _stepped()
    table.value[0, 0] = np.nan
    check_finite_state(prepared, step)
