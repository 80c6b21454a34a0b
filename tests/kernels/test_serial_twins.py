"""Serial twins give the parallel kernels' bits (DESIGN.md "Serial twins").

Each twin shares its loop body with the parallel kernel; here the two are
run on the same random inputs (weights or none, padding ids, empty bags,
zero-divisor bags, every combiner), on 1 thread and 2, and must agree bit
for bit, and both match a float64 NumPy reference. ``_jit.by_work`` picks
the twin below ``PARALLEL_MIN_WORK`` only.
"""
import numpy as np
import pytest

from sparse_train.kernels import _jit
from sparse_train.kernels import lookup as L
from sparse_train.kernels.coalesce import PARALLEL_MIN_IDS, group_rows, group_rows_serial

COMBINERS = [L.SUM, L.MEAN, L.SQRTN]


def random_bags(rng, num_bags, num_rows, has_weights, padding_idx):
    """(values, offsets, weights): bags of 0-12 ids, a third of them empty;
    weights from {-1, 0, 0.5, 1, 2} (so some mean / sqrtn divisors are 0)."""
    lengths = rng.integers(0, 13, num_bags)
    lengths[rng.random(num_bags) < 0.3] = 0
    offsets = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)
    values = rng.integers(0, num_rows, offsets[-1]).astype(np.int64)
    if padding_idx >= 0:
        values[rng.random(values.shape[0]) < 0.2] = padding_idx
    if has_weights:
        weights = rng.choice(np.float32([-1, 0, 0.5, 1, 2]), values.shape[0])
    else:
        weights = np.empty(0, np.float32)
    return values, offsets, weights


def reference_divisors(values, offsets, weights, has_weights, combiner, padding_idx):
    """float64 divisor of each bag (SPEC section 3)."""
    out = []
    for b in range(offsets.shape[0] - 1):
        w = [float(weights[i]) if has_weights else 1.0
             for i in range(offsets[b], offsets[b + 1]) if values[i] != padding_idx]
        out.append(1.0 if combiner == L.SUM else
                   sum(w) if combiner == L.MEAN else np.sqrt(sum(x * x for x in w)))
    return out


CASES = [(has_weights, padding_idx, combiner) for has_weights in (False, True)
         for padding_idx in (-1, 3) for combiner in COMBINERS]


@pytest.mark.parametrize("dim", [16, 5])
@pytest.mark.parametrize("has_weights,padding_idx,combiner", CASES)
def test_forward_twin(has_weights, padding_idx, combiner, dim, threads):
    rng = np.random.default_rng(dim + 10 * combiner + 100 * has_weights + padding_idx)
    values, offsets, weights = random_bags(rng, 300, 50, has_weights, padding_idx)
    table = rng.standard_normal((50, dim)).astype(np.float32)
    args = (table, values, offsets, weights, has_weights, combiner, padding_idx)
    parallel = np.full((300, dim), np.nan, np.float32)
    serial = np.full((300, dim), np.nan, np.float32)
    L.embedding_bag_forward(parallel, *args, _jit.row_dim(dim))
    L.embedding_bag_forward_serial(serial, *args, dim)
    np.testing.assert_array_equal(parallel.view(np.uint32), serial.view(np.uint32))
    # the forward is the plan read the other way: bag b gets coef * table[row]
    rows, starts, bags, coefs = reference_plan(values, offsets, weights, has_weights,
                                               combiner, padding_idx)
    expected = np.zeros((300, dim))
    for u, row in enumerate(rows):
        for k in range(starts[u], starts[u + 1]):
            expected[bags[k]] += coefs[k] * table[row].astype(np.float64)
    np.testing.assert_allclose(serial, expected, rtol=1e-5, atol=1e-5)


def reference_plan(values, offsets, weights, has_weights, combiner, padding_idx):
    """(rows, starts, src_index, src_coef float64) by brute force."""
    divisors = reference_divisors(values, offsets, weights, has_weights, combiner, padding_idx)
    contributions = {}
    for b, divisor in enumerate(divisors):
        if divisor == 0.0:
            continue
        for i in range(offsets[b], offsets[b + 1]):
            if values[i] != padding_idx:
                w = float(weights[i]) if has_weights else 1.0
                contributions.setdefault(int(values[i]), []).append(
                    (b, w if combiner == L.SUM else w / divisor))
    rows = sorted(contributions)
    starts = np.cumsum([0] + [len(contributions[r]) for r in rows])
    pairs = [pair for r in rows for pair in contributions[r]]
    return (np.array(rows, np.int64), starts, np.array([b for b, _ in pairs], np.int64),
            np.array([c for _, c in pairs]))


@pytest.mark.parametrize("num_bags", [300, PARALLEL_MIN_IDS // 4])
@pytest.mark.parametrize("has_weights,padding_idx,combiner", CASES)
def test_grad_plan_twin(has_weights, padding_idx, combiner, num_bags, threads):
    rng = np.random.default_rng(num_bags + 10 * combiner + 100 * has_weights + padding_idx)
    bags = random_bags(rng, num_bags, 1000, has_weights, padding_idx)
    args = bags + (has_weights, combiner, padding_idx)
    _jit._TEAM_STATE[0] = 0  # not running alone: 2 threads take the parallel sort
    parallel = L.embedding_bag_grad_plan(*args)
    serial = L.embedding_bag_grad_plan_serial(*args)
    for a, b in zip(parallel, serial):
        assert a.dtype == b.dtype
        np.testing.assert_array_equal(a.view(np.uint8), b.view(np.uint8))
    if num_bags > 300:
        return  # (the brute force is slow; the small case checks the values)
    rows, starts, src_index, src_coef = reference_plan(*args)
    np.testing.assert_array_equal(serial[0], rows)
    np.testing.assert_array_equal(serial[1], starts)
    np.testing.assert_array_equal(serial[2], src_index)
    np.testing.assert_allclose(serial[3], src_coef, rtol=1e-6)


@pytest.mark.parametrize("num_features", [1, 3])
def test_fuse_bags_twin(num_features, threads):
    rng = np.random.default_rng(num_features)
    num_bags = 200
    starts, parts, weights, first = [], [], [], 0
    for _ in range(num_features):
        values, offsets, w = random_bags(rng, num_bags, 40, True, -1)
        starts.append(offsets + first)
        first += values.shape[0]
        parts.append(values)
        weights.append(w)
    values, weights = np.concatenate(parts), np.concatenate(weights)
    bag_starts = np.stack(starts)
    combiners = np.array([COMBINERS[f % 3] for f in range(num_features)], np.int64)
    row_offsets = np.arange(num_features, dtype=np.int64) * 40
    args = (values, bag_starts, weights, combiners, row_offsets)
    parallel, serial = L.fuse_bags(*args), L.fuse_bags_serial(*args)
    for a, b in zip(parallel, serial):
        np.testing.assert_array_equal(a.view(np.uint8), b.view(np.uint8))
    out_values, out_weights, out_offsets = [], [], [0]
    for b in range(num_bags):
        for f in range(num_features):
            lo, hi = bag_starts[f, b], bag_starts[f, b + 1]
            w = weights[lo:hi].astype(np.float64)
            divisor = (1.0 if combiners[f] == L.SUM else w.sum() if combiners[f] == L.MEAN
                       else np.sqrt((w * w).sum()))
            if divisor != 0.0:
                out_values.extend(values[lo:hi] + row_offsets[f])
                out_weights.extend(w if combiners[f] == L.SUM else w / divisor)
            out_offsets.append(len(out_values))
    np.testing.assert_array_equal(serial[0], out_values)
    np.testing.assert_array_equal(serial[1], out_offsets)
    np.testing.assert_allclose(serial[2], out_weights, rtol=1e-6)


@pytest.mark.parametrize("n", [0, 1, 1000, 3 * PARALLEL_MIN_IDS])
def test_group_rows_twin(n, threads):
    rng = np.random.default_rng(n)
    ids = rng.integers(0, 5000, n).astype(np.int64)
    _jit._TEAM_STATE[0] = 0
    rows, starts, order = group_rows(ids)
    serial = group_rows_serial(ids)
    for a, b in zip((rows, starts, order), serial):
        np.testing.assert_array_equal(a, b)
    expected_rows, counts = np.unique(ids, return_counts=True)
    np.testing.assert_array_equal(rows, expected_rows)
    np.testing.assert_array_equal(starts, np.concatenate([[0], np.cumsum(counts)]))
    np.testing.assert_array_equal(order, np.argsort(ids, kind="stable"))


def test_by_work_threshold():
    parallel, serial = object(), object()
    assert _jit.by_work(_jit.PARALLEL_MIN_WORK - 1, parallel, serial) is serial
    assert _jit.by_work(_jit.PARALLEL_MIN_WORK, parallel, serial) is parallel
    assert _jit.by_work(0, parallel, serial) is serial


@pytest.mark.parametrize("dim", [16, 5])
def test_adagrad_decay_twin(dim, threads):
    from sparse_train.kernels.adagrad_decay import (adagrad_decay_apply,
                                                    adagrad_decay_apply_serial)
    from sparse_train.kernels.coalesce import GradPlan
    rng = np.random.default_rng(dim)
    num_rows, num_bags = 300, 400
    values, offsets, _ = random_bags(rng, num_bags, num_rows, False, -1)
    rows, starts, src_index, src_coef = L.embedding_bag_grad_plan_serial(
        values, offsets, np.empty(0, np.float32), False, L.MEAN, -1)
    d_out = rng.standard_normal((num_bags, dim)).astype(np.float32)
    plan = GradPlan(rows, starts, src_index, src_coef, d_out, np.float32(0.75))
    weight0 = rng.standard_normal((num_rows, dim)).astype(np.float32)
    accumulator0 = rng.uniform(0.1, 2, (num_rows, dim)).astype(np.float32)
    power0 = rng.integers(0, 3, num_rows)
    lr, initial, rate, step, decay_step = (np.float32(0.5), np.float32(0.1), np.float32(0.9),
                                           np.int64(5), np.int64(2))
    results = []
    for kernel, width in ((adagrad_decay_apply, _jit.row_dim(dim)),
                          (adagrad_decay_apply_serial, dim)):
        state = weight0.copy(), accumulator0.copy(), power0.copy()
        kernel(*state, plan, lr, initial, rate, step, decay_step, width)
        results.append(state)
    for a, b in zip(*results):
        np.testing.assert_array_equal(a.view(np.uint8), b.view(np.uint8))
    # float64 reference (module docstring of kernels.adagrad_decay)
    weight, accumulator, power = (weight0.astype(np.float64), accumulator0.astype(np.float64),
                                  power0.copy())
    for u, r in enumerate(rows):
        k = np.arange(starts[u], starts[u + 1])
        g = 0.75 * (src_coef[k, None] * d_out[src_index[k]].astype(np.float64)).sum(axis=0)
        if step // decay_step > power[r]:
            accumulator[r] = np.maximum(accumulator[r] * float(rate), float(initial))
            power[r] += 1
        accumulator[r] += g * g
        weight[r] -= float(lr) * g / np.sqrt(accumulator[r])
    np.testing.assert_array_equal(results[1][2], power)
    np.testing.assert_allclose(results[1][1], accumulator, rtol=1e-5)
    np.testing.assert_allclose(results[1][0], weight, rtol=1e-5, atol=1e-5)
    untouched = np.setdiff1d(np.arange(num_rows), rows)
    np.testing.assert_array_equal(results[1][0][untouched], weight0[untouched])
