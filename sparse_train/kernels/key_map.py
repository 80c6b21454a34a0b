"""The key -> row map of a dynamic table (SPEC section 6), in Numba.

Any int64 is a key (negative and huge included). The map is open
addressing with linear probing over ``M`` slots (a power of two), kept at
most a quarter full (``dynamic_embedding``), one 16-byte record a slot:

    slots [M, 2] int64   columns KEY, ROW
        ROW >= 1         the key's row in the row store (admitted)
        ROW <= PENDING   counted, not admitted: its count and last_seen are
                         ``pending[PENDING - ROW]``
        ROW == EMPTY     the slot is empty (KEY means nothing)
    stats [R, 2] int64   C_COUNT, C_LAST_SEEN of the admitted key of row r
    pending [P, 2] int64 C_COUNT, C_LAST_SEEN of pending keys

A training lookup of admitted keys only reads the map (``probe_rows``: one
prefetched probe a position) and counts by row, in row order
(``count_plan_rows``); only keys missing or pending take the grouped,
counting path (``resolve_keys`` ... ``admit_keys``). Records of 16 bytes
at load 1/4 take the bytes of 32-byte records at load 1/2 and make probes
cheaper: fewer probe runs past the home slot (mispredicted branches), and
4 records a cache line (measured on W1, 1M keys, 1 thread: probes of
Zipf / uniform ids 1.4 / 2.6 ms -> 1.2 / 2.2 ms from the smaller records
alone; the load factor measured with all records in cache: 0.76 ms at
1/2, 0.41 at 1/4).

Emptiness is a ROW value, never a key value, so no key is reserved.
Deletion shifts the rest of the probe run back (Knuth's algorithm R), so
there are no tombstones and a probe stops at the first empty slot; records
move between slots only then (``remove_keys``) and when the map is rebuilt.

Rows are handed out from a stack of freed rows (``free_rows`` [R] int64)
first, then fresh ones, and pending records likewise (``free_pending`` [P]);
``sizes`` [6] int64 holds ROWS_USED, FREE_ROWS, LIVE, ADMITTED,
PENDING_USED, FREE_PENDING. Row 0 of the row store is never given to a
key: it holds the table's default value, read by every key without a row
(``DEFAULT_ROW``).

The grouped path resolves its keys once per unique key: positions are
grouped by their home slot (``hash & (M - 1)``) with ``coalesce.group_rows``,
the project's stable radix grouping, so each group owns its keys' probes
and counts (no race, no atomics) and the probes sweep the map in address
order (prefetched). New keys are inserted and rows assigned by one thread,
in group order, so the layout never depends on the thread count.
"""
from typing import NamedTuple

import numpy as np

from ._jit import njit, njit_inline, njit_parallel, prange
from .coalesce import group_rows, use_threads
from numba import types
from numba.extending import intrinsic

from .prefetch import AHEAD, _prefetch_codegen, prefetch, prefetch_read

#: Columns of ``slots``.
KEY, ROW = 0, 1
#: Columns of ``stats`` and ``pending``.
C_COUNT, C_LAST_SEEN = 0, 1
#: ``ROW`` of an empty slot.
EMPTY = -1
#: ``ROW`` of the pending key of pending record 0 (record p: PENDING - p).
PENDING = -2
#: The row read by keys without a row (holds the default value).
DEFAULT_ROW = 0

#: Indices into ``sizes``.
ROWS_USED = 0      # rows ever handed out, row 0 included
FREE_ROWS = 1      # rows on the free stack
LIVE = 2           # keys held (admitted + pending)
ADMITTED = 3       # admitted keys
PENDING_USED = 4   # pending records ever handed out
FREE_PENDING = 5   # pending records on their free stack

#: Positions a probe prefetches ahead (for reading, into L2). Measured on W1
#: (1M keys at load 1/4, 1 thread, the static step run between probes, a
#: loaded host): Zipf / uniform ids 0.86 / 1.38 ms at 32 ahead, 0.64 / 1.23
#: at 64, 0.55 / 1.17 at 128, 0.55 / 1.16 at 256; prefetching for writing
#: instead was 5-15% slower on uniform ids.
PROBE_AHEAD = 128

#: Unique rows ``count_plan_rows`` prefetches ahead. Measured on W1 (1M
#: keys, 1 thread, a static step between, 25k / 101k unique rows of Zipf /
#: uniform ids): prefetching the counts for writing (``prefetch``) 0.29 /
#: 1.08 ms; for reading into L2 (``prefetch_read``) 0.26 / 0.84; for
#: reading into L1 (``_prefetch_counts``) 0.22 / 0.87 at 32 to 128 ahead.
COUNT_AHEAD = 64

#: Initializer codes of ``init_rows``.
INIT_TRUNCATED_NORMAL, INIT_NORMAL, INIT_UNIFORM, INIT_ZEROS = 0, 1, 2, 3


class KeyMap(NamedTuple):
    """The arrays of a key map (see the module docstring)."""
    slots: np.ndarray          # [M, 2] int64: KEY, ROW
    free_rows: np.ndarray      # [R] int64
    sizes: np.ndarray          # [6] int64
    stats: np.ndarray          # [R, 2] int64: C_COUNT, C_LAST_SEEN by row
    pending: np.ndarray        # [P, 2] int64: C_COUNT, C_LAST_SEEN of pending keys
    free_pending: np.ndarray   # [P] int64


#: Columns of ``Resolved.unique``: the key, its slot (-1: not in the map),
#: its occurrences in the batch, its ROW (< 1: no row yet).
U_KEY, U_SLOT, U_COUNT, U_ROW = 0, 1, 2, 3
#: Columns of ``Resolved.groups``: distinct keys, keys not in the map, keys
#: the lookup admits.
G_DISTINCT, G_NEW, G_ADMIT = 0, 1, 2


class Resolved(NamedTuple):
    """A batch's keys, resolved once per unique key (``resolve_keys``).

    Unique key j of home group g is row ``u = starts[g] + j`` of ``unique``
    for ``j < groups[g, G_DISTINCT]`` (other rows are unused)."""
    pos_unique: np.ndarray      # [n] int64: u of each position
    unique: np.ndarray          # [n, 4] int64: U_KEY, U_SLOT, U_COUNT, U_ROW
    starts: np.ndarray          # [G+1] int64
    groups: np.ndarray          # [G, 3] int64: G_DISTINCT, G_NEW, G_ADMIT
    new_keys: int               # sums of groups' G_NEW and G_ADMIT
    admissions: int


def empty_map(num_slots, num_rows):
    """A ``KeyMap`` with no key: ``num_slots`` (a power of two) slots,
    room for ``num_rows`` rows (row 0 taken by the default value) and no
    pending record (``reserve_pending``)."""
    slots = np.zeros((num_slots, 2), np.int64)
    slots[:, ROW] = EMPTY
    sizes = np.zeros(6, np.int64)
    sizes[ROWS_USED] = DEFAULT_ROW + 1
    return KeyMap(slots, np.zeros(num_rows, np.int64), sizes,
                  np.zeros((num_rows, 2), np.int64), np.zeros((0, 2), np.int64),
                  np.zeros(0, np.int64))


def reserve_pending(km, more):
    """``km``, with room for ``more`` pending records (arrays doubled as
    needed, records kept)."""
    sizes, size = km.sizes, km.pending.shape[0]
    room = size - int(sizes[PENDING_USED]) + int(sizes[FREE_PENDING])
    if more <= room:
        return km
    new_size = max(2 * size, int(sizes[PENDING_USED]) + more, 64)
    pending = np.zeros((new_size, 2), np.int64)
    pending[:size] = km.pending
    free = np.zeros(new_size, np.int64)
    free[:size] = km.free_pending
    return km._replace(pending=pending, free_pending=free)


@intrinsic
def _prefetch_counts(typingctx, array, index):
    """Hint the CPU to fetch the cache line of ``array.flat[index]`` for
    reading, into all cache levels: the count and last_seen a counting pass
    reads, then writes (asking for ownership ahead, as ``prefetch`` does,
    was slower: ``COUNT_AHEAD``)."""
    if not isinstance(array, types.Array) or not isinstance(index, types.Integer):
        return None
    return types.void(array, index), _prefetch_codegen(write=False, locality=3)


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


@njit_inline
def _probe(slots, homes, values, i, mask):
    """Row of values[i] from its home slot homes[i] (as ``find_slot``),
    ``DEFAULT_ROW`` for a key without one; prefetches the home slot
    ``PROBE_AHEAD`` positions on."""
    prefetch_read(slots, homes[min(i + PROBE_AHEAD, values.shape[0] - 1)] * 2)
    key = values[i]
    s = homes[i]
    while True:
        r = slots[s, ROW]
        if r == EMPTY or slots[s, KEY] == key:
            break
        s = (s + 1) & mask
    return r if r >= 1 else DEFAULT_ROW   # EMPTY (missing) or pending: none


@njit_parallel
def _probe_rows_parallel(out, slots, homes, values):
    """``probe_rows``'s probes over threads."""
    mask = slots.shape[0] - 1
    missing = 0
    for i in prange(values.shape[0]):
        r = _probe(slots, homes, values, i, mask)
        missing += r == DEFAULT_ROW
        out[i] = r
    return missing


@njit  # sequences a parallel kernel (the pool is started in _jit)
def probe_rows(out, slots, values):
    """In place: out [n] int64 = row of values[i], ``DEFAULT_ROW`` for a key
    without one (missing or pending). Read-only, one probe a position. The
    map is far bigger than the caches, so probes are cache misses: the home
    slots are hashed first (a vectorised loop), then each probe prefetches
    the home slot ``PROBE_AHEAD`` positions on (the probe loop is ~5 ns a
    position, a miss hundreds). One thread without a parallel region when
    grouping would (``coalesce.use_threads``: on W1's 106k Zipf ids, 1
    thread, 0.67 -> 0.64 ms). Returns the number of positions without a
    row."""
    mask = slots.shape[0] - 1
    n = values.shape[0]
    homes = np.empty(n, np.int64)
    for i in range(n):  # one thread, vector code: faster than a parallel loop
        homes[i] = home_slot(values[i], mask)
    if use_threads(n):
        return _probe_rows_parallel(out, slots, homes, values)
    missing = 0
    for i in range(n):
        r = _probe(slots, homes, values, i, mask)
        missing += r == DEFAULT_ROW
        out[i] = r
    return missing


@njit
def find_slots(out, slots, keys):
    """In place: out [n] int64 = slot of keys[i], or -1. Read-only."""
    mask = slots.shape[0] - 1
    for i in range(keys.shape[0]):
        s = find_slot(slots, keys[i], mask)
        out[i] = s if s >= 0 else -1


# ----------------------------------------------------------------- resolving
@njit_parallel
def _resolve_groups(pos_unique, unique, groups, values, order, starts, homes, km,
                    step, filter_freq, update):
    """In place, for each home group g (positions order[starts[g]:starts[g+1]],
    in position order, home slot homes[g]): ``unique`` rows of its distinct
    keys in first-occurrence order (one probe each, slots prefetched ahead),
    ``groups[g]``, pos_unique of each position. With ``update``, each
    pending key also takes its occurrences into its count and ``step`` as
    its last_seen (each key has one owner: no race; admitted keys count by
    row, by the caller)."""
    slots, pending = km.slots, km.pending
    mask = slots.shape[0] - 1
    num_groups = starts.shape[0] - 1
    for g in prange(num_groups):  # distinct keys and their occurrences
        base = starts[g]
        d = 0
        for k in range(starts[g], starts[g + 1]):
            p = order[k]
            key = values[p]
            j = 0
            while j < d and unique[base + j, U_KEY] != key:
                j += 1
            if j == d:
                unique[base + d, U_KEY] = key
                unique[base + d, U_COUNT] = 0
                d += 1
            unique[base + j, U_COUNT] += 1
            pos_unique[p] = base + j
        groups[g, G_DISTINCT] = d
    for g in prange(num_groups):  # one probe a distinct key, in address order
        prefetch(slots, homes[min(g + AHEAD, num_groups - 1)] * 2)
        new = 0
        admit = 0
        for u in range(starts[g], starts[g] + groups[g, G_DISTINCT]):
            occurrences = unique[u, U_COUNT]
            s = find_slot(slots, unique[u, U_KEY], mask)
            if s < 0:
                unique[u, U_SLOT] = -1
                unique[u, U_ROW] = EMPTY
                new += 1
                admit += occurrences >= filter_freq
                continue
            unique[u, U_SLOT] = s
            row = slots[s, ROW]
            unique[u, U_ROW] = row
            if row <= PENDING:
                count = pending[PENDING - row, C_COUNT] + occurrences
                if update:
                    pending[PENDING - row, C_COUNT] = count
                    pending[PENDING - row, C_LAST_SEEN] = step
                admit += count >= filter_freq
        groups[g, G_NEW] = new
        groups[g, G_ADMIT] = admit


@njit  # sequences parallel kernels (the pool is started in _jit)
def resolve_keys(values, km, step, filter_freq, update):
    """A batch's keys resolved once per unique key in map ``km``: a
    ``Resolved``. Read-only unless ``update`` (see ``_resolve_groups``);
    ``groups`` count the keys a training lookup would insert (G_NEW) and
    admit (G_ADMIT)."""
    n = values.shape[0]
    homes = np.empty(n, np.int64)
    home_slots(homes, values, km.slots.shape[0] - 1)
    group_homes, starts, order = group_rows(homes)
    pos_unique = np.empty(n, np.int64)
    unique = np.empty((n, 4), np.int64)
    groups = np.empty((starts.shape[0] - 1, 3), np.int64)
    _resolve_groups(pos_unique, unique, groups, values, order, starts, group_homes, km,
                    step, filter_freq, update)
    new_keys = 0
    admissions = 0
    for g in range(groups.shape[0]):
        new_keys += groups[g, G_NEW]
        admissions += groups[g, G_ADMIT]
    return Resolved(pos_unique, unique, starts, groups, new_keys, admissions)


@njit_parallel
def update_counts(pending, unique, starts, groups, step):
    """In place: pending [P, 2] int64, for each unique key pending in the
    map (U_ROW <= PENDING): count += its occurrences, last_seen = step (what
    ``resolve_keys`` does with ``update``, after the caller's checks)."""
    for g in prange(groups.shape[0]):
        for u in range(starts[g], starts[g] + groups[g, G_DISTINCT]):
            row = unique[u, U_ROW]
            if unique[u, U_SLOT] >= 0 and row <= PENDING:
                pending[PENDING - row, C_COUNT] += unique[u, U_COUNT]
                pending[PENDING - row, C_LAST_SEEN] = step


@njit_inline
def _pop(stack, sizes, used, free):
    """An index from ``stack`` (freed ones first, then the next fresh one)."""
    if sizes[free] > 0:
        sizes[free] -= 1
        return stack[sizes[free]]
    r = sizes[used]
    sizes[used] += 1
    return r


@njit
def admit_keys(new_rows, new_keys, unique, km, starts, groups, step, filter_freq):
    """Insert a training lookup's new keys (count = occurrences, last_seen =
    step) and admit the keys whose count reached ``filter_freq``, in group
    order (one thread: the layout never depends on the thread count). Keys
    already in the map were counted by ``resolve_keys`` / ``update_counts``.

    In place: ``unique`` (U_SLOT, U_ROW of the keys touched), the map ``km``
    (an admitted key's row gets ``stats`` = (its count before this lookup,
    step): the caller's counting pass adds the lookup's occurrences, as for
    every admitted key; its pending record is freed); new_rows, new_keys
    [A] int64: the rows assigned and their keys, in order. The caller
    checked capacity and made room (rows, and ``reserve_pending`` for the
    new keys that stay pending); inserting moves no record, so the other unique keys' slots
    stay valid. Returns the admissions."""
    slots, pending, sizes = km.slots, km.pending, km.sizes
    mask = slots.shape[0] - 1
    a = 0
    for g in range(groups.shape[0]):
        if groups[g, G_NEW] == 0 and groups[g, G_ADMIT] == 0:
            continue
        for u in range(starts[g], starts[g] + groups[g, G_DISTINCT]):
            s = unique[u, U_SLOT]
            occurrences = unique[u, U_COUNT]
            if s < 0:  # a new key: pending, or admitted at once
                s = -1 - find_slot(slots, unique[u, U_KEY], mask)
                slots[s, KEY] = unique[u, U_KEY]
                sizes[LIVE] += 1
                unique[u, U_SLOT] = s
                record = -1
                count = occurrences
            elif slots[s, ROW] <= PENDING:
                record = PENDING - slots[s, ROW]
                count = pending[record, C_COUNT]
            else:      # admitted before this lookup
                unique[u, U_ROW] = slots[s, ROW]
                continue
            if count < filter_freq:
                if record < 0:
                    record = _pop(km.free_pending, sizes, PENDING_USED, FREE_PENDING)
                    slots[s, ROW] = PENDING - record
                    pending[record, C_COUNT] = count
                    pending[record, C_LAST_SEEN] = step
                unique[u, U_ROW] = slots[s, ROW]
                continue
            if record >= 0:  # admitted: its pending record is freed
                km.free_pending[sizes[FREE_PENDING]] = record
                sizes[FREE_PENDING] += 1
            r = _pop(km.free_rows, sizes, ROWS_USED, FREE_ROWS)
            slots[s, ROW] = r
            km.stats[r, C_COUNT] = count - occurrences
            km.stats[r, C_LAST_SEEN] = step
            sizes[ADMITTED] += 1
            new_rows[a] = r
            new_keys[a] = unique[u, U_KEY]
            a += 1
            unique[u, U_ROW] = r
    return a


@njit_parallel
def _count_plan_rows_parallel(stats, rows, starts, step):
    """``count_plan_rows`` over threads (the loop of its one-thread path)."""
    n = rows.shape[0]
    for u in prange(n):
        _prefetch_counts(stats, rows[min(u + COUNT_AHEAD, n - 1)] * 2)
        r = rows[u]
        if r > DEFAULT_ROW:
            stats[r, C_COUNT] += starts[u + 1] - starts[u]
            stats[r, C_LAST_SEEN] = step


@njit  # sequences a parallel kernel (the pool is started in _jit)
def count_plan_rows(stats, rows, starts, step):
    """In place: stats [R, 2] int64, for each row rows[u] >= 1 (unique,
    increasing; positions starts[u]:starts[u+1] of a grouping covering every
    position): C_COUNT += its positions, C_LAST_SEEN = step. Rows with one
    owner each: no race; one thread as ``probe_rows``. (The loop is written
    out in both paths: an inlined helper holding it ran 10x slower on one
    thread, 0.6 ms for 25k rows.)"""
    n = rows.shape[0]
    if use_threads(n):
        _count_plan_rows_parallel(stats, rows, starts, step)
        return
    for u in range(n):
        _prefetch_counts(stats, rows[min(u + COUNT_AHEAD, n - 1)] * 2)
        r = rows[u]
        if r > DEFAULT_ROW:
            stats[r, C_COUNT] += starts[u + 1] - starts[u]
            stats[r, C_LAST_SEEN] = step


@njit
def count_rows(stats, rows, step):
    """In place: stats [R, 2] int64, for each position's row rows[i] >= 1:
    C_COUNT += 1, C_LAST_SEEN = step. One thread (rows repeat)."""
    for i in range(rows.shape[0]):
        r = rows[i]
        if r > DEFAULT_ROW:
            stats[r, C_COUNT] += 1
            stats[r, C_LAST_SEEN] = step


@njit_parallel
def position_rows(out, pos_unique, unique):
    """In place: out [n] int64 = row read by each position (``DEFAULT_ROW``
    for a key without a row)."""
    for i in prange(out.shape[0]):
        out[i] = max(unique[pos_unique[i], U_ROW], DEFAULT_ROW)


# ------------------------------------------------------------ map upkeep
@njit
def rebuild(slots, old):
    """In place: slots [M, 2] (empty; M a power of two, over the live keys)
    = every record of ``old`` [M', 2], inserted in ``old``'s slot order."""
    mask = slots.shape[0] - 1
    for t in range(old.shape[0]):
        if old[t, ROW] == EMPTY:
            continue
        s = -1 - find_slot(slots, old[t, KEY], mask)
        slots[s, KEY] = old[t, KEY]
        slots[s, ROW] = old[t, ROW]


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
        slots[i, KEY] = slots[j, KEY]
        slots[i, ROW] = slots[j, ROW]
        i = j


@njit
def remove_keys(km, keys):
    """Drop ``keys`` [k] int64 (held, distinct) from the map, in order: their
    rows (pending records) are pushed on the free stack. In place: ``km``."""
    slots, sizes = km.slots, km.sizes
    mask = slots.shape[0] - 1
    for i in range(keys.shape[0]):
        s = find_slot(slots, keys[i], mask)
        r = slots[s, ROW]
        if r >= 0:
            km.free_rows[sizes[FREE_ROWS]] = r
            sizes[FREE_ROWS] += 1
            sizes[ADMITTED] -= 1
        else:
            km.free_pending[sizes[FREE_PENDING]] = PENDING - r
            sizes[FREE_PENDING] += 1
        _delete_slot(slots, s, mask)
        sizes[LIVE] -= 1


@njit_parallel
def eviction_candidates(out, weight, km, step, steps_to_live, l2_threshold):
    """In place: out [M] bool = the key of slot s is evicted at global step
    ``step``: a held key (admitted or pending) with ``step - last_seen >
    steps_to_live`` (steps_to_live < 0: never), or an admitted key whose row
    has ``0.5 * sum(w * w) < l2_threshold`` (summed in float64 in column
    order; l2_threshold <= 0: never)."""
    slots = km.slots
    for s in prange(slots.shape[0]):
        r = slots[s, ROW]
        drop = False
        if r != EMPTY:
            last_seen = (km.stats[r, C_LAST_SEEN] if r >= 0
                         else km.pending[PENDING - r, C_LAST_SEEN])
            if steps_to_live >= 0 and step - last_seen > steps_to_live:
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
