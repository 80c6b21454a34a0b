"""kernels/key_map.py against a Python dict: inserts, lookups and deletions
(backward-shift, no tombstones) in a small map where probe runs collide and
wrap around; resolve_keys groups a batch once per unique key."""
import numpy as np

from sparse_train.kernels import key_map as K
from sparse_train.kernels.coalesce import group_rows

I64 = np.iinfo(np.int64)


def _home(key, mask):
    """splitmix64's finalizer of (key + golden ratio), in Python ints."""
    x = (key + 0x9E3779B97F4A7C15) % 2**64
    x ^= x >> 30
    x = (x * 0xBF58476D1CE4E5B9) % 2**64
    x ^= x >> 27
    x = (x * 0x94D049BB133111EB) % 2**64
    x ^= x >> 31
    return x & mask


def _insert_pending(km, keys, step):
    """A training pass that never admits (filter_freq huge): keys counted.
    Returns (keys inserted, the map with room for them)."""
    res = K.resolve_keys(keys, km, np.int64(step), I64.max, True)
    new, admissions = res.new_keys, res.admissions
    assert (new, admissions) == tuple(res.groups[:, K.G_NEW:].sum(axis=0))
    assert admissions == 0
    km = K.reserve_pending(km, new)
    K.admit_keys(np.empty(0, np.int64), np.empty(0, np.int64), res.unique, km, res.starts,
                 res.groups, np.int64(step), I64.max)
    return new, km


def _check(km, model):
    """Every key of ``model`` ({key: count}) is found with its count; the map
    holds exactly these keys; each probe run from a key's home has no gap."""
    slots = km.slots
    keys = np.array(sorted(model), np.int64)
    found = np.empty(keys.shape[0], np.int64)
    K.find_slots(found, slots, keys)
    assert (found >= 0).all()
    assert slots[found, K.KEY].tolist() == keys.tolist()
    assert (slots[found, K.ROW] <= K.PENDING).all()
    records = km.pending[K.PENDING - slots[found, K.ROW]]
    assert records[:, K.C_COUNT].tolist() == [model[k] for k in keys.tolist()]
    used = K.PENDING - slots[found, K.ROW]          # pending records: one a key
    assert np.unique(used).shape[0] == used.shape[0]
    assert km.sizes[K.PENDING_USED] - km.sizes[K.FREE_PENDING] == len(model)
    occupied = slots[:, K.ROW] != K.EMPTY
    assert occupied.sum() == len(model) == km.sizes[K.LIVE]
    mask = slots.shape[0] - 1
    for s in np.flatnonzero(occupied):   # linear probing: no empty slot between home and s
        h = _home(int(slots[s, K.KEY]), mask)
        while h != s:
            assert occupied[h]
            h = (h + 1) & mask
    absent = np.array([k for k in (-5, 3, I64.min + 1) if k not in model], np.int64)
    missing = np.empty(absent.shape[0], np.int64)
    K.find_slots(missing, slots, absent)
    assert (missing == -1).all()


def test_insert_find_delete_against_a_dict():
    rng = np.random.default_rng(0)
    pool = np.concatenate([[0, -1, 1, I64.max, I64.min, 2**33, -(2**60)],
                           rng.integers(I64.min, I64.max, 25, dtype=np.int64)])
    km = K.empty_map(32, 1)        # at most 16 keys live: long, wrapping probe runs
    model = {}
    for step in range(60):
        room = 16 - len(model)
        candidates = [k for k in rng.permutation(pool).tolist()][:max(room, 0)]
        batch = np.array(rng.choice(candidates, rng.integers(1, 8)) if candidates else [],
                         np.int64)
        new, km = _insert_pending(km, batch, step)
        assert new == len(set(batch.tolist()) - set(model))
        for key in batch.tolist():
            model[key] = model.get(key, 0) + 1
        _check(km, model)
        if model and step % 2:
            victims = rng.choice(sorted(model), rng.integers(1, len(model) + 1), replace=False)
            K.remove_keys(km, victims.astype(np.int64))
            for key in victims.tolist():
                del model[key]
            _check(km, model)


def test_rebuild_keeps_every_key():
    km = K.empty_map(16, 1)
    keys = np.array([5, -5, I64.max, I64.min, 17, 2**50], np.int64)
    _, km = _insert_pending(km, keys, 3)
    bigger = km._replace(slots=K.empty_map(256, 1).slots)
    K.rebuild(bigger.slots, km.slots)
    _check(bigger, {k: 1 for k in keys.tolist()})


def test_resolve_groups_once_per_unique_key():
    rng = np.random.default_rng(1)
    values = rng.choice(np.array([3, -3, 2**62, I64.min, 9, 9, 9], np.int64), 500)
    km = K.empty_map(16, 1)
    res = K.resolve_keys(values, km, np.int64(0), np.int64(2), True)
    uniques = {}
    for g in range(res.groups.shape[0]):
        for u in range(res.starts[g], res.starts[g] + res.groups[g, K.G_DISTINCT]):
            assert res.unique[u, K.U_KEY] not in uniques   # each key once
            uniques[int(res.unique[u, K.U_KEY])] = int(res.unique[u, K.U_COUNT])
    keys, counts = np.unique(values, return_counts=True)
    assert uniques == dict(zip(keys.tolist(), counts.tolist()))
    assert (res.unique[res.pos_unique, K.U_KEY] == values).all()
    assert (res.unique[res.pos_unique, K.U_SLOT] == -1).all()    # empty map
    assert res.groups[:, K.G_NEW].sum() == 5 and res.groups[:, K.G_ADMIT].sum() == 5
    assert (km.slots[:, K.ROW] == K.EMPTY).all()                  # resolving inserts nothing


def test_probe_rows_against_a_full_scan():
    """probe_rows finds admitted keys' rows; pending and missing keys read
    DEFAULT_ROW and are counted. Reference: a scan of every slot."""
    rng = np.random.default_rng(2)
    pool = rng.integers(I64.min, I64.max, 40, dtype=np.int64)
    km = K.reserve_pending(K.empty_map(256, 64), 40)
    batch = np.concatenate([pool[:20], pool[:10], pool[20:30]])   # 10 keys seen twice
    res = K.resolve_keys(batch, km, np.int64(0), np.int64(2), True)
    admitted = K.admit_keys(np.empty(res.admissions, np.int64), np.empty(res.admissions, np.int64),
                            res.unique, km, res.starts, res.groups, np.int64(0), np.int64(2))
    assert admitted == 10
    values = rng.choice(pool, 300)                  # admitted, pending and missing (30:40)
    rows = np.empty(values.shape[0], np.int64)
    missing = K.probe_rows(rows, km.slots, values)
    held = {int(k): int(r) for k, r in km.slots[km.slots[:, K.ROW] != K.EMPTY].tolist()}
    expected = [max(held.get(k, K.DEFAULT_ROW), K.DEFAULT_ROW) for k in values.tolist()]
    assert rows.tolist() == expected
    assert missing == sum(r == K.DEFAULT_ROW for r in expected) > 0
    assert sorted(set(expected) - {K.DEFAULT_ROW}) == list(range(1, 11))
    # the parallel path (taken for many ids on several threads), called directly
    homes = np.empty(values.shape[0], np.int64)
    K.home_slots(homes, values, km.slots.shape[0] - 1)
    parallel = np.full(values.shape[0], -7, np.int64)
    assert K._probe_rows_parallel(parallel, km.slots, homes, values) == missing
    assert parallel.tolist() == expected


def test_count_plan_rows_equals_counting_by_position():
    rng = np.random.default_rng(3)
    rows = rng.integers(0, 20, 500).astype(np.int64)        # row 0: no key, not counted
    unique, starts, _ = group_rows(rows)
    by_plan = np.zeros((20, 2), np.int64)
    by_plan[:, K.C_LAST_SEEN] = -1
    by_position = by_plan.copy()
    by_parallel = by_plan.copy()
    K.count_plan_rows(by_plan, unique, starts, np.int64(7))
    K._count_plan_rows_parallel(by_parallel, unique, starts, np.int64(7))   # many rows, threads
    K.count_rows(by_position, rows, np.int64(7))
    expected = np.zeros((20, 2), np.int64)
    expected[:, K.C_LAST_SEEN] = -1
    for r in rows.tolist():
        if r:
            expected[r] += [1, 0]
            expected[r, K.C_LAST_SEEN] = 7
    np.testing.assert_array_equal(by_plan, expected)
    np.testing.assert_array_equal(by_parallel, expected)
    np.testing.assert_array_equal(by_position, expected)
