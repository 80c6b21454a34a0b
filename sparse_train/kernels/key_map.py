"""The key -> row map of a dynamic table (SPEC section 6), in Numba.

Any int64 is a key (negative and huge included). The map is open
addressing with linear probing over ``M`` slots (a power of two), kept at
most half full. Everything known about a key is one 32-byte record of its
slot, so resolving a key costs one cache line:

    slots [M, 4] int64   columns KEY, ROW, COUNT, LAST_SEEN
        ROW >= 1   the key's row in the row store (admitted)
        ROW == PENDING  counted, not admitted
        ROW == EMPTY    the slot is empty (the other columns mean nothing)

Emptiness is a ROW value, never a key value, so no key is reserved.
Deletion shifts the rest of the probe run back (Knuth's algorithm R), so
there are no tombstones and a probe stops at the first empty slot; records
move between slots only then (``remove_keys``) and when the map is rebuilt.

Rows are handed out from a stack of freed rows (``free_rows`` [R] int64)
first, then fresh ones; ``sizes`` [4] int64 holds ROWS_USED, FREE_ROWS, LIVE,
ADMITTED. Row 0 of the row store is never given to a key: it holds the
table's default value, read by every key without a row (``DEFAULT_ROW``).

A batch's keys are resolved once per unique key: positions are grouped by
their home slot (``hash & (M - 1)``) with ``coalesce.group_rows``, the
project's stable radix grouping, so each group owns its keys' probe and the
probes sweep the map in address order (prefetched). New keys are inserted
and rows assigned by one thread, in group order, so the layout never
depends on the thread count.
"""
from typing import NamedTuple

import numpy as np

from ._jit import njit, njit_inline, njit_parallel, prange
from .coalesce import group_rows
from .prefetch import AHEAD, prefetch

#: Columns of ``slots``.
KEY, ROW, COUNT, LAST_SEEN = 0, 1, 2, 3
#: ``ROW`` of a key counted but not admitted.
PENDING = -1
#: ``ROW`` of an empty slot.
EMPTY = -2
#: The row read by keys without a row (holds the default value).
DEFAULT_ROW = 0

#: Indices into ``sizes``.
ROWS_USED = 0      # rows ever handed out, row 0 included
FREE_ROWS = 1      # rows on the free stack
LIVE = 2           # keys held (admitted + pending)
ADMITTED = 3       # admitted keys

#: Initializer codes of ``init_rows``.
INIT_TRUNCATED_NORMAL, INIT_NORMAL, INIT_UNIFORM, INIT_ZEROS = 0, 1, 2, 3


class KeyMap(NamedTuple):
    """The arrays of a key map (see the module docstring)."""
    slots: np.ndarray       # [M, 4] int64
    free_rows: np.ndarray   # [R] int64
    sizes: np.ndarray       # [4] int64


class Resolved(NamedTuple):
    """A batch's keys, resolved once per unique key (``resolve_keys``).

    Unique key j of home group g sits at ``u = starts[g] + j`` for
    ``j < distinct[g]`` (other u are unused)."""
    pos_unique: np.ndarray      # [n] int64: u of each position
    unique_key: np.ndarray      # [n] int64
    unique_slot: np.ndarray     # [n] int64: its slot, or -1: not in the map
    unique_count: np.ndarray    # [n] int64: occurrences in the batch
    starts: np.ndarray          # [G+1] int64
    distinct: np.ndarray        # [G] int64


def empty_map(num_slots, num_rows):
    """A ``KeyMap`` with no key: ``num_slots`` (a power of two) slots,
    room for ``num_rows`` rows (row 0 taken by the default value)."""
    slots = np.zeros((num_slots, 4), np.int64)
    slots[:, ROW] = EMPTY
    sizes = np.zeros(4, np.int64)
    sizes[ROWS_USED] = DEFAULT_ROW + 1
    return KeyMap(slots, np.zeros(num_rows, np.int64), sizes)


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
def find_slot(slots, key, mask):
    """Slot holding ``key``, or -1 - (the empty slot where it would go)."""
    s = home_slot(key, mask)
    while True:
        if slots[s, ROW] == EMPTY:
            return -1 - s
        if slots[s, KEY] == key:
            return s
        s = (s + 1) & mask


@njit_parallel
def lookup_rows(out, slots, values):
    """In place: out [n] int64 = row of values[i], ``DEFAULT_ROW`` for a key
    without one. Read-only (evaluation lookups), one probe per position."""
    mask = slots.shape[0] - 1
    for i in prange(values.shape[0]):
        s = find_slot(slots, values[i], mask)
        r = slots[s, ROW] if s >= 0 else DEFAULT_ROW
        out[i] = r if r >= 0 else DEFAULT_ROW


@njit
def find_slots(out, slots, keys):
    """In place: out [n] int64 = slot of keys[i], or -1. Read-only."""
    mask = slots.shape[0] - 1
    for i in range(keys.shape[0]):
        s = find_slot(slots, keys[i], mask)
        out[i] = s if s >= 0 else -1


# ----------------------------------------------------------------- resolving
@njit_parallel
def _resolve_groups(pos_unique, unique_key, unique_slot, unique_count, distinct,
                    values, order, starts, homes, slots):
    """In place, for each home group g (positions order[starts[g]:starts[g+1]],
    in position order, home slot homes[g]): its distinct keys in
    first-occurrence order, their occurrences, their slots (one read-only
    probe each, the slots prefetched ahead); pos_unique of each position."""
    mask = slots.shape[0] - 1
    num_groups = starts.shape[0] - 1
    for g in prange(num_groups):
        prefetch(slots, homes[min(g + AHEAD, num_groups - 1)] * 4)
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
                s = find_slot(slots, key, mask)
                unique_slot[base + d] = s if s >= 0 else -1
                d += 1
            unique_count[base + j] += 1
            pos_unique[p] = base + j
        distinct[g] = d


@njit  # sequences parallel kernels (the pool is started in _jit)
def resolve_keys(values, slots):
    """A batch's keys resolved once per unique key, read-only: a ``Resolved``."""
    n = values.shape[0]
    homes = np.empty(n, np.int64)
    home_slots(homes, values, slots.shape[0] - 1)
    group_homes, starts, order = group_rows(homes)
    pos_unique = np.empty(n, np.int64)
    unique_key = np.empty(n, np.int64)
    unique_slot = np.empty(n, np.int64)
    unique_count = np.empty(n, np.int64)
    distinct = np.empty(starts.shape[0] - 1, np.int64)
    _resolve_groups(pos_unique, unique_key, unique_slot, unique_count, distinct,
                    values, order, starts, group_homes, slots)
    return Resolved(pos_unique, unique_key, unique_slot, unique_count, starts, distinct)


@njit
def count_changes(res, slots, filter_freq):
    """(new keys, admissions) a training lookup of these unique keys would
    make, without changing anything: a key is admitted when its count
    (old + occurrences) reaches ``filter_freq`` and it has no row yet."""
    new_keys = 0
    admissions = 0
    for g in range(res.distinct.shape[0]):
        for u in range(res.starts[g], res.starts[g] + res.distinct[g]):
            s = res.unique_slot[u]
            if s < 0:
                new_keys += 1
                if res.unique_count[u] >= filter_freq:
                    admissions += 1
            elif (slots[s, ROW] == PENDING
                  and slots[s, COUNT] + res.unique_count[u] >= filter_freq):
                admissions += 1
    return new_keys, admissions


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
def apply_training(new_rows, new_keys, res, km, step, filter_freq):
    """Count, insert and admit a training lookup's unique keys, in group order
    (one thread: the layout never depends on the thread count).

    In place: res.unique_slot (filled for new keys), the map ``km``;
    new_rows, new_keys [A] int64: the rows assigned by admissions and their
    keys, in order. The caller checked capacity and made room
    (``count_changes``); inserting moves no record, so the other unique
    keys' slots stay valid."""
    slots = km.slots
    mask = slots.shape[0] - 1
    a = 0
    for g in range(res.distinct.shape[0]):
        for u in range(res.starts[g], res.starts[g] + res.distinct[g]):
            s = res.unique_slot[u]
            key = res.unique_key[u]
            if s < 0:
                s = -1 - find_slot(slots, key, mask)
                slots[s, KEY] = key
                slots[s, ROW] = PENDING
                slots[s, COUNT] = 0
                km.sizes[LIVE] += 1
                res.unique_slot[u] = s
            slots[s, COUNT] += res.unique_count[u]
            slots[s, LAST_SEEN] = step
            if slots[s, ROW] == PENDING and slots[s, COUNT] >= filter_freq:
                r = _new_row(km)
                slots[s, ROW] = r
                km.sizes[ADMITTED] += 1
                new_rows[a] = r
                new_keys[a] = key
                a += 1
    return a


@njit_parallel
def position_rows(out, pos_unique, unique_slot, slots):
    """In place: out [n] int64 = row read by each position (``DEFAULT_ROW``
    for a key without a row)."""
    for i in prange(out.shape[0]):
        s = unique_slot[pos_unique[i]]
        r = slots[s, ROW] if s >= 0 else DEFAULT_ROW
        out[i] = r if r >= 0 else DEFAULT_ROW


# ------------------------------------------------------------ map upkeep
@njit
def rebuild(slots, old):
    """In place: slots [M, 4] (empty; M a power of two, over twice the live
    keys) = every record of ``old`` [M', 4], inserted in ``old``'s slot order."""
    mask = slots.shape[0] - 1
    for t in range(old.shape[0]):
        if old[t, ROW] == EMPTY:
            continue
        s = -1 - find_slot(slots, old[t, KEY], mask)
        for c in range(4):
            slots[s, c] = old[t, c]


@njit_inline
def _delete_slot(slots, i, mask):
    """Empty slot i and shift the rest of its probe run back (no tombstones)."""
    j = i
    while True:
        slots[i, ROW] = EMPTY
        while True:
            j = (j + 1) & mask
            if slots[j, ROW] == EMPTY:
                return
            k = home_slot(slots[j, KEY], mask)
            # the record at j may move to i unless its home lies cyclically in (i, j]
            if i <= j:
                stays = i < k <= j
            else:
                stays = i < k or k <= j
            if not stays:
                break
        for c in range(4):
            slots[i, c] = slots[j, c]
        i = j


@njit
def remove_keys(km, keys):
    """Drop ``keys`` [k] int64 (held, distinct) from the map, in order: their
    rows are pushed on the free stack. In place: ``km``."""
    slots, sizes = km.slots, km.sizes
    mask = slots.shape[0] - 1
    for i in range(keys.shape[0]):
        s = find_slot(slots, keys[i], mask)
        r = slots[s, ROW]
        if r >= 0:
            km.free_rows[sizes[FREE_ROWS]] = r
            sizes[FREE_ROWS] += 1
            sizes[ADMITTED] -= 1
        _delete_slot(slots, s, mask)
        sizes[LIVE] -= 1


@njit_parallel
def eviction_candidates(out, weight, slots, step, steps_to_live, l2_threshold):
    """In place: out [M] bool = the key of slot s is evicted at global step
    ``step``: a held key (admitted or pending) with ``step - last_seen >
    steps_to_live`` (steps_to_live < 0: never), or an admitted key whose row
    has ``0.5 * sum(w * w) < l2_threshold`` (summed in float64 in column
    order; l2_threshold <= 0: never)."""
    for s in prange(slots.shape[0]):
        r = slots[s, ROW]
        drop = False
        if r != EMPTY:
            if steps_to_live >= 0 and step - slots[s, LAST_SEEN] > steps_to_live:
                drop = True
            elif r >= 0 and l2_threshold > 0.0:
                total = 0.0
                for j in range(weight.shape[1]):
                    w = np.float64(weight[r, j])
                    total += w * w
                drop = 0.5 * total < l2_threshold
        out[s] = drop


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
