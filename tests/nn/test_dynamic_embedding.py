"""DynamicEmbeddingTable (issue 13, SPEC section 6) against independent references:

- a plain-Python dict model of keys, counts, admission, last_seen, eviction
  and an Adagrad slot (float64), driven by random streams with negative and
  huge keys;
- a static ``EmbeddingTable`` given the same initial rows: with
  ``filter_freq=0`` over keys 0..V-1 the dynamic table gives the same bits
  step for step under every optimizer;
- 1 thread == 2 threads bit for bit; state_dict and delta round trips;
  capacity errors and evaluation lookups change nothing.
"""
import numba
import numpy as np
import pytest

import sparse_train as st
from sparse_train import GlobalStep, optim
from sparse_train import functional as F

import reference as ref

D = 4
I64 = np.iinfo(np.int64)
#: a key pool with negative, huge and boundary keys
POOL = np.array([0, 1, -1, 7, -7, 2**40 + 3, -(2**53), I64.max, I64.min, I64.max - 1,
                 123456789012345, -99, 42, 5, 6, 8], np.int64)


def _batch(rng, pool, num_bags=6, max_len=5):
    lengths = rng.integers(0, max_len + 1, num_bags)
    offsets = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)
    values = rng.choice(pool, int(offsets[-1]))
    return values, offsets


# ------------------------------------------------------------------ reference
class DictTable:
    """SPEC section 6 in plain Python: {key: [row float64, count, last_seen,
    accumulator]} admitted, {key: [count, last_seen]} pending; Adagrad."""

    def __init__(self, table, filter_freq, steps_to_live, l2, default, lr, initial):
        self.table, self.filter_freq = table, filter_freq
        self.steps_to_live, self.l2 = steps_to_live, l2
        self.default, self.lr, self.initial = default, lr, initial
        self.admitted, self.pending = {}, {}

    def lookup(self, values, offsets, step, weights=None, combiner="sum"):
        for key in values.tolist():  # each occurrence counts, in order
            if key in self.admitted:
                self.admitted[key][1] += 1
                self.admitted[key][2] = step
                continue
            count = self.pending.get(key, [0, 0])[0] + 1
            self.pending[key] = [count, step]
        for key in list(self.pending):
            count, last = self.pending[key]
            if count >= self.filter_freq:
                del self.pending[key]
                row = self.table.initial_rows([key])[0].astype(np.float64)
                self.admitted[key] = [row, count, last, np.full(D, self.initial)]
        rows = {k: v[0] for k, v in self.admitted.items()}
        table = np.array([rows.get(k, np.full(D, self.default)) for k in values.tolist()]
                         ).reshape(-1, D)
        return ref.embedding_bag(table, np.arange(values.shape[0]), offsets, weights, combiner)

    def apply(self, d_out, values, offsets, weights=None, combiner="sum"):
        ids, rows = ref.embedding_bag_grad(d_out, np.arange(values.shape[0]), offsets, weights,
                                           combiner)
        sums = {}
        for i, g in zip(ids.tolist(), rows):
            key = int(values[i])
            if key in self.admitted:
                sums[key] = sums.get(key, 0.0) + g
        for key, g in sums.items():
            entry = self.admitted[key]
            entry[3] = entry[3] + g * g
            entry[0] = entry[0] - self.lr * g / np.sqrt(entry[3])

    def evict(self, step):
        for key in list(self.admitted):
            row, _, last = self.admitted[key][:3]
            if ((self.steps_to_live is not None and step - last > self.steps_to_live)
                    or (self.l2 is not None and 0.5 * float(np.sum(row * row)) < self.l2)):
                del self.admitted[key]
        for key in list(self.pending):
            if self.steps_to_live is not None and step - self.pending[key][1] > self.steps_to_live:
                del self.pending[key]


def _assert_matches(table, model, opt):
    keys = sorted(model.admitted)
    state = table.state_dict()
    assert state["keys"].tolist() == keys
    assert state["counts"].tolist() == [model.admitted[k][1] for k in keys]
    assert state["last_seen"].tolist() == [model.admitted[k][2] for k in keys]
    assert state["pending_keys"].tolist() == sorted(model.pending)
    assert state["pending_counts"].tolist() == [model.pending[k][0] for k in sorted(model.pending)]
    assert len(table) == len(keys)
    if keys:
        ref.assert_close(state["values"], [model.admitted[k][0] for k in keys])
        acc = table.export().get("accumulator")
        if acc is not None:
            ref.assert_close(acc, [model.admitted[k][3] for k in keys])


@pytest.mark.parametrize("seed,filter_freq,steps_to_live,l2,default,combiner,weighted", [
    (0, 3, 2, None, 0.0, "sum", False),
    (1, 2, None, 0.13, 0.5, "sum", False),
    (2, 1, 1, None, -0.25, "sum", False),
    (3, 4, 3, 0.05, 0.0, "sum", False),
    (4, 2, 2, None, 0.0, "mean", True),     # counted by position, gradient planned apart
    (5, 0, None, None, 0.0, "sqrtn", False),
])
def test_matches_dict_reference(seed, filter_freq, steps_to_live, l2, default, combiner,
                                weighted):
    rng = np.random.default_rng(seed)
    table = st.DynamicEmbeddingTable(D, f"t{seed}", seed=seed, filter_freq=filter_freq,
                                     steps_to_live=steps_to_live, l2_weight_threshold=l2,
                                     default_value=default)
    opt = optim.Adagrad(0.3, initial_accumulator_value=0.2)
    model = DictTable(table, filter_freq, steps_to_live, l2, default, ref.f32(0.3), ref.f32(0.2))
    pool = np.concatenate([POOL, rng.integers(I64.min, I64.max, 8, dtype=np.int64)])
    for step in range(14):
        values, offsets = _batch(rng, pool)
        weights = rng.uniform(0.5, 2.0, values.shape[0]).astype(np.float32) if weighted else None
        out = table.lookup(values, offsets, weights, combiner, global_step=step)
        ref.assert_close(out, model.lookup(values, offsets, step, weights, combiner))
        d_out = rng.standard_normal((offsets.shape[0] - 1, D)).astype(np.float32)
        grad = table.lookup_grad(d_out, values, offsets, weights, combiner)
        if grad.nnz:
            opt.apply_gradients([(grad, table.weight)])
        model.apply(d_out, values, offsets, weights, combiner)
        if step % 3 == 2:
            table.evict(step)
            model.evict(step)
        _assert_matches(table, model, opt)
    assert opt.get_slot(table.weight, "accumulator").value.shape[0] == table.weight.value.shape[0]


def test_evicted_key_returns_with_fresh_row_and_slots():
    table = st.DynamicEmbeddingTable(D, "back", steps_to_live=0)
    opt = optim.Adam(0.1)
    values, offsets = np.array([5, 9], np.int64), np.array([0, 1, 2], np.int64)
    for step in range(3):
        table.lookup(values, offsets, global_step=step)
        opt.apply_gradients([(table.lookup_grad(np.ones((2, D), np.float32), values, offsets),
                              table.weight)])
    assert table.evict(5) == 2 and len(table) == 0
    table.lookup(np.array([9], np.int64), np.array([0, 1], np.int64), global_step=6)
    state = table.export()
    assert state["keys"].tolist() == [9] and state["counts"].tolist() == [1]
    np.testing.assert_array_equal(state["values"][0], table.initial_rows([9])[0])
    assert (state["m"] == 0).all() and (state["v"] == 0).all()


def test_initial_rows_depend_on_seed_and_key_only():
    a = st.DynamicEmbeddingTable(16, "a", seed=3)
    keys = np.concatenate([POOL, np.arange(200, dtype=np.int64)])
    rows = a.initial_rows(keys)
    perm = np.random.default_rng(0).permutation(keys.shape[0])
    np.testing.assert_array_equal(a.initial_rows(keys[perm]), rows[perm])
    a.lookup(keys[perm][:50], [0, 25, 50])
    export = a.export()
    np.testing.assert_array_equal(export["values"], a.initial_rows(export["keys"]))
    assert not np.array_equal(st.DynamicEmbeddingTable(16, "a", seed=4).initial_rows(keys), rows)
    bound = 2.0 / np.sqrt(16)   # truncated normal, stddev 1/sqrt(D)
    assert np.abs(rows).max() <= bound + 1e-7
    assert 0.8 / np.sqrt(16) < rows.std() < 1.0 / np.sqrt(16)   # 0.88 for a 2-sigma cut
    normal = st.DynamicEmbeddingTable(16, "n", seed=3, initializer="normal").initial_rows(keys)
    assert abs(normal.mean()) < 0.05 and 0.95 < normal.std() < 1.05 and np.abs(normal).max() > 2
    uniform = st.DynamicEmbeddingTable(16, "u", initializer="uniform").initial_rows(keys)
    assert np.abs(uniform).max() <= 0.25 and uniform.std() > 0.13
    assert not st.DynamicEmbeddingTable(16, "z", initializer="zeros").initial_rows(keys).any()


def test_default_value_counts_in_divisors_and_takes_no_gradient():
    table = st.DynamicEmbeddingTable(D, "mean", filter_freq=2, default_value=0.5)
    table.lookup([1, 1], [0, 2], global_step=0)        # key 1 admitted
    values, offsets = np.array([1, 2, 1, 3], np.int64), np.array([0, 2, 4], np.int64)
    weights = np.array([1.0, 3.0, 2.0, 2.0], np.float32)
    out = table.lookup(values, offsets, weights, combiner="sqrtn", training=False)
    row = table.export()["values"][0]
    static = np.stack([row, np.full(D, 0.5, np.float32), row, np.full(D, 0.5, np.float32)])
    ref.assert_close(out, ref.embedding_bag(static, np.arange(4), offsets, weights, "sqrtn"))
    d_out = np.ones((2, D), np.float32)
    grad = table.lookup_grad(d_out, values, offsets, weights, combiner="sqrtn")
    ids, rows = ref.embedding_bag_grad(d_out, np.arange(4), offsets, weights, "sqrtn")
    assert grad.indices.shape == (1,)   # only key 1's row
    ref.assert_close(grad.values[0], rows[0] + rows[2])


def test_evaluation_lookup_changes_nothing():
    table = st.DynamicEmbeddingTable(D, "eval", filter_freq=2, default_value=-1.5)
    table.lookup([3, 3, 4], [0, 3], global_step=1)
    before = table.state_dict()
    out = table.lookup([3, 4, 99, 4], [0, 1, 4], training=False, global_step=7)
    after = table.state_dict()
    assert before.keys() == after.keys()
    for field in before:
        np.testing.assert_array_equal(before[field], after[field])
    np.testing.assert_array_equal(out[0], table.export()["values"][0])
    np.testing.assert_array_equal(out[1], np.full(D, -4.5, np.float32))


def test_capacity_error_changes_nothing():
    table = st.DynamicEmbeddingTable(D, "capped", filter_freq=2, capacity=2)
    table.lookup([1, 1, 2, 2, 3], [0, 5], global_step=0)
    before = table.state_dict()
    with pytest.raises(ValueError, match="'capped'.*capacity of 2"):
        table.lookup([3, 4, 4, 5], [0, 4], global_step=1)
    after = table.state_dict()
    for field in before:
        np.testing.assert_array_equal(before[field], after[field])
    table.lookup([4, 5], [0, 2], global_step=1)    # counted, none admitted: fine
    assert len(table) == 2 and table.num_pending == 3


def test_max_pending_error_changes_nothing():
    table = st.DynamicEmbeddingTable(D, "flood", filter_freq=3, max_pending=3)
    table.lookup([1, 1, 2, 3], [0, 4], global_step=0)            # 3 pending
    table.lookup([1, 4], [0, 2], global_step=1)     # 1 admitted, 4 new: still 3 pending
    before = table.state_dict()
    assert before["keys"].tolist() == [1] and before["pending_keys"].tolist() == [2, 3, 4]
    with pytest.raises(ValueError, match="'flood'.*5 keys would be pending.*max_pending of 3"):
        table.lookup([5, 2, 6], [0, 3], global_step=2)
    after = table.state_dict()
    for field in before:
        np.testing.assert_array_equal(before[field], after[field])
    table.lookup([2, 2, 5], [0, 3], global_step=2)   # 2 admitted, 5 pending: 3 pending
    assert len(table) == 2 and table.num_pending == 3
    assert st.DynamicEmbeddingTable(D, "c", capacity=3).max_pending == 12
    assert st.DynamicEmbeddingTable(D, "u").max_pending is None
    with pytest.raises(ValueError, match="'small'.*3 pending keys.*max_pending of 2"):
        st.DynamicEmbeddingTable(D, "small", max_pending=2).load_state_dict(before)


def test_lookup_grad_after_a_lookup_of_other_bags():
    """The gradient planned by a training lookup is reused only for the same
    bags: other offsets, weights or combiner get their own (float64 reference
    over the rows the keys read)."""
    table = st.DynamicEmbeddingTable(D, "replan")
    values = np.array([5, -5, 5, 9, 9, 5], np.int64)
    table.lookup(values, [0, 2, 6], global_step=0)
    rows = table.resolve(values, training=False)
    d_out = np.arange(3 * D, dtype=np.float32).reshape(3, D)
    for offsets, weights, combiner in (([0, 1, 4, 6], None, "sum"),
                                       ([0, 2, 6], np.arange(1, 7, dtype=np.float32), "sum"),
                                       ([0, 2, 6], None, "mean")):
        bags = len(offsets) - 1
        grad = table.lookup_grad(d_out[:bags], values, offsets, weights, combiner)
        ids, parts = ref.embedding_bag_grad(d_out[:bags], rows, offsets, weights, combiner)
        dense = np.zeros((table.rows_allocated, D))
        np.add.at(dense, ids, parts)
        ref.assert_close(grad.to_dense(), dense)
    grad = table.lookup_grad(d_out[:2], values, [0, 2, 6])
    assert grad.indices.tolist() == sorted(set(rows.tolist()))   # increasing: coalesced
    with pytest.raises(ValueError, match="d_out must have shape"):
        table.lookup_grad(d_out, values, [0, 2, 6])


# ------------------------------------------------------- static equivalence
OPTIMIZERS = ["GradientDescent", "Adagrad", "AdagradDecay", "Adam", "LazyAdam",
              "RowwiseAdagrad", "Ftrl"]


@pytest.mark.parametrize("kind", OPTIMIZERS)
def test_equals_static_table_for_every_optimizer(kind, make_optimizer, slots_of):
    V = 30
    rng = np.random.default_rng(11)
    dynamic = st.DynamicEmbeddingTable(D, "dyn", seed=5)
    static = st.EmbeddingTable(V, D, "static")
    static.weight.value[...] = dynamic.initial_rows(np.arange(V))
    steps = (GlobalStep(), GlobalStep())
    opts = (make_optimizer(kind, steps[0]), make_optimizer(kind, steps[1]))
    for step in range(6):
        values, offsets = _batch(rng, np.arange(V), num_bags=8)
        weights = rng.uniform(0.5, 2.0, values.shape[0]).astype(np.float32)
        combiner = ("sum", "mean", "sqrtn")[step % 3]
        got = dynamic.lookup(values, offsets, weights, combiner, global_step=steps[0])
        want = static.lookup(values, offsets, weights, combiner)
        np.testing.assert_array_equal(got, want)
        d_out = rng.standard_normal(want.shape).astype(np.float32)
        for opt, table, gs in ((opts[0], dynamic, steps[0]), (opts[1], static, steps[1])):
            opt.apply_gradients([(table.lookup_grad(d_out, values, offsets, weights, combiner),
                                  table.weight)], global_step=gs)
        export = dynamic.export()
        np.testing.assert_array_equal(export["values"], static.weight.value[export["keys"]])
        for name, slot in slots_of(opts[1], static.weight).items():
            np.testing.assert_array_equal(export[name], slot[export["keys"]], err_msg=name)


# --------------------------------------------------------------- threads
def _run_stream(threads):
    old = numba.get_num_threads()
    numba.set_num_threads(threads)
    try:
        rng = np.random.default_rng(5)
        table = st.DynamicEmbeddingTable(8, "threads", filter_freq=2, steps_to_live=2)
        opt = optim.Adagrad(0.1)
        pool = rng.integers(-(2**62), 2**62, 30000, dtype=np.int64)
        for step in range(3):
            # over coalesce.PARALLEL_MIN_IDS ids: the parallel grouping runs
            values = rng.choice(pool, 40000)
            offsets = np.arange(0, 40001, 40, dtype=np.int64)
            table.lookup(values, offsets, global_step=step)
            d_out = rng.standard_normal((1000, 8)).astype(np.float32)
            opt.apply_gradients([(table.lookup_grad(d_out, values, offsets), table.weight)])
            table.evict(step)
        return table.state_dict(), table.weight.value.copy()
    finally:
        numba.set_num_threads(old)


def test_one_and_two_threads_give_the_same_bits():
    if numba.config.NUMBA_NUM_THREADS < 2:
        pytest.skip("needs 2 Numba threads")
    (one, rows_one), (two, rows_two) = _run_stream(1), _run_stream(2)
    assert len(one["keys"]) > 1000
    for field in one:
        np.testing.assert_array_equal(one[field], two[field], err_msg=field)
    np.testing.assert_array_equal(rows_one, rows_two)   # even the row layout


# ----------------------------------------------------------- checkpoints
def _train(table, opt, rng, steps, start=0):
    pool = np.concatenate([POOL, np.arange(100, 140, dtype=np.int64)])
    for step in range(start, start + steps):
        values, offsets = _batch(rng, pool, num_bags=10)
        table.lookup(values, offsets, global_step=step)
        d_out = rng.standard_normal((offsets.shape[0] - 1, D)).astype(np.float32)
        grad = table.lookup_grad(d_out, values, offsets)
        if grad.nnz:
            opt.apply_gradients([(grad, table.weight)])
        if step % 2:
            table.evict(step)


def _assert_same_state(a, b):
    assert sorted(a) == sorted(b)
    for field in a:
        assert a[field].dtype == b[field].dtype, field
        np.testing.assert_array_equal(a[field], b[field], err_msg=field)


def _new_table():
    return st.DynamicEmbeddingTable(D, "ckpt", filter_freq=2, steps_to_live=3,
                                    l2_weight_threshold=0.02)


def test_state_dict_round_trip_continues_bit_for_bit():
    rng = np.random.default_rng(2)
    live, opt = _new_table(), optim.Ftrl(0.2)
    _train(live, opt, rng, 8)
    state = live.state_dict()
    assert state["slots/Ftrl/accum"].shape == state["values"].shape
    restored, opt2 = _new_table(), optim.Ftrl(0.2)
    restored.load_state_dict(state)           # Ftrl not attached yet: slots held
    _assert_same_state(restored.state_dict(), state)
    _train(live, opt, np.random.default_rng(9), 6, start=8)
    _train(restored, opt2, np.random.default_rng(9), 6, start=8)
    _assert_same_state(restored.state_dict(), live.state_dict())


def test_delta_round_trip_equals_live_state():
    rng = np.random.default_rng(4)
    live, opt = _new_table(), optim.Adam(0.05)      # Adam moves untouched rows too
    _train(live, opt, rng, 5)
    full = live.state_dict()
    live.mark_saved()
    deltas = []
    for part in range(3):
        _train(live, opt, rng, 4, start=5 + 4 * part)
        deltas.append(live.delta_state_dict())
        assert deltas[-1]["keys"].size <= len(live)
        live.mark_saved()
    assert any(d["tombstones"].size for d in deltas)
    assert any(d["pending_tombstones"].size for d in deltas)
    restored = _new_table()
    restored.load_state_dict(full)
    for delta in deltas:
        restored.apply_delta_state_dict(delta)
    _assert_same_state(restored.state_dict(), live.state_dict())
    assert live.delta_state_dict()["keys"].size == 0   # nothing changed since the mark


def test_delta_holds_only_changed_keys():
    table = st.DynamicEmbeddingTable(D, "few")
    opt = optim.Adagrad(0.1)
    values = np.arange(10, dtype=np.int64)
    table.lookup(values, [0, 10], global_step=0)
    opt.apply_gradients([(table.lookup_grad(np.ones((1, D), np.float32), values, [0, 10]),
                          table.weight)])
    table.mark_saved()
    table.lookup([3, 4], [0, 2], global_step=1)
    delta = table.delta_state_dict()
    assert delta["keys"].tolist() == [3, 4] and delta["counts"].tolist() == [2, 2]
    assert delta["slots/Adagrad/accumulator"].shape == (2, D)


def test_load_state_dict_validates_before_changing_anything():
    table = _new_table()
    _train(table, optim.Adagrad(0.1), np.random.default_rng(1), 4)
    good = table.state_dict()
    bad_cases = {
        "keys": good["keys"][::-1].copy(),
        "values": good["values"].astype(np.float64),
        "counts": good["counts"][:-1],
        "pending_keys": np.concatenate([good["pending_keys"], good["keys"][-1:]]),
    }
    for field, value in bad_cases.items():
        state = dict(good, **{field: value})
        if field == "pending_keys":
            state["pending_keys"] = np.sort(value)
            state["pending_counts"] = np.ones(value.shape[0], np.int64)
            state["pending_last_seen"] = np.ones(value.shape[0], np.int64)
        with pytest.raises(ValueError, match="'ckpt'"):
            table.load_state_dict(state)
        _assert_same_state(table.state_dict(), good)
    capped = st.DynamicEmbeddingTable(D, "ckpt", capacity=1)
    with pytest.raises(ValueError, match="capacity"):
        capped.load_state_dict(good)
    with pytest.raises(ValueError, match="embedding_dim|shape"):
        st.DynamicEmbeddingTable(D + 1, "ckpt").load_state_dict(good)


def test_bad_arguments_are_refused():
    for kwargs in (dict(filter_freq=-1), dict(steps_to_live=1.5), dict(capacity=-2),
                   dict(max_pending=-1), dict(max_pending=2.5),
                   dict(l2_weight_threshold=float("nan")), dict(initializer="ones")):
        with pytest.raises(ValueError, match="'bad'"):
            st.DynamicEmbeddingTable(D, "bad", **kwargs)
    with pytest.raises(ValueError, match="integers"):
        st.DynamicEmbeddingTable(D, "bad").lookup([1.5], [0, 1])


def test_autodiff_and_clipping_paths():
    table = st.DynamicEmbeddingTable(D, "clip")
    values, offsets = np.array([10, -10, 10], np.int64), np.array([0, 2, 3], np.int64)
    table.lookup(values, offsets, global_step=0)
    grad = table.lookup_grad(np.full((2, D), 3.0, np.float32), values, offsets)
    (clipped,), norm = st.clip_by_global_norm([grad], 1.0)
    ref.assert_close(norm, np.sqrt(D * (6.0 ** 2 + 3.0 ** 2)))
    before = table.weight.value.copy()
    optim.GradientDescent(1.0).apply_gradients([(clipped, table.weight)])
    moved = np.flatnonzero((table.weight.value != before).any(axis=1))
    assert moved.tolist() == sorted(table.resolve([10, -10], training=False).tolist())
    assert F.drop_grad_rows_below(grad, 0).nnz == 2


def test_docstring_examples():
    import doctest
    from sparse_train.nn import dynamic_embedding
    result = doctest.testmod(dynamic_embedding)
    assert result.attempted > 0 and result.failed == 0, result
