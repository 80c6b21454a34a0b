"""One conformance suite over every optimizer (SPEC intro, §1, §5; STYLE Tests).

- untouched rows and their slot rows stay bit-for-bit unchanged (Adam: every
  row moves, as SPEC says; checked against the reference instead);
- a gradient with duplicate ids gives the same bits as its pre-summed form;
- a sparse gradient and its dense form give the same bits on touched rows;
- 1 thread and 2 threads give the same bits;
- a checkpoint (``Checkpoint``) restores every slot and the hyperparameters,
  and the restored run continues bit for bit;
- bad input raises before any variable or slot changes.
"""
import json
import os
import subprocess
import sys

import numpy as np
import pytest

from sparse_train import GlobalStep, RowSparseGrad, Variable
from sparse_train.checkpoint import Checkpoint, load_checkpoint
from sparse_train.optim import GradientDescent
from sparse_train.functional import embedding_bag_grad

import reference as ref

OPTIMIZERS = ["GradientDescent", "Adagrad", "AdagradDecay", "Adam", "LazyAdam", "RowwiseAdagrad",
              "Ftrl"]
V, D = 20, 4


def _grad(rng, ids, dtype=np.float32):
    ids = np.asarray(ids, np.int64)
    return ids, rng.standard_normal((ids.shape[0], D)).astype(dtype)


def _setup(kind, make_optimizer, seed=0):
    """A table, a fresh optimizer with its global step, and a warm-up of three
    steps touching rows 0..14 (so slots hold non-initial values)."""
    rng = np.random.default_rng(seed)
    table = Variable(rng.standard_normal((V, D)), "table")
    gs = GlobalStep()
    opt = make_optimizer(kind, gs)
    for _ in range(3):
        ids, values = _grad(rng, rng.integers(0, 15, 12))
        opt.apply_gradients([(RowSparseGrad(ids, values, (V, D)), table)], global_step=gs)
    return table, opt, gs, rng


def _state(opt, table, slots_of):
    return table.value.copy(), slots_of(opt, table)


def _assert_bits(a, b, what):
    assert a.dtype == b.dtype and a.shape == b.shape, what
    np.testing.assert_array_equal(np.ravel(a).view(np.uint8), np.ravel(b).view(np.uint8),
                                  err_msg=what)


@pytest.mark.parametrize("kind", OPTIMIZERS)
def test_untouched_rows_and_slots_unchanged(kind, make_optimizer, hyper, slots_of, beta_powers):
    table, opt, gs, rng = _setup(kind, make_optimizer)
    assert int(gs) == 3                    # the next call (gs = 4) is a decay step
    touched = np.array([2, 5, 5, 9, 2], np.int64)
    ids, values = _grad(rng, touched)
    w0, slots0 = _state(opt, table, slots_of)
    powers = beta_powers(opt) if kind in ("Adam", "LazyAdam") else None
    opt.apply_gradients([(RowSparseGrad(ids, values, (V, D)), table)], global_step=gs)
    w1, slots1 = _state(opt, table, slots_of)
    untouched = np.setdiff1d(np.arange(V), touched)
    never_touched = np.arange(15, V)             # the warm-up drew ids from 0..14
    if kind == "Adam":
        # SPEC: for a row-sparse gradient TF Adam decays m, v of ALL rows and
        # steps every weight; rows with m = 0 (never touched) stay put.
        w_ref, slots_ref = ref.step(kind, hyper[kind], w0, slots0, ids, values,
                                    beta_powers=powers)
        ref.assert_close(w1, w_ref)
        for name in slots_ref:
            ref.assert_close(slots1[name], slots_ref[name])
        moved = np.intersect1d(untouched, np.flatnonzero(np.abs(slots0["m"]).max(axis=1) > 0))
        assert moved.size and (np.abs(w1[moved] - w0[moved]).max(axis=1) > 0).all()
        check = np.intersect1d(untouched, np.flatnonzero(np.abs(slots0["m"]).max(axis=1) == 0))
        assert np.isin(never_touched, check).all()
    else:
        check = untouched
    _assert_bits(w1[check], w0[check], "weight")
    for name in slots0:
        _assert_bits(slots1[name][check], slots0[name][check], name)
    # Touched rows did move (the check above is not vacuous).
    assert (w1[[2, 5, 9]] != w0[[2, 5, 9]]).any(axis=1).all()


@pytest.mark.parametrize("kind", OPTIMIZERS)
def test_duplicates_equal_presummed_bit_for_bit(kind, make_optimizer, slots_of):
    results = []
    for presum in (False, True):
        table, opt, gs, _ = _setup(kind, make_optimizer, seed=1)
        rng = np.random.default_rng(11)
        for _ in range(3):
            ids = rng.integers(0, V, 30)          # many duplicates
            values = (rng.standard_normal((30, D)) *
                      10.0 ** rng.integers(-3, 4, (30, 1))).astype(np.float32)
            if presum:  # summed in float32 in order of position
                ids, values = ref.coalesce(ids, values, dtype=np.float32)
            opt.apply_gradients([(RowSparseGrad(ids, values, (V, D)), table)], global_step=gs)
        results.append(_state(opt, table, slots_of))
    (w_dup, slots_dup), (w_sum, slots_sum) = results
    _assert_bits(w_dup, w_sum, "weight")
    for name in slots_dup:
        _assert_bits(slots_dup[name], slots_sum[name], name)


@pytest.mark.parametrize("kind", OPTIMIZERS)
def test_fused_lookup_gradient_equals_its_values_bit_for_bit(kind, make_optimizer, slots_of):
    # A lookup's gradient is applied straight from d_out; applying its
    # materialised (coalesced) values must give the same bits.
    rng = np.random.default_rng(12)
    values = rng.integers(0, V, 40)
    offsets = np.concatenate([[0], np.sort(rng.integers(0, 40, 9)), [40]])
    weights = rng.uniform(0.5, 2.0, 40).astype(np.float32)
    d_out = rng.standard_normal((offsets.shape[0] - 1, D)).astype(np.float32)
    results = []
    for materialise in (False, True):
        table, opt, gs, _ = _setup(kind, make_optimizer, seed=2)
        grad = embedding_bag_grad(d_out, values, offsets, V, weights, "sqrtn")
        if materialise:
            grad = RowSparseGrad(grad.indices.copy(), grad.values.copy(), (V, D))
        opt.apply_gradients([(grad, table)], global_step=gs)
        results.append(_state(opt, table, slots_of))
    _assert_bits(results[0][0], results[1][0], "weight")
    for name in results[0][1]:
        _assert_bits(results[0][1][name], results[1][1][name], name)


@pytest.mark.parametrize("kind", OPTIMIZERS)
def test_sparse_equals_dense_on_touched_rows(kind, make_optimizer, slots_of):
    rng = np.random.default_rng(13)
    ids, values = _grad(rng, rng.integers(0, V, 25))
    rows, sums = ref.coalesce(ids, values, dtype=np.float32)
    dense = np.zeros((V, D), np.float32)
    dense[rows] = sums
    results = []
    for grad in (RowSparseGrad(ids, values, (V, D)), dense):
        table, opt, gs, _ = _setup(kind, make_optimizer, seed=3)
        opt.apply_gradients([(grad, table)], global_step=gs)
        results.append(_state(opt, table, slots_of))
    (w_sparse, slots_sparse), (w_dense, slots_dense) = results
    _assert_bits(w_sparse[rows], w_dense[rows], "weight")
    for name in slots_sparse:
        _assert_bits(slots_sparse[name][rows], slots_dense[name][rows], name)


@pytest.mark.parametrize("kind", OPTIMIZERS)
def test_empty_gradient_touches_nothing(kind, make_optimizer, hyper, slots_of, beta_powers):
    table, opt, gs, _ = _setup(kind, make_optimizer, seed=5)
    w0, slots0 = _state(opt, table, slots_of)
    powers = beta_powers(opt) if kind in ("Adam", "LazyAdam") else None
    ids, values = np.zeros(0, np.int64), np.zeros((0, D), np.float32)
    opt.apply_gradients([(RowSparseGrad(ids, values, (V, D)), table)], global_step=gs)
    w1, slots1 = _state(opt, table, slots_of)
    assert int(gs) == 4
    if kind == "Adam":   # every row still moves: m, v decay and weights step
        w_ref, slots_ref = ref.step(kind, hyper[kind], w0, slots0, ids, values,
                                    beta_powers=powers)
        ref.assert_close(w1, w_ref)
        for name in slots_ref:
            ref.assert_close(slots1[name], slots_ref[name])
        assert (w1 != w0).any()
        return
    _assert_bits(w1, w0, "weight")
    for name in slots0:
        _assert_bits(slots1[name], slots0[name], name)


@pytest.mark.parametrize("kind", OPTIMIZERS)
def test_checkpoint_restores_slots_and_config_and_continues_bit_for_bit(
        kind, make_optimizer, slots_of, tmp_path):
    # A table and a dense variable, saved after the warm-up; a fresh process
    # (other values, no slots, another step) restores and runs on.
    def run_on(table, dense, opt, gs):
        rng = np.random.default_rng(21)
        for _ in range(2):
            ids, values = _grad(rng, rng.integers(0, V, 12))
            opt.apply_gradients([(RowSparseGrad(ids, values, (V, D)), table),
                                 (rng.standard_normal((3, 5)).astype(np.float32), dense)],
                                global_step=gs)
        return ([table.value.copy(), dense.value.copy(), gs.value.copy()]
                + [np.array(v.value, copy=True) for v in opt.variables()])

    table, opt, gs, rng = _setup(kind, make_optimizer, seed=7)
    dense = Variable(rng.standard_normal((3, 5)), "dense")
    opt.apply_gradients([(np.ones((3, 5), np.float32), dense)])
    path = Checkpoint([table, dense], [opt], gs).save(tmp_path / "c.ckpt")
    header = load_checkpoint(path).header["optimizers"][0]
    assert header["config"] == opt.get_config() and header["class"] == kind
    expected = run_on(table, dense, opt, gs)

    other = np.random.default_rng(99)
    fresh_table = Variable(other.standard_normal((V, D)), "table")
    fresh_dense = Variable(other.standard_normal((3, 5)), "dense")
    fresh_gs = GlobalStep(11)
    fresh = make_optimizer(kind, fresh_gs)
    Checkpoint([fresh_table, fresh_dense], [fresh], fresh_gs).restore(path)
    assert int(fresh_gs) == 3
    assert sorted(slots_of(fresh, fresh_table)) == fresh.get_slot_names()
    got = run_on(fresh_table, fresh_dense, fresh, fresh_gs)
    assert len(got) == len(expected)
    for k, (a, b) in enumerate(zip(got, expected)):
        _assert_bits(a, b, f"state {k}")

# ------------------------------------------------------------------ threads
_THREAD_SCRIPT = r"""
import json, sys
import numba
import numpy as np
from sparse_train import GlobalStep, RowSparseGrad, Variable, optim
from sparse_train.functional import embedding_bag, embedding_bag_grad

hyper, out = json.loads(sys.argv[1]), sys.argv[2]
arrays = {"num_threads": np.array(numba.get_num_threads())}
# ~35000 unique ids: many chunks per thread (chunks count rows, not widths;
# width 8's row kernels are compiled by the rest of the suite, 32's were not)
V, D, N = 50000, 8, 60000
for kind, hp in hyper.items():
    rng = np.random.default_rng(0)
    table = Variable(rng.standard_normal((V, D)), "table")
    dense = Variable(rng.standard_normal((64, D)), "dense")
    gs = GlobalStep()
    cls = getattr(optim, kind)
    opt = cls(global_step=gs, **hp) if kind == "AdagradDecay" else cls(**hp)
    for step in range(4):
        ids = rng.integers(0, V, N)               # with duplicates
        values = rng.standard_normal((N, D)).astype(np.float32)
        grad = RowSparseGrad(ids, values, (V, D))
        if step % 2:                              # a lookup's fused gradient
            offsets = np.concatenate([[0], np.sort(rng.integers(0, N, 1023)), [N]])
            d_out = rng.standard_normal((1024, D)).astype(np.float32)
            arrays[f"{kind}/lookup{step}"] = embedding_bag(table, ids, offsets, combiner="mean")
            grad = embedding_bag_grad(d_out, ids, offsets, V, combiner="mean")
        g_dense = rng.standard_normal((64, D)).astype(np.float32)
        opt.apply_gradients([(grad, table), (g_dense, dense)], global_step=gs)
    arrays[f"{kind}/table"] = table.value
    arrays[f"{kind}/dense"] = dense.value
    for var in opt.variables():
        arrays[f"{kind}/{var.name}"] = np.asarray(var.value)

# Clipping norms (parallel chunked sums) and a whole DeepFM step: fused
# lookups over > PARALLEL_MIN_IDS ids, fused bias + ReLU kernels, clipping,
# tables on AdagradDecay and dense layers on Adam.
from sparse_train import Ragged, clip_gradients, global_norm
from sparse_train.data import Batch, DataSpec, FeatureSpec
from sparse_train.models import build_model, train_step
rng = np.random.default_rng(1)
big = rng.standard_normal(5 * 2 ** 14 + 3).astype(np.float32)
sparse = RowSparseGrad(rng.integers(0, V, N), rng.standard_normal((N, D)), (V, D))
arrays["global_norm"] = np.array(global_norm([big, sparse, None]))
spec = DataSpec((FeatureSpec("user", 20000), FeatureSpec("item", 5000),
                 FeatureSpec("tags", 300, multi_hot=True)), ("age",))
model = build_model("deepfm", spec, embedding_dim=8, hidden_units=(32, 16), scope="t")
gs = GlobalStep()
tables, dense_opt = optim.AdagradDecay(0.1, gs, accumulator_decay_step=2), optim.Adam(0.01)
norms = []
def clip(pairs):
    pairs, norm = clip_gradients(pairs, 0.01)
    norms.append(norm)
    return pairs
for step in range(3):
    size = 4096
    lengths = rng.integers(0, 12, size)
    batch = Batch(rng.integers(0, 2, size).astype(np.float32),
                  rng.standard_normal((size, 1)).astype(np.float32),
                  {"user": Ragged.from_dense(rng.integers(0, 20000, size)),
                   "item": Ragged.from_dense(rng.integers(0, 5000, size)),
                   "tags": Ragged.from_lengths(rng.integers(0, 300, lengths.sum()), lengths)})
    arrays[f"deepfm/loss{step}"] = np.array(train_step(model, batch, tables, dense_opt, gs,
                                                       grad_transform=clip))
arrays["deepfm/norms"] = np.array(norms)
for var in model.variables() + tables.variables() + dense_opt.variables():
    arrays[f"deepfm/{var.name}"] = np.asarray(var.value)
np.savez(out, **arrays)
"""


@pytest.fixture(scope="module")
def thread_runs(tmp_path_factory, hyper):
    runs = {}
    for threads in (1, 2):
        out = tmp_path_factory.mktemp(f"threads{threads}") / "state.npz"
        env = {**os.environ, "NUMBA_NUM_THREADS": str(threads)}
        subprocess.run([sys.executable, "-c", _THREAD_SCRIPT, json.dumps(hyper), str(out)],
                       env=env, check=True, timeout=300)
        with np.load(out) as data:
            runs[threads] = {k: data[k] for k in data.files}
    return runs


@pytest.mark.parametrize("what", ["global_norm", "deepfm/"])
def test_clipping_and_a_deepfm_step_one_thread_equals_two_threads(what, thread_runs):
    one, two = thread_runs[1], thread_runs[2]
    keys = sorted(k for k in one if k.startswith(what))
    assert keys and keys == sorted(k for k in two if k.startswith(what))
    if what == "deepfm/":  # tables, dense layers, slots and beta powers all saved
        assert any("AdagradDecay/accumulator" in k for k in keys)
        assert any("beta1_power" in k for k in keys) and "deepfm/norms" in keys
        assert (one["deepfm/norms"] > 0.01).all()           # clipping did scale
    for key in keys:
        _assert_bits(one[key], two[key], key)


def test_thread_runs_used_the_requested_threads(thread_runs):
    assert int(thread_runs[1]["num_threads"]) == 1
    assert int(thread_runs[2]["num_threads"]) == 2


@pytest.mark.parametrize("kind", OPTIMIZERS)
def test_one_thread_equals_two_threads_bit_for_bit(kind, thread_runs):
    one, two = thread_runs[1], thread_runs[2]
    keys = sorted(k for k in one if k.startswith(kind + "/"))
    assert f"{kind}/table" in keys and sorted(k for k in two if k.startswith(kind + "/")) == keys
    if kind != "GradientDescent":
        assert any(k.startswith(f"{kind}/table/") for k in keys)   # slots were saved
    for key in keys:
        _assert_bits(one[key], two[key], key)


# ------------------------------------------------------------------- errors
def _bad_pair(case, rng):
    """(gradient, variable) that must be rejected; the variable is named 'extra'."""
    good = Variable(rng.standard_normal((V, D)), "extra")
    if case == "non_finite_sparse":
        values = rng.standard_normal((3, D)).astype(np.float32)
        values[2, 1] = np.nan
        return RowSparseGrad([1, 2, 1], values, (V, D)), good
    if case == "non_finite_dense":
        dense = rng.standard_normal((V, D)).astype(np.float32)
        dense[7, 3] = np.inf
        return dense, good
    if case == "wrong_shape":
        return rng.standard_normal((V, D + 1)).astype(np.float32), good
    if case == "wrong_dtype_variable":
        return np.ones((V, D), np.float32), Variable(np.zeros((V, D), np.int64), "extra")
    if case == "dense_shape_mismatch":
        return RowSparseGrad([1, 2], np.ones((2, D)), (V + 1, D)), good
    if case == "overflowing_duplicates":   # each finite; their float32 sum is inf
        return RowSparseGrad([4, 1, 4], np.array([[3e38] * D, [1.0] * D, [3e38] * D]),
                             (V, D)), good
    if case == "overflowing_scale":        # finite values times a finite scale: inf
        return RowSparseGrad([2], np.full((1, D), 1e30), (V, D)).scaled(1e20), good
    if case == "id_out_of_range":
        # Built while apply_gradients iterates its pairs: the gradient's own
        # check must still fire before the earlier pairs are applied.
        return RowSparseGrad([1, V], np.ones((2, D)), (V, D)), good
    raise ValueError(case)


ERROR_CASES = ["non_finite_sparse", "non_finite_dense", "wrong_shape", "wrong_dtype_variable",
               "dense_shape_mismatch", "id_out_of_range", "overflowing_duplicates",
               "overflowing_scale"]


@pytest.mark.parametrize("case", ERROR_CASES)
@pytest.mark.parametrize("kind", OPTIMIZERS)
def test_bad_last_pair_raises_before_anything_changes(kind, case, make_optimizer):
    table, opt, gs, rng = _setup(kind, make_optimizer, seed=4)
    dense = Variable(rng.standard_normal((3, 5)), "dense")
    opt.apply_gradients([(np.ones((3, 5), np.float32), dense)])        # its slots exist too
    before = {v.name: np.array(v.value, copy=True) for v in [table, dense] + opt.variables()}
    step_before = int(gs)
    ids, values = _grad(rng, [3, 4, 3])

    def pairs():
        yield RowSparseGrad(ids, values, (V, D)), table
        yield rng.standard_normal((3, 5)).astype(np.float32), dense
        yield _bad_pair(case, rng)

    with pytest.raises(ValueError) as info:
        opt.apply_gradients(pairs(), global_step=gs)
    message = str(info.value)
    assert ("extra" in message) if case != "id_out_of_range" else (str(V) in message)
    assert int(gs) == step_before
    after = {v.name: v.value for v in [table, dense] + opt.variables()}
    for name, value in before.items():
        _assert_bits(after[name], value, name)


def test_ids_changed_after_construction_are_still_rejected():
    # The table is the first V rows of a larger buffer, so the out-of-range
    # write this test provokes lands in memory we own (GradientDescent: no slots).
    buffer = np.zeros((V + 1, D), np.float32)
    table = Variable(buffer[:V], "table")
    assert np.shares_memory(table.value, buffer)
    grad = RowSparseGrad([1, 2], np.ones((2, D), np.float32), (V, D))
    with pytest.raises(ValueError):
        grad.indices[0] = V                     # a read-only array refuses this, or
        GradientDescent(1.0).apply_gradients([(grad, table)])   # the apply does
    assert not buffer.any()


@pytest.mark.parametrize("kind", [k for k in OPTIMIZERS if k != "GradientDescent"])
def test_slot_of_another_variable_with_the_same_name_is_refused(kind, make_optimizer):
    # Slots are keyed by name. A second variable under a used name (a rebuilt
    # model) must not get the first one's slots: the kernels do not check
    # bounds, so a [V, D] slot behind a bigger variable would be written out
    # of bounds. The error names the variable and both shapes; nothing moves.
    table, opt, gs, rng = _setup(kind, make_optimizer, seed=6)
    bigger = Variable(rng.standard_normal((V + 30, D + 1)), "table")
    watched = [table, bigger] + opt.variables()
    before = [np.array(v.value, copy=True) for v in watched]
    grad = RowSparseGrad([V + 29], np.ones((1, D + 1)), (V + 30, D + 1))
    with pytest.raises(ValueError, match=r"variable 'table' has shape \(50, 5\), but its slot "
                                         r"'\w+' has shape \(20(, 4)?,?\)"):
        opt.apply_gradients([(grad, bigger)], global_step=gs)
    assert int(gs) == 3
    for var, value in zip(watched, before):
        _assert_bits(var.value, value, var.name)
