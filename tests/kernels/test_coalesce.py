"""``kernels.coalesce.group_rows`` against a brute-force grouping.

The grouping behind every coalesce and every update plan: unique ids in
increasing order, each id's positions ascending. Covered here on every path
of the kernel: empty and single-id input, the serial radix sort (small
input, or one thread) and the parallel one (above ``PARALLEL_MIN_IDS`` on
two threads), one to three radix passes (the four-key scatter against a
stable argsort on every short digit pattern), passes skipped because every id
has the same digit (all one id, ids clustered high), ids at the packing
limit, and ids too wide to pack with their positions (refused).
"""
import os
import subprocess
import sys

import numpy as np
import pytest

from sparse_train.kernels import _jit
from sparse_train.kernels.coalesce import PARALLEL_MIN_IDS, group_rows, use_threads


def brute_force_groups(ids):
    """(rows, starts, order) by a dict of id -> positions, in plain Python."""
    positions = {}
    for pos, row in enumerate(np.asarray(ids).tolist()):
        positions.setdefault(row, []).append(pos)
    rows = sorted(positions)
    order = [pos for row in rows for pos in positions[row]]
    starts = np.cumsum([0] + [len(positions[row]) for row in rows])
    return np.array(rows, np.int64), starts.astype(np.int64), np.array(order, np.int64)


def numpy_groups(ids):
    """(rows, starts, order) by np.unique and a stable argsort (large inputs)."""
    rows, counts = np.unique(ids, return_counts=True)
    return rows, np.concatenate([[0], np.cumsum(counts)]), np.argsort(ids, kind="stable")


def assert_groups(ids, reference=brute_force_groups):
    _jit._TEAM_STATE[0] = 0  # regions not running alone: 2 threads take the parallel sort
    got = group_rows(np.asarray(ids, np.int64))
    want = reference(np.asarray(ids, np.int64))
    for name, g, w in zip(("rows", "starts", "order"), got, want):
        assert g.dtype == np.int64, name
        np.testing.assert_array_equal(g, w, err_msg=name)


@pytest.mark.parametrize("ids", [[], [0], [7], [3, 3, 3], [5, 0, 5, 2, 0, 9]])
def test_small_inputs(ids):
    assert_groups(ids)


BIG = PARALLEL_MIN_IDS + 1234


def test_big_inputs_take_the_parallel_sort_on_two_threads_only(threads):
    saved = _jit._TEAM_STATE[0]
    try:
        _jit._TEAM_STATE[0] = 0
        assert use_threads(BIG) == (threads > 1)
        assert not use_threads(PARALLEL_MIN_IDS - 1)
        # regions running alone (another process holds a core): the serial sort
        _jit._TEAM_STATE[0] = 1 << 40
        assert not use_threads(BIG)
        ids = np.random.default_rng(9).integers(0, 1 << 22, BIG)
        got, want = group_rows(ids), numpy_groups(ids)
        for g, w in zip(got, want):
            np.testing.assert_array_equal(g, w)
    finally:
        _jit._TEAM_STATE[0] = saved


@pytest.mark.parametrize("num_rows", [2, 1000, 1 << 21, 10_000_000, 1 << 33])
@pytest.mark.parametrize("n", [100, BIG])
def test_random_ids_serial_and_parallel(num_rows, n, threads):
    rng = np.random.default_rng(num_rows % 1000 + n)
    # Zipf-like skew: many duplicates of a few ids, plus a uniform spread
    hot = rng.integers(0, num_rows, 5)
    ids = np.where(rng.random(n) < 0.3, hot[rng.integers(0, 5, n)],
                   rng.integers(0, num_rows, n))
    assert_groups(ids, numpy_groups if n > 1000 else brute_force_groups)


def test_zipf_ids(threads):
    # long runs of a hot id after the first pass (the scatter's run path)
    rng = np.random.default_rng(5)
    ids = rng.permutation(1 << 20)[np.minimum(rng.zipf(1.1, BIG), 1 << 20) - 1]
    assert_groups(ids, numpy_groups)


@pytest.mark.parametrize("n", [1, 5, BIG])
@pytest.mark.parametrize("row", [0, 1, 4095, 4096, (1 << 40) + 3])
def test_all_one_id(n, row, threads):
    # every digit constant: every pass skipped
    assert_groups(np.full(n, row), numpy_groups)


@pytest.mark.parametrize("n", [300, BIG])
def test_ids_clustered_high(n, threads):
    # high digits constant (skipped), low digits not; ids 2**40 + [0, 5000)
    rng = np.random.default_rng(n)
    ids = (np.int64(1) << np.int64(40)) + rng.integers(0, 5000, n)
    assert_groups(ids, numpy_groups)


@pytest.mark.parametrize("n", [1, 2, 100, BIG])
def test_ids_at_the_packing_limit(n, threads):
    # the largest id that packs with n positions: id bits + position bits = 63
    pos_bits = max(1, int(n - 1).bit_length())
    top = (np.int64(1) << np.int64(63 - pos_bits)) - 1
    rng = np.random.default_rng(n)
    ids = np.where(rng.random(n) < 0.5, top, top - rng.integers(0, 1 << 20, n))
    assert_groups(ids, numpy_groups)


def test_ids_near_2_to_the_62(threads):
    # 62 id bits + 1 position bit: the widest ids that pack at all
    near = (np.int64(1) << np.int64(62)) - np.array([1, 7], np.int64)
    assert_groups(near)
    assert_groups(near[:1])
    with pytest.raises(ValueError, match="ids must be below"):
        group_rows(near + 8)


@pytest.mark.parametrize("hot", [0, 777_777, (1 << 20) - 1])
def test_one_hot_top_digit_leaves_ranges_empty(hot, threads):
    # the parallel sort cuts ids into ranges at top-digit boundaries and never
    # splits a digit: 90% of the ids on one id (one range holds them, others
    # none), the rest spread, some sharing the hot id's top digit
    rng = np.random.default_rng(hot)
    ids = np.where(rng.random(BIG) < 0.9, hot, rng.integers(0, 1 << 20, BIG))
    ids[::101] = hot ^ rng.integers(0, 1 << 10, ids[::101].shape[0])
    assert_groups(ids, numpy_groups)


def test_two_ids_far_apart(threads):
    # two distinct ids: most ranges empty, the non-empty ones a digit each
    rng = np.random.default_rng(4)
    ids = np.where(rng.random(BIG) < 0.5, 3, (1 << 33) + 5)
    assert_groups(ids, numpy_groups)


def test_range_grouping_by_bag_against_brute_force():
    # group_ranges directly (any thread count: it is the same function), keys
    # tagged with their bag; empty bags first, between and last
    from sparse_train.kernels.coalesce import group_ranges
    rng = np.random.default_rng(8)
    lengths = rng.integers(0, 30, 3000)
    lengths[:5] = 0
    lengths[1000:1010] = 0
    lengths[-7:] = 0
    offsets = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)
    ids = rng.integers(0, 70_000, offsets[-1])
    bag = np.repeat(np.arange(lengths.shape[0]), lengths)
    key_bits = int(ids.max()).bit_length()
    tag_bits = int(lengths.shape[0] - 1).bit_length()
    rows, starts, tags = group_ranges(ids, offsets, key_bits, tag_bits, True)
    want_rows, want_starts, order = brute_force_groups(ids)
    np.testing.assert_array_equal(rows, want_rows)
    np.testing.assert_array_equal(starts, want_starts)
    np.testing.assert_array_equal(tags, bag[order])


def _every_digit_sequence(max_len, digits):
    for n in range(max_len + 1):
        for code in range(digits ** n):
            yield [(code // digits ** k) % digits for k in range(n)]


def test_scatter_keys_every_digit_pattern_against_a_stable_argsort():
    # the scatter takes four keys at a time and places keys of one digit
    # among the four by counting: every sequence of up to 7 digits of 3
    # (each pattern of repeats within and across the groups of four, and
    # the 0-3 keys left after them), with a key prefix before lo and after
    # hi that must stay untouched
    from sparse_train.kernels.coalesce import scatter_keys
    shift, mask, lo, extra = 5, 3, 2, 3
    for digit_seq in _every_digit_sequence(7, 3):
        n = len(digit_seq)
        digit = np.array(digit_seq, np.int64)
        # key: digit bits above ``shift``, a high bit outside the mask, the position below
        keys = np.full(lo + n + extra, -1, np.int64)
        keys[lo:lo + n] = (digit << shift) | (np.int64(1) << 10) | np.arange(n)
        counts = np.bincount(digit, minlength=mask + 1) if n else np.zeros(mask + 1, np.int64)
        next_pos = lo + np.concatenate([[0], np.cumsum(counts)[:-1]]).astype(np.int64)
        out = np.full_like(keys, -7)
        scatter_keys(out, keys, lo, lo + n, next_pos, shift, mask)
        want = keys[lo:lo + n][np.argsort(digit, kind="stable")]
        np.testing.assert_array_equal(out[lo:lo + n], want, err_msg=str(digit_seq))
        np.testing.assert_array_equal(next_pos, lo + np.cumsum(counts), err_msg=str(digit_seq))
        assert (out[:lo] == -7).all() and (out[lo + n:] == -7).all(), digit_seq


def test_ids_too_wide_to_pack_are_refused():
    # id bits + position bits > 63: no table that large fits in memory
    ids = (np.int64(1) << np.int64(60)) + np.arange(300)
    with pytest.raises(ValueError, match="ids must be below"):
        group_rows(ids)


def test_input_ids_are_not_modified_and_read_only_input_works():
    ids = np.random.default_rng(2).integers(0, 50, PARALLEL_MIN_IDS + 7)
    frozen = ids.copy()
    frozen.flags.writeable = False
    group_rows(frozen)
    np.testing.assert_array_equal(frozen, ids)


_FIRST_CALL = """
import numpy as np
from sparse_train.kernels.coalesce import PARALLEL_MIN_IDS, group_rows
ids = np.random.default_rng(3).integers(0, 5000, 2 * PARALLEL_MIN_IDS)
rows, starts, order = group_rows(ids)
want_rows, counts = np.unique(ids, return_counts=True)
assert np.array_equal(rows, want_rows)
assert np.array_equal(starts, np.concatenate([[0], np.cumsum(counts)]))
assert np.array_equal(order, np.argsort(ids, kind="stable"))
print("ok")
"""


def test_first_call_of_a_fresh_process_takes_the_parallel_path():
    """``group_rows`` is a serial kernel that calls parallel ones. As the very
    first Numba call of a process, on an input above ``PARALLEL_MIN_IDS``
    (the parallel radix sort), it must give numpy's grouping; run twice, so
    the second process loads it from the cache."""
    env = {**os.environ, "NUMBA_NUM_THREADS": "2"}
    for _ in range(2):
        done = subprocess.run([sys.executable, "-c", _FIRST_CALL], capture_output=True,
                              text=True, timeout=300, env=env)
        assert done.returncode == 0 and done.stdout.strip() == "ok", done.stderr[-2000:]
