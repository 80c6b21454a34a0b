"""Row widths compiled as constants (``kernels._jit.row_dim``) give the same
bits as the generic variant.

For the widths in ``STATIC_DIMS`` every row kernel runs a variant compiled
for that width; the rest of the suite pins the generic variant (odd widths)
to the float64 reference. Here one workload (lookups with every combiner,
weights and padding; duplicate ids; clipping norms; every optimizer on a
sparse and a dense gradient) runs in two subprocesses, with and without
``SPARSE_TRAIN_GENERIC_DIMS=1``, and every array must match bit for bit.
"""
import os
import subprocess
import sys

import numpy as np
import pytest

_SCRIPT = r"""
import sys
import numpy as np
import sparse_train as st
from sparse_train import functional as F
from sparse_train.kernels import _jit

_jit.STATIC_DIM_MIN_ROWS = 0   # these small tables too take the constant widths
out = {"specialized": np.array(_jit.specialize_dims)}
rng = np.random.default_rng(0)
for dim in (8, 64):   # below one cache line, and several lines (each width compiles)
    V, B = 50, 7
    table = rng.standard_normal((V, dim)).astype(np.float32)
    lengths = rng.integers(0, 6, B)
    offsets = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)
    values = rng.integers(0, V, offsets[-1])
    weights = rng.random(offsets[-1]).astype(np.float32)
    d_out = rng.standard_normal((B, dim)).astype(np.float32)
    for combiner in ("sum", "mean", "sqrtn"):
        key = f"{dim}/{combiner}"
        out[key + "/forward"] = F.embedding_bag(table, values, offsets, weights, combiner,
                                                padding_idx=3)
        grad = F.embedding_bag_grad(d_out, values, offsets, V, weights, combiner,
                                    padding_idx=3)
        out[key + "/grad"] = np.asarray(grad.values)
        out[key + "/norm"] = np.array(st.clip_by_global_norm([grad], 1.0)[1])
    ids = rng.integers(0, V, 40)
    rows = rng.standard_normal((40, dim)).astype(np.float32)
    dense = rng.standard_normal((V, dim)).astype(np.float32)
    for kind in ("GradientDescent", "Adagrad", "AdagradDecay", "Adam", "LazyAdam",
                 "RowwiseAdagrad"):
        step = st.GlobalStep()
        if kind == "AdagradDecay":
            opt = st.optim.AdagradDecay(0.1, step, accumulator_decay_step=1)
        else:
            opt = getattr(st.optim, kind)(0.1)
        var = st.Variable(table.copy(), "t")
        for _ in range(3):
            opt.apply_gradients([(st.RowSparseGrad(ids, rows, (V, dim)), var)],
                                global_step=step)
            opt.apply_gradients([(dense, var)], global_step=step)
        out[f"{dim}/{kind}/weight"] = var.value
        for slot in opt.get_slot_names():
            out[f"{dim}/{kind}/{slot}"] = opt.get_slot(var, slot).value
np.savez(sys.argv[1], **out)
"""


def _run(tmp_path, generic):
    path = tmp_path / f"generic{int(generic)}.npz"
    env = {**os.environ, "SPARSE_TRAIN_GENERIC_DIMS": "1" if generic else "0"}
    subprocess.run([sys.executable, "-c", _SCRIPT, str(path)], env=env, check=True,
                   timeout=600)
    with np.load(path) as data:
        return {key: data[key] for key in data.files}


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("row_dims")
    return _run(tmp, generic=False), _run(tmp, generic=True)


def test_both_variants_ran(runs):
    specialized, generic = runs
    assert bool(specialized["specialized"]) and not bool(generic["specialized"])


def test_constant_widths_match_the_generic_variant_bit_for_bit(runs):
    specialized, generic = runs
    keys = sorted(k for k in specialized if k != "specialized")
    assert keys == sorted(k for k in generic if k != "specialized")
    assert len(keys) == 2 * (3 * 3 + 6 + 8)   # per width: lookups, weights, slots
    for key in keys:
        a, b = specialized[key], generic[key]
        assert a.dtype == b.dtype and a.shape == b.shape, key
        np.testing.assert_array_equal(np.ravel(a).view(np.uint8), np.ravel(b).view(np.uint8),
                                      err_msg=key)


def test_row_dim_is_constant_only_for_the_listed_widths():
    from sparse_train.kernels._jit import STATIC_DIMS, row_dim
    for dim in (1, 3, 4, 63, 400):
        assert type(row_dim(dim)) is int and row_dim(dim) == dim
    for dim in STATIC_DIMS:
        assert row_dim(dim) == dim


def test_small_tables_take_the_generic_variant():
    from sparse_train.kernels._jit import STATIC_DIM_MIN_ROWS, specialize_dims, table_dim
    small, large = STATIC_DIM_MIN_ROWS - 1, STATIC_DIM_MIN_ROWS
    assert type(table_dim(16, small)) is int and table_dim(16, small) == 16
    assert table_dim(16, large) == 16
    assert (type(table_dim(16, large)) is not int) == specialize_dims
    assert type(table_dim(3, large)) is int
