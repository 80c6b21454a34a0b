"""The key -> row map of a dynamic table (SPEC section 6), in Numba.

Any int64 is a key (negative and huge included). The map is open
addressing with linear probing over ``M`` slots (a power of two), kept at
most half full:

    slot_keys  [M] int64   the key held by a slot
    slot_entry [M] int64   its entry, or -1: an empty slot

Emptiness is the entry -1, never a key value, so no key is reserved.
Deletion shifts the rest of the probe run back (Knuth's algorithm R), so
there are no tombstones and a probe stops at the first empty slot.

Everything known about a key lives in its *entry* (entries do not move when
slots do), and an admitted key owns a *row* of the row store:

    entry_key       [E] int64
    entry_row       [E] int64   its row; PENDING (counted, not admitted);
                                FREE (the entry holds no key)
    entry_count     [E] int64   training occurrences so far
    entry_last_seen [E] int64   global step of its last training lookup
    free_entries    [E] int64   stack of freed entries
    free_rows       [R] int64   stack of freed rows
    sizes           [6] int64   see ``ENTRIES_USED`` ... ``ADMITTED``

Row 0 of the row store is never given to a key: it holds the table's
default value, read by every key that has no row (``DEFAULT_ROW``).

A batch's keys are resolved once per unique key: positions are grouped by
their home slot (``hash & (M - 1)``) with ``coalesce.group_rows``, the
project's stable radix grouping, so each group owns its keys and the probes
sweep the map in address order. New keys are inserted and rows assigned by
one thread, in group order, so the layout never depends on the thread count.
"""
from typing import NamedTuple

import numpy as np

from ._jit import njit, njit_inline, njit_parallel, prange
from .coalesce import group_rows

#: ``entry_row`` of a key counted but not admitted.
PENDING = -1
#: ``entry_row`` of an entry that holds no key.
FREE = -2
#: The row read by keys without a row (holds the default value).
DEFAULT_ROW = 0

#: Indices into ``sizes``.
ENTRIES_USED = 0   # entries ever handed out (the high-water mark)
FREE_ENTRIES = 1   # entries on the free stack
ROWS_USED = 2      # rows ever handed out, row 0 included
FREE_ROWS = 3      # rows on the free stack
LIVE = 4           # keys held (admitted + pending)
ADMITTED = 5       # admitted keys

#: Initializer codes of ``init_rows``.
INIT_TRUNCATED_NORMAL, INIT_NORMAL, INIT_UNIFORM, INIT_ZEROS = 0, 1, 2, 3


class KeyMap(NamedTuple):
    """The arrays of a key map (see the module docstring)."""
    slot_keys: np.ndarray
    slot_entry: np.ndarray
    entry_key: np.ndarray
    entry_row: np.ndarray
    entry_count: np.ndarray
    entry_last_seen: np.ndarray
    free_entries: np.ndarray
    free_rows: np.ndarray
    sizes: np.ndarray


class Resolved(NamedTuple):
    """A batch's keys, resolved once per unique key (``resolve_keys``).

    Unique key j of home group g sits at ``u = starts[g] + j`` for
    ``j < distinct[g]`` (other u are unused)."""
    pos_unique: np.ndarray      # [n] int64: u of each position
    unique_key: np.ndarray      # [n] int64
    unique_entry: np.ndarray    # [n] int64: entry, or -1 for a key not in the map
    unique_count: np.ndarray    # [n] int64: occurrences in the batch
    starts: np.ndarray          # [G+1] int64
    distinct: np.ndarray        # [G] int64


# ------------------------------------------------------------------ hashing
@njit_inline
def mix64(x):
    """splitmix64's finalizer (Steele et al. 2014): uint64 -> uint64."""
    x ^= x >> np.uint64(30)
    x *= np.uint64(0xBF58476D1CE4E5B9)
    x ^= x >> np.uint64(27)
    x *= np.uint64(0x94D049BB133111EB)
    x ^= x >> np.uint64(31)
    return x


@njit_inline
def key_hash(key):
    """uint64 hash of an int64 key (its two's-complement bits, mixed)."""
    return mix64(np.uint64(key) + np.uint64(0x9E3779B97F4A7C15))


@njit_inline
def home_slot(key, mask):
    return np.int64(key_hash(key) & np.uint64(mask))


@njit_parallel
def home_slots(out, values, mask):
    """In place: out [n] int64 = home slot of values[i] (``hash & mask``)."""
    for i in prange(values.shape[0]):
        out[i] = home_slot(values[i], mask)


@njit_inline
def find_slot(slot_keys, slot_entry, key, mask):
    """Slot holding ``key``, or -1 - (the empty slot where it would go)."""
    s = home_slot(key, mask)
    while True:
        if slot_entry[s] < 0:
            return -1 - s
        if slot_keys[s] == key:
            return s
        s = (s + 1) & mask


@njit
def find_entries(out, slot_keys, slot_entry, keys, mask):
    """In place: out [n] int64 = entry of keys[i], or -1. Read-only probes."""
    for i in range(keys.shape[0]):
        s = find_slot(slot_keys, slot_entry, keys[i], mask)
        out[i] = slot_entry[s] if s >= 0 else -1


# ----------------------------------------------------------------- resolving
@njit_parallel
def _resolve_groups(pos_unique, unique_key, unique_entry, unique_count, distinct,
                    values, order, starts, slot_keys, slot_entry):
    """In place, for each home group g (positions order[starts[g]:starts[g+1]],
    in position order): its distinct keys in first-occurrence order, their
    occurrences, their entries (one read-only probe each); pos_unique."""
    mask = slot_keys.shape[0] - 1
    for g in prange(starts.shape[0] - 1):
        base = starts[g]
        d = 0
        for k in range(starts[g], starts[g + 1]):
            p = order[k]
            key = values[p]
            j = 0
            while j < d and unique_key[base + j] != key:
                j += 1
            if j == d:
                unique_key[base + d] = key
                unique_count[base + d] = 0
                s = find_slot(slot_keys, slot_entry, key, mask)
                unique_entry[base + d] = slot_entry[s] if s >= 0 else -1
                d += 1
            unique_count[base + j] += 1
            pos_unique[p] = base + j
        distinct[g] = d


@njit  # sequences parallel kernels (the pool is started in _jit)
def resolve_keys(values, slot_keys, slot_entry):
    """A batch's keys resolved once per unique key, read-only: a ``Resolved``
    tuple's fields (pos_unique, unique_key, unique_entry, unique_count,
    starts, distinct)."""
    n = values.shape[0]
    homes = np.empty(n, np.int64)
    home_slots(homes, values, slot_keys.shape[0] - 1)
    _, starts, order = group_rows(homes)
    pos_unique = np.empty(n, np.int64)
    unique_key = np.empty(n, np.int64)
    unique_entry = np.empty(n, np.int64)
    unique_count = np.empty(n, np.int64)
    distinct = np.empty(starts.shape[0] - 1, np.int64)
    _resolve_groups(pos_unique, unique_key, unique_entry, unique_count, distinct,
                    values, order, starts, slot_keys, slot_entry)
    return pos_unique, unique_key, unique_entry, unique_count, starts, distinct


@njit
def count_changes(unique_entry, unique_count, starts, distinct, entry_row, entry_count,
                  filter_freq):
    """(new keys, admissions) a training lookup of these unique keys would
    make, without changing anything: a key is admitted when its count
    (old + occurrences) reaches ``filter_freq`` and it has no row yet."""
    new_keys = 0
    admissions = 0
    for g in range(distinct.shape[0]):
        for u in range(starts[g], starts[g] + distinct[g]):
            e = unique_entry[u]
            if e < 0:
                new_keys += 1
                if unique_count[u] >= filter_freq:
                    admissions += 1
            elif entry_row[e] == PENDING and entry_count[e] + unique_count[u] >= filter_freq:
                admissions += 1
    return new_keys, admissions


@njit_inline
def _insert(km, key, e):
    """Put key -> entry e in the map (the key must be absent, a slot free)."""
    mask = km.slot_keys.shape[0] - 1
    s = -1 - find_slot(km.slot_keys, km.slot_entry, key, mask)
    km.slot_keys[s] = key
    km.slot_entry[s] = e


@njit_inline
def _new_entry(km):
    sizes = km.sizes
    if sizes[FREE_ENTRIES] > 0:
        sizes[FREE_ENTRIES] -= 1
        return km.free_entries[sizes[FREE_ENTRIES]]
    e = sizes[ENTRIES_USED]
    sizes[ENTRIES_USED] += 1
    return e


@njit_inline
def _new_row(km):
    sizes = km.sizes
    if sizes[FREE_ROWS] > 0:
        sizes[FREE_ROWS] -= 1
        return km.free_rows[sizes[FREE_ROWS]]
    r = sizes[ROWS_USED]
    sizes[ROWS_USED] += 1
    return r


@njit
def apply_training(new_rows, new_keys, unique_entry, km, unique_key, unique_count,
                   starts, distinct, step, filter_freq):
    """Count, insert and admit a training lookup's unique keys, in group order
    (one thread: the layout never depends on the thread count).

    In place: unique_entry (filled for new keys), the map ``km``; new_rows,
    new_keys [A] int64: the rows assigned by admissions and their keys, in
    order. The caller checked capacity and made room (``count_changes``).
    Returns the number of admissions."""
    a = 0
    for g in range(distinct.shape[0]):
        for u in range(starts[g], starts[g] + distinct[g]):
            e = unique_entry[u]
            key = unique_key[u]
            if e < 0:
                e = _new_entry(km)
                km.entry_key[e] = key
                km.entry_row[e] = PENDING
                km.entry_count[e] = 0
                _insert(km, key, e)
                km.sizes[LIVE] += 1
                unique_entry[u] = e
            km.entry_count[e] += unique_count[u]
            km.entry_last_seen[e] = step
            if km.entry_row[e] == PENDING and km.entry_count[e] >= filter_freq:
                r = _new_row(km)
                km.entry_row[e] = r
                km.sizes[ADMITTED] += 1
                new_rows[a] = r
                new_keys[a] = key
                a += 1
    return a


@njit_parallel
def position_rows(out, pos_unique, unique_entry, entry_row):
    """In place: out [n] int64 = row read by each position (``DEFAULT_ROW``
    for a key without a row)."""
    for i in prange(out.shape[0]):
        e = unique_entry[pos_unique[i]]
        r = entry_row[e] if e >= 0 else DEFAULT_ROW
        out[i] = r if r >= 0 else DEFAULT_ROW


# ------------------------------------------------------------ map upkeep
@njit
def rebuild_slots(slot_keys, slot_entry, entry_key, entry_row, entries_used):
    """In place: slot_keys, slot_entry [M] (M a power of two, over twice the
    live entries) = the map of every live entry, inserted in entry order."""
    slot_entry[:] = -1
    mask = slot_keys.shape[0] - 1
    for e in range(entries_used):
        if entry_row[e] == FREE:
            continue
        key = entry_key[e]
        s = -1 - find_slot(slot_keys, slot_entry, key, mask)
        slot_keys[s] = key
        slot_entry[s] = e


@njit_inline
def _delete_slot(slot_keys, slot_entry, i, mask):
    """Empty slot i and shift the rest of its probe run back (no tombstones)."""
    j = i
    while True:
        slot_entry[i] = -1
        while True:
            j = (j + 1) & mask
            if slot_entry[j] < 0:
                return
            k = home_slot(slot_keys[j], mask)
            # the key at j may move to i unless its home lies cyclically in (i, j]
            if i <= j:
                stays = i < k <= j
            else:
                stays = i < k or k <= j
            if not stays:
                break
        slot_keys[i] = slot_keys[j]
        slot_entry[i] = slot_entry[j]
        i = j


@njit
def remove_entries(km, entries):
    """Drop the keys of ``entries`` [k] int64 (live, distinct) from the map:
    their slots are emptied, entries and rows pushed on the free stacks in
    order. In place: ``km``."""
    mask = km.slot_keys.shape[0] - 1
    sizes = km.sizes
    for i in range(entries.shape[0]):
        e = entries[i]
        s = find_slot(km.slot_keys, km.slot_entry, km.entry_key[e], mask)
        _delete_slot(km.slot_keys, km.slot_entry, s, mask)
        r = km.entry_row[e]
        if r >= 0:
            km.free_rows[sizes[FREE_ROWS]] = r
            sizes[FREE_ROWS] += 1
            sizes[ADMITTED] -= 1
        km.entry_row[e] = FREE
        km.entry_count[e] = 0
        km.free_entries[sizes[FREE_ENTRIES]] = e
        sizes[FREE_ENTRIES] += 1
        sizes[LIVE] -= 1


@njit_parallel
def eviction_candidates(out, weight, entry_row, entry_last_seen, entries_used, step,
                        steps_to_live, l2_threshold):
    """In place: out [E] bool = entry e is evicted at global step ``step``:
    a live key (admitted or pending) with ``step - last_seen > steps_to_live``
    (steps_to_live < 0: never), or an admitted key whose row has
    ``0.5 * sum(w * w) < l2_threshold`` (summed in float64 in column order;
    l2_threshold <= 0: never)."""
    for e in prange(entries_used):
        r = entry_row[e]
        drop = False
        if r != FREE:
            if steps_to_live >= 0 and step - entry_last_seen[e] > steps_to_live:
                drop = True
            elif r >= 0 and l2_threshold > 0.0:
                total = 0.0
                for j in range(weight.shape[1]):
                    w = np.float64(weight[r, j])
                    total += w * w
                drop = 0.5 * total < l2_threshold
        out[e] = drop


# ------------------------------------------------------------- row values
@njit_inline
def _unit(seed_hash, key, j, t, half):
    """A uniform double in (0, 1] from (seed, key, component j, draw t, half)."""
    c = np.uint64(j) << np.uint64(32) | np.uint64(t) << np.uint64(1) | np.uint64(half)
    h = mix64(seed_hash ^ mix64(key_hash(key) + c * np.uint64(0xD1B54A32D192ED03)))
    return (np.float64(h >> np.uint64(11)) + 1.0) * (1.0 / 9007199254740992.0)


@njit_inline
def _normal(seed_hash, key, j, t):
    """A standard normal draw (Box-Muller, cosine branch) of a counter."""
    u1 = _unit(seed_hash, key, j, t, 0)
    u2 = _unit(seed_hash, key, j, t, 1)
    return np.sqrt(-2.0 * np.log(u1)) * np.cos(2.0 * np.pi * u2)


@njit_parallel
def init_rows(weight, rows, keys, seed, kind):
    """In place: weight [R, D] float32, row rows[i] = the initial row of
    keys[i], a function of (seed, key) only (counter-based: component j's
    draws are hashes of (seed, key, j, t)). ``kind``: INIT_TRUNCATED_NORMAL
    (normal redrawn beyond 2, times 1/sqrt(D)), INIT_NORMAL (N(0, 1)),
    INIT_UNIFORM (+-1/sqrt(D)), INIT_ZEROS."""
    dim = weight.shape[1]
    scale = 1.0 / np.sqrt(np.float64(dim))
    seed_hash = mix64(np.uint64(seed) ^ np.uint64(0x5851F42D4C957F2D))
    for i in prange(rows.shape[0]):
        r, key = rows[i], keys[i]
        for j in range(dim):
            if kind == INIT_ZEROS:
                x = 0.0
            elif kind == INIT_UNIFORM:
                x = (2.0 * _unit(seed_hash, key, j, 0, 0) - 1.0) * scale
            elif kind == INIT_NORMAL:
                x = _normal(seed_hash, key, j, 0)
            else:
                t = 0
                x = _normal(seed_hash, key, j, t)
                while abs(x) > 2.0:
                    t += 1
                    x = _normal(seed_hash, key, j, t)
                x *= scale
            weight[r, j] = np.float32(x)


@njit_parallel
def mix_rows(out, data, rows):
    """In place: out [E] uint64 = mix of out[e] and the bits of row rows[e]
    of data [R, K] uint32 (rows[e] < 0: nothing mixed). A fingerprint of each
    key's state, for incremental checkpoints."""
    for e in prange(rows.shape[0]):
        r = rows[e]
        if r < 0:
            continue
        h = out[e]
        for j in range(data.shape[1]):
            h = mix64(h ^ np.uint64(data[r, j]) + np.uint64(j + 1))
        out[e] = h
