"""kernels/key_map.py against a Python dict: inserts, lookups and deletions
(backward-shift, no tombstones) in a small map where probe runs collide and
wrap around; resolve_keys groups a batch once per unique key."""
import numpy as np

from sparse_train.kernels import key_map as K

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


def _empty(num_slots, num_entries):
    sizes = np.zeros(6, np.int64)
    sizes[K.ROWS_USED] = 1
    return K.KeyMap(np.zeros(num_slots, np.int64), np.full(num_slots, -1, np.int64),
                    np.zeros(num_entries, np.int64), np.full(num_entries, K.FREE, np.int64),
                    np.zeros(num_entries, np.int64), np.zeros(num_entries, np.int64),
                    np.zeros(num_entries, np.int64), np.zeros(num_entries, np.int64), sizes)


def _insert_pending(km, keys, step):
    """A training pass that never admits (filter_freq huge): keys counted."""
    res = K.Resolved(*K.resolve_keys(keys, km.slot_keys, km.slot_entry))
    new, admissions = K.count_changes(res.unique_entry, res.unique_count, res.starts,
                                      res.distinct, km.entry_row, km.entry_count, I64.max)
    assert admissions == 0
    K.apply_training(np.empty(0, np.int64), np.empty(0, np.int64), res.unique_entry, km,
                     res.unique_key, res.unique_count, res.starts, res.distinct,
                     np.int64(step), I64.max)
    return new


def _check(km, model):
    """Every key of ``model`` ({key: count}) is found with its count; the map
    holds exactly these keys; each probe run from a key's home has no gap."""
    keys = np.array(sorted(model), np.int64)
    entries = np.empty(keys.shape[0], np.int64)
    K.find_entries(entries, km.slot_keys, km.slot_entry, keys, km.slot_keys.shape[0] - 1)
    assert (entries >= 0).all()
    assert km.entry_key[entries].tolist() == keys.tolist()
    assert km.entry_count[entries].tolist() == [model[k] for k in keys.tolist()]
    occupied = km.slot_entry >= 0
    assert occupied.sum() == len(model) == km.sizes[K.LIVE]
    mask = km.slot_keys.shape[0] - 1
    for s in np.flatnonzero(occupied):   # linear probing: no empty slot between home and s
        h = _home(int(km.slot_keys[s]), mask)
        while h != s:
            assert occupied[h]
            h = (h + 1) & mask
    absent = np.array([k for k in (-5, 3, I64.min + 1) if k not in model], np.int64)
    found = np.empty(absent.shape[0], np.int64)
    K.find_entries(found, km.slot_keys, km.slot_entry, absent, mask)
    assert (found == -1).all()


def test_insert_find_delete_against_a_dict():
    rng = np.random.default_rng(0)
    pool = np.concatenate([[0, -1, 1, I64.max, I64.min, 2**33, -(2**60)],
                           rng.integers(I64.min, I64.max, 25, dtype=np.int64)])
    km = _empty(32, 32)            # at most 16 keys live: long, wrapping probe runs
    model = {}
    for step in range(60):
        room = 16 - len(model)
        candidates = [k for k in rng.permutation(pool).tolist()][:max(room, 0)]
        batch = np.array(rng.choice(candidates, rng.integers(1, 8)) if candidates else [],
                         np.int64)
        new = _insert_pending(km, batch, step)
        assert new == len(set(batch.tolist()) - set(model))
        for key in batch.tolist():
            model[key] = model.get(key, 0) + 1
        _check(km, model)
        if model and step % 2:
            victims = rng.choice(sorted(model), rng.integers(1, len(model) + 1), replace=False)
            entries = np.empty(victims.shape[0], np.int64)
            K.find_entries(entries, km.slot_keys, km.slot_entry, victims.astype(np.int64), 31)
            K.remove_entries(km, entries)
            for key in victims.tolist():
                del model[key]
            _check(km, model)


def test_rebuild_keeps_every_key():
    km = _empty(64, 32)
    keys = np.array([5, -5, I64.max, I64.min, 17, 2**50], np.int64)
    _insert_pending(km, keys, 3)
    bigger = km._replace(slot_keys=np.zeros(256, np.int64), slot_entry=np.full(256, -1, np.int64))
    K.rebuild_slots(bigger.slot_keys, bigger.slot_entry, bigger.entry_key, bigger.entry_row,
                    bigger.sizes[K.ENTRIES_USED])
    _check(bigger, {k: 1 for k in keys.tolist()})


def test_resolve_groups_once_per_unique_key():
    rng = np.random.default_rng(1)
    values = rng.choice(np.array([3, -3, 2**62, I64.min, 9, 9, 9], np.int64), 500)
    km = _empty(16, 16)
    res = K.Resolved(*K.resolve_keys(values, km.slot_keys, km.slot_entry))
    uniques = {}
    for g in range(res.distinct.shape[0]):
        for u in range(res.starts[g], res.starts[g] + res.distinct[g]):
            assert res.unique_key[u] not in uniques   # each key once
            uniques[int(res.unique_key[u])] = int(res.unique_count[u])
    keys, counts = np.unique(values, return_counts=True)
    assert uniques == dict(zip(keys.tolist(), counts.tolist()))
    assert (res.unique_key[res.pos_unique] == values).all()
    assert (res.unique_entry[res.pos_unique] == -1).all()    # empty map
