"""``DynamicEmbeddingTable``: any int64 key -> a row, with admission and
eviction (SPEC section 6; DeepRec ``EmbeddingVariable`` with
``CounterFilter``, ``GlobalStepEvict`` and ``L2WeightEvict``).

Layout. The keys live in a Numba open-addressing map (``kernels.key_map``);
an admitted key owns a row of ``table.weight.value``, the row store
``[rows_allocated, D]`` float32, which doubles when full (existing rows
kept; freed rows reused first). Row 0 holds ``default_value`` and belongs
to no key: a key without a row reads it, so a lookup is an ordinary
``functional.embedding_bag`` over rows, and its gradient is that of
``functional.embedding_bag_grad`` with row 0's contributions dropped. The
optimizers' slots are row stores of the same rows: the base ``Optimizer``
creates a ``DynamicVariable``'s slots through ``attach_slot``, the table grows
them with its rows and resets a row's slots to their initial value when the
row is given to a new key.

Speed. A training lookup finds admitted keys by a read-only, prefetched
probe a position; their counts and last_seen steps are kept by row
(``KeyMap.stats``) and counted from the gradient's grouping of the rows,
which the lookup computes once and ``lookup_grad`` reuses. Only keys
missing or pending take the grouped path that counts, inserts and admits.

Memory is bounded by: admitted keys <= ``capacity`` (if given), each
``D * 4`` bytes of values + its slots + 16 bytes of count and last_seen +
its 16-byte map record (64 bytes at the map's load of at most 1/4); and
pending keys (counted, not admitted: a map record and a 16-byte count
record each) <= ``max_pending`` (default ``4 * capacity``), which
``steps_to_live`` also evicts like admitted keys (a pending key unseen for
more than ``steps_to_live`` steps is forgotten, count included). Without a
capacity, max_pending or steps_to_live, a stream of ever-new keys grows the
pending set without bound.
"""
import zlib
from typing import NamedTuple

import numpy as np

from .. import functional as F
from .._aligned import aligned_empty, aligned_full
from ..kernels import key_map as K
from ..kernels import lookup as _lookup
from ..sparse import GradPlan, RowSparseGrad
from ..variable import Variable
from .embedding import INITIALIZERS, _is_integer

__all__ = ["DynamicEmbeddingTable", "DynamicVariable"]

_INIT_CODES = {"truncated_normal": K.INIT_TRUNCATED_NORMAL, "normal": K.INIT_NORMAL,
               "uniform": K.INIT_UNIFORM, "zeros": K.INIT_ZEROS}
assert set(_INIT_CODES) == set(INITIALIZERS)

_MIN_SLOTS, _MIN_ROWS = 64, 32
#: The map keeps at least this many slots a held key (a power of two): at
#: load <= 1/4 most probes end at the home slot (``kernels.key_map``).
_SLOTS_PER_KEY = 4
_BASE_FIELDS = ("keys", "values", "counts", "last_seen",
                "pending_keys", "pending_counts", "pending_last_seen")
_TOMBSTONES = ("tombstones", "pending_tombstones")


class DynamicVariable(Variable):
    """The weight of a ``DynamicEmbeddingTable``: a ``Variable`` whose
    ``value`` (the row store, ``[rows_allocated, D]`` float32) is replaced
    by a bigger array when the table grows, so never keep ``.value``.
    ``table`` is the owning table. Row 0 holds the default value."""

    #: Its rows only grow: a gradient made before a lookup grew the store
    #: still fits (``Optimizer`` compares ``dense_shape[0] <= rows``).
    grows = True

    def __init__(self, value, name, table):
        super().__init__(value, name)
        self.table = table

    def attach_slot(self, optimizer, slot, slot_variable, kind, initial):
        """Called by ``Optimizer`` when it creates a slot of this variable."""
        self.table.attach_slot(optimizer, slot, slot_variable, kind, initial)


class _Slot:
    """One optimizer slot of the table: ``variable`` (attached; its
    ``.value`` is the row store of the slot) or ``held`` values waiting for
    the optimizer (rows where ``valid``), from ``load_state_dict``."""

    def __init__(self, optimizer_name, slot, kind, dtype, initial, variable=None,
                 held=None, valid=None):
        self.optimizer_name, self.slot, self.kind = optimizer_name, slot, kind
        self.dtype, self.initial = np.dtype(dtype), initial
        self.variable, self.held, self.valid = variable, held, valid

    @property
    def field(self):
        return f"slots/{self.optimizer_name}/{self.slot}"

    @property
    def array(self):
        return self.variable.value if self.variable is not None else self.held


class _Recent(NamedTuple):
    """A training lookup's keys and the rows they read, for ``lookup_grad``;
    for a sum without weights also its offsets and ``plan``, the gradient's
    grouping of ``rows`` (the ``GradPlan`` without its source), which the
    lookup computed to count the keys (else None)."""
    generation: int
    values: np.ndarray
    rows: np.ndarray
    offsets: np.ndarray
    plan: object            # (rows, starts, src_index, src_coef) or None


class _Mark(NamedTuple):
    """What ``mark_saved`` remembers to compute the next delta: every held
    key (sorted), its kind (1 admitted, 0 pending) and fingerprint."""
    keys: np.ndarray
    kinds: np.ndarray
    fingerprints: np.ndarray
    admitted: np.ndarray
    pending: np.ndarray
    slot_fields: frozenset


def _check_name(name):
    if not isinstance(name, str) or not name:
        raise ValueError(f"DynamicEmbeddingTable: name must be a non-empty string, got {name!r}")
    return name


def _optional(name, what, value, low, integer):
    if value is None:
        return None
    ok = _is_integer(value) if integer else (
        isinstance(value, (int, float, np.number)) and not isinstance(value, (bool, np.bool_))
        and bool(np.isfinite(value)))
    if not ok or value < low:
        kind = "an integer" if integer else "a number"
        raise ValueError(f"DynamicEmbeddingTable {name!r}: {what} must be {kind} >= {low} "
                         f"or None, got {value!r}")
    return int(value) if integer else float(value)


def _pow2_at_least(n):
    return 1 << max(int(n) - 1, 1).bit_length()


class DynamicEmbeddingTable:
    """An embedding table over unbounded int64 keys (DeepRec EmbeddingVariable).

    A training lookup (``training=True``) counts each occurrence of a key;
    the lookup in which a key's count reaches ``filter_freq`` admits it: its
    row is created as a function of ``(seed, key)`` only and read (and sent
    the gradient) in that same lookup. Until then the key reads
    ``default_value`` in every component, counts in mean / sqrtn divisors
    like any id, and its gradient is dropped. Each training lookup stamps its
    keys with ``int(global_step)``. ``evict(global_step)`` drops keys with
    ``global_step - last_seen > steps_to_live`` (admitted and pending) and
    admitted keys with ``0.5 * sum(w * w) < l2_weight_threshold``, with their
    rows, slots and counts; a returning key starts again from admission.
    Evaluation lookups (``training=False``) change nothing.

    Args:
        embedding_dim: D (> 0).
        name: the weight's name (key of its slots and checkpoint entry).
        initializer: as ``EmbeddingTable`` (``"truncated_normal"``, stddev
            1/sqrt(D), ``"normal"``, ``"uniform"``, ``"zeros"``), drawn from a
            counter-based hash of (seed, key, component).
        init_scale: multiplies the initial rows (> 0, default 1): a key
            admitted gets ``float32(init_scale) * init(seed, key)``, the
            product rounded to float32, where ``init(seed, key)`` is the
            ``init_scale=1`` row; models pass their ``embedding_init_scale``
            (0.1), as for static tables.
        seed: default CRC-32 of ``name``.
        filter_freq: occurrences before admission (0 or 1: at once).
        steps_to_live: optional int >= 0 (GlobalStepEvict).
        l2_weight_threshold: optional number > 0 (L2WeightEvict).
        default_value: what a key without a row reads (float).
        capacity: optional cap on admitted keys: a lookup that would admit
            one more raises ValueError and changes nothing.
        max_pending: optional cap on keys counted but not admitted (default
            ``4 * capacity`` with a capacity, else none): a lookup that
            would hold one more raises ValueError and changes nothing, so a
            stream of ever new keys cannot exhaust memory.

    Memory: see the module docstring (capacity bounds admitted keys,
    max_pending and steps_to_live pending ones).

    >>> t = DynamicEmbeddingTable(4, "user", filter_freq=2)
    >>> out = t.lookup([7, -3, 7], [0, 2, 3], global_step=0)
    >>> len(t), t.keys().tolist()          # 7 seen twice: admitted
    (1, [7])
    >>> bool((out[0] == t.export()["values"][0]).all())   # bag 0: row of 7 + default 0
    True
    """

    def __init__(self, embedding_dim, name, initializer="truncated_normal", seed=None,
                 filter_freq=0, steps_to_live=None, l2_weight_threshold=None,
                 default_value=0.0, capacity=None, max_pending=None, init_scale=1.0):
        name = _check_name(name)
        if not _is_integer(embedding_dim) or embedding_dim <= 0:
            raise ValueError(f"DynamicEmbeddingTable {name!r}: embedding_dim must be a positive "
                             f"integer, got {embedding_dim!r}")
        if initializer not in _INIT_CODES:
            raise ValueError(f"DynamicEmbeddingTable {name!r}: initializer must be one of "
                             f"{sorted(_INIT_CODES)}, got {initializer!r}")
        if seed is not None and not _is_integer(seed):
            raise ValueError(f"DynamicEmbeddingTable {name!r}: seed must be an integer, got {seed!r}")
        self.filter_freq = _optional(name, "filter_freq", filter_freq, 0, True)
        if self.filter_freq is None:
            raise ValueError(f"DynamicEmbeddingTable {name!r}: filter_freq must be an integer >= 0")
        self.steps_to_live = _optional(name, "steps_to_live", steps_to_live, 0, True)
        self.l2_weight_threshold = _optional(name, "l2_weight_threshold",
                                             l2_weight_threshold, 0, False)
        default = _optional(name, "default_value", default_value, -np.inf, False)
        if default is None or not np.isfinite(np.float32(default)):
            raise ValueError(f"DynamicEmbeddingTable {name!r}: default_value must be a finite "
                             f"number, got {default_value!r}")
        self.default_value = default
        self.capacity = _optional(name, "capacity", capacity, 0, True)
        self.max_pending = _optional(name, "max_pending", max_pending, 0, True)
        if self.max_pending is None and self.capacity is not None:
            self.max_pending = 4 * self.capacity
        self.embedding_dim = int(embedding_dim)
        self.initializer = initializer
        if isinstance(init_scale, (bool, np.bool_)) or not isinstance(
                init_scale, (int, float, np.number)) or not (np.isfinite(init_scale)
                                                             and init_scale > 0):
            raise ValueError(f"DynamicEmbeddingTable {name!r}: init_scale must be a finite "
                             f"number > 0, got {init_scale!r}")
        self.init_scale = float(init_scale)
        self.seed = (zlib.crc32(name.encode()) if seed is None else int(seed)) & (2**63 - 1)
        self._slots = {}        # (optimizer name, slot) -> _Slot
        self._recent = {}       # feature name -> _Recent
        self._generation = 0    # bumped whenever keys may change rows
        self._mark = None
        self.weight = DynamicVariable(self._new_rows_array(_MIN_ROWS), name, self)
        self._km = K.empty_map(_MIN_SLOTS, _MIN_ROWS)

    # ------------------------------------------------------------ basics
    @property
    def name(self):
        return self.weight.name

    def __len__(self):
        return int(self._km.sizes[K.ADMITTED])

    @property
    def num_pending(self):
        """Keys counted but not admitted."""
        return int(self._km.sizes[K.LIVE] - self._km.sizes[K.ADMITTED])

    @property
    def rows_allocated(self):
        return int(self.weight.value.shape[0])

    def keys(self):
        """The admitted keys, sorted int64."""
        return self._km.slots[self._admitted_slots(), K.KEY]

    def __repr__(self):
        return (f"DynamicEmbeddingTable(name={self.name!r}, embedding_dim={self.embedding_dim}, "
                f"admitted={len(self)}, pending={self.num_pending}, "
                f"filter_freq={self.filter_freq}, steps_to_live={self.steps_to_live}, "
                f"capacity={self.capacity}, max_pending={self.max_pending})")

    def initial_rows(self, keys):
        """[k, D] float32: the rows ``keys`` get when admitted (a function of
        (seed, key) only); nothing changes."""
        keys = F.as_ids(keys, "keys", self.name)
        out = np.empty((keys.shape[0], self.embedding_dim), np.float32)
        K.init_rows(out, np.arange(keys.shape[0], dtype=np.int64), keys, np.int64(self.seed),
                    _INIT_CODES[self.initializer])
        if self.init_scale != 1.0:
            out *= np.float32(self.init_scale)
        return out

    def memory_bytes(self):
        """Bytes held: {"values", "slots", "map", "stats", "pending",
        "free_rows"} (allocated arrays, including free room; ``stats``: the
        counts and last_seen steps of admitted keys, by row; ``pending``:
        those of pending keys)."""
        km = self._km
        slots = sum(s.array.nbytes for s in self._slots.values())
        return {"values": int(self.weight.value.nbytes), "slots": int(slots),
                "map": int(km.slots.nbytes), "stats": int(km.stats.nbytes),
                "pending": int(km.pending.nbytes + km.free_pending.nbytes),
                "free_rows": int(km.free_rows.nbytes)}

    # ----------------------------------------------------------- lookups
    def resolve(self, values, training=True, global_step=None, name=None):
        """The rows [n] int64 that ``values`` (int64 keys) read: with
        ``training``, count, admit and stamp them first (as ``lookup``).
        Row 0 (the default value) for keys without a row."""
        where = name or self.name
        values = F.as_ids(values, "values", where)
        if not training:
            return self._rows_readonly(values)
        step = self._check_step(global_step)
        rows = self._rows_training(values, step, where)
        K.count_rows(self._km.stats, rows, np.int64(step))
        return rows

    def lookup(self, values, offsets, weights=None, combiner="sum", training=True,
               global_step=None, name=None):
        """Pooled lookup of ragged keys: [B, D] float32 (SPEC section 3 over
        the rows the keys read; see the class docstring for counting).

        Args:
            values: [n] int64 keys; offsets: [B+1]; weights: optional [n];
                combiner: ``"sum"``, ``"mean"`` or ``"sqrtn"``.
            training: count, admit and stamp the keys (False: read only).
            global_step: the step stamped as last_seen (int or GlobalStep;
                None: 0).
            name: feature name for error messages and for ``lookup_grad``.
        """
        where = name or self.name
        values = F.as_ids(values, "values", where)
        rows, missing = self._probe(values)   # read-only: the bags are checked first
        bags = F.check_bags(rows, offsets, weights, self.rows_allocated, combiner, None, where)
        if training:
            step = np.int64(self._check_step(global_step))
            if missing:
                self._admit_missing(rows, values, step, where)
            plan = self._count(rows, bags, step)
            self._recent[where] = _Recent(self._generation, values.copy(), rows,
                                          None if plan is None else bags.offsets.copy(), plan)
        return F.pool_checked(self.weight.value, bags._replace(values=rows))

    def _count(self, rows, bags, step):
        """Count the positions of admitted keys (``rows`` >= 1) into their
        rows' stats and stamp them with ``step``. A sum lookup without
        weights counts from its gradient's grouping (the plan
        ``functional.grad_checked`` makes: every position, rows increasing),
        which is returned for ``lookup_grad``; other lookups count by
        position (None)."""
        if (bags.combiner == _lookup.SUM and not bags.has_weights and rows.shape[0]):
            plan = _lookup.unit_grad_plan(rows, bags.offsets)
            if plan[0].shape[0]:
                K.count_plan_rows(self._km.stats, plan[0], plan[1], step)
                return plan
        K.count_rows(self._km.stats, rows, step)
        return None

    def lookup_grad(self, d_out, values, offsets, weights=None, combiner="sum", name=None):
        """Gradient of ``lookup`` with respect to ``table.weight``: a
        ``RowSparseGrad`` over the row store; keys without a row send
        nothing. Never counts. Keys read the rows the last training lookup of
        feature ``name`` gave them (same keys), else their current rows."""
        where = name or self.name
        values = F.as_ids(values, "values", where)
        recent = self._recent.get(where)
        if recent is not None and recent.generation == self._generation \
                and np.array_equal(recent.values, values):
            rows = recent.rows
            if recent.plan is not None and _same_sum_bags(recent.offsets, offsets, weights,
                                                          combiner):
                grad = _grad_of_plan(recent.plan, d_out, recent.offsets.shape[0] - 1,
                                     (self.rows_allocated, self.embedding_dim), where)
                return F.drop_grad_rows_below(grad, K.DEFAULT_ROW + 1)
        else:
            rows = self._rows_readonly(values)
        grad = F.embedding_bag_grad(d_out, rows, offsets, self.rows_allocated, weights,
                                    combiner, None, where)
        return F.drop_grad_rows_below(grad, K.DEFAULT_ROW + 1)

    def _check_step(self, global_step):
        if global_step is None:
            return 0
        try:
            step = int(global_step)
        except (TypeError, ValueError):
            raise ValueError(f"table {self.name!r}: global_step must be an integer or "
                             f"GlobalStep, got {global_step!r}") from None
        if step != global_step and not hasattr(global_step, "increment"):
            raise ValueError(f"table {self.name!r}: global_step must be an integer, "
                             f"got {global_step!r}")
        return step

    def _probe(self, values):
        """(rows [n] int64 of ``values``, ``DEFAULT_ROW`` for keys without
        one; how many those are): a read-only probe a position."""
        rows = np.empty(values.shape[0], np.int64)
        return rows, K.probe_rows(rows, self._km.slots, values)

    def _rows_readonly(self, values):
        return self._probe(values)[0]

    def _rows_training(self, values, step, where):
        """The rows of ``values`` after counting, inserting and admitting
        the keys without a row (the caller counts the admitted ones, by
        row: ``_count``)."""
        rows, missing = self._probe(values)
        if missing:
            self._admit_missing(rows, values, step, where)
        return rows

    def _admit_missing(self, rows, values, step, where):
        """In place: ``rows`` of the keys without a row (``DEFAULT_ROW``),
        after they are counted, inserted and admitted by the grouped path,
        which checks capacity and max_pending before anything changes."""
        at = np.flatnonzero(rows == K.DEFAULT_ROW)
        rows[at] = self._admit(values[at], np.int64(step), where)

    def _admit(self, values, step, where):
        """Count, insert, admit and stamp ``values`` (keys without a row);
        their rows (``DEFAULT_ROW`` while pending)."""
        filter_freq = np.int64(self.filter_freq)
        res = K.resolve_keys(values, self._km, step, filter_freq, False)
        new_keys, admissions = int(res.new_keys), int(res.admissions)
        if self.capacity is not None and len(self) + admissions > self.capacity:
            raise ValueError(
                f"table {self.name!r} (feature {where!r}): admitting {admissions} more "
                f"keys would exceed its capacity of {self.capacity} ({len(self)} "
                f"admitted); nothing was changed")
        pending = self.num_pending + new_keys - admissions
        if self.max_pending is not None and pending > self.max_pending:
            raise ValueError(
                f"table {self.name!r} (feature {where!r}): {pending} keys would be pending "
                f"(counted, not admitted), over its max_pending of {self.max_pending}; "
                f"nothing was changed")
        K.update_counts(self._km.pending, res.unique, res.starts, res.groups, step)
        if new_keys or admissions:
            if self._grow_map(new_keys):   # records moved: find them again (read only)
                res = K.resolve_keys(values, self._km, step, filter_freq, False)
            self._make_rows(admissions)
            # new keys that stay pending: at most new_keys and the pending after
            self._km = K.reserve_pending(self._km, min(new_keys, pending))
            new_rows = np.empty(admissions, np.int64)
            admitted_keys = np.empty(admissions, np.int64)
            done = K.admit_keys(new_rows, admitted_keys, res.unique, self._km, res.starts,
                                res.groups, step, filter_freq)
            assert done == admissions, (done, admissions)
            if admissions:
                self._fresh_rows(new_rows, admitted_keys)
        rows = np.empty(values.shape[0], np.int64)
        K.position_rows(rows, res.pos_unique, res.unique)
        return rows

    def _fresh_rows(self, rows, keys):
        """Rows just given to ``keys``: initial values, slots reset."""
        K.init_rows(self.weight.value, rows, keys, np.int64(self.seed),
                    _INIT_CODES[self.initializer])
        if self.init_scale != 1.0:
            self.weight.value[rows] *= np.float32(self.init_scale)
        for slot in self._slots.values():
            if slot.variable is not None:
                slot.variable.value[rows] = slot.initial
            else:
                slot.valid[rows] = False

    # ------------------------------------------------------------ growth
    def _new_rows_array(self, rows):
        value = aligned_empty((rows, self.embedding_dim), np.float32,
                              f"dynamic embedding table {getattr(self, 'name', '')!r}")
        value[...] = 0.0
        value[K.DEFAULT_ROW] = np.float32(self.default_value)
        return value

    def _grow_map(self, new_keys):
        """Double the map until ``new_keys`` more keys keep it at most half
        full; True if it was rebuilt (records moved)."""
        km = self._km
        live = int(km.sizes[K.LIVE]) + new_keys
        if _SLOTS_PER_KEY * live <= km.slots.shape[0]:
            return False
        grown = K.empty_map(_pow2_at_least(_SLOTS_PER_KEY * live), 1).slots
        K.rebuild(grown, km.slots)
        self._km = km._replace(slots=grown)
        return True

    def _make_rows(self, admissions):
        """Grow the row store (doubling) so ``admissions`` rows can be handed out."""
        km = self._km
        sizes = km.sizes
        rows_free = self.rows_allocated - int(sizes[K.ROWS_USED]) + int(sizes[K.FREE_ROWS])
        if admissions > rows_free:
            self._grow_rows(_pow2_at_least(int(sizes[K.ROWS_USED]) + admissions))
            self._km = km._replace(free_rows=_grown(km.free_rows, self.rows_allocated, 0),
                                   stats=_grown(km.stats, self.rows_allocated, 0))

    def _grow_rows(self, rows):
        """Row store (and every slot) to ``rows`` rows, existing rows kept."""
        old = self.weight.value
        value = self._new_rows_array(rows)
        value[:old.shape[0]] = old
        self.weight.value = value
        for slot in self._slots.values():
            if slot.variable is not None:
                slot.variable.value = self._slot_array(slot, rows, slot.variable.value)
            else:
                slot.held = _grown(slot.held, rows, 0)
                slot.valid = _grown(slot.valid, rows, False)

    def _slot_array(self, slot, rows, old=None):
        shape = (rows, self.embedding_dim) if slot.kind == "like" else (rows,)
        array = aligned_full(shape, slot.initial, slot.dtype,
                             f"slot {slot.field!r} of table {self.name!r}")
        if old is not None:
            array[:old.shape[0]] = old
        return array

    # ------------------------------------------------------------- slots
    def attach_slot(self, optimizer, slot, slot_variable, kind, initial):
        """Register ``optimizer``'s slot ``slot`` of ``table.weight`` (called by
        ``Optimizer`` when it creates the slot): from now on it grows with the
        rows and is reset to ``initial`` for rows given to new keys. Values
        held from ``load_state_dict`` for this optimizer and slot are put in."""
        if kind not in ("like", "rows"):
            raise ValueError(f"table {self.name!r}: slot {slot!r} of kind {kind!r} cannot grow "
                             f"with a dynamic table (only 'like' and 'rows')")
        key = (optimizer.name, slot)
        dtype = slot_variable.value.dtype
        new = _Slot(optimizer.name, slot, kind, dtype, initial, variable=slot_variable)
        expected = (self.rows_allocated,) + ((self.embedding_dim,) if kind == "like" else ())
        if slot_variable.value.shape != expected:
            slot_variable.value = self._slot_array(new, self.rows_allocated)
        held = self._slots.get(key)
        if held is not None and held.variable is None:
            array = slot_variable.value
            if held.held.shape[1:] != array.shape[1:]:
                raise ValueError(
                    f"table {self.name!r}: restored slot {held.field!r} has rows of shape "
                    f"{held.held.shape[1:]}, but {optimizer.name} makes {array.shape[1:]}")
            array[held.valid] = held.held[held.valid]
        self._slots[key] = new

    def _slot_fields(self):
        return {slot.field: slot for slot in self._slots.values()}

    # ---------------------------------------------------------- eviction
    def evict(self, global_step):
        """Drop keys by ``steps_to_live`` (admitted and pending: ``global_step
        - last_seen > steps_to_live``) and ``l2_weight_threshold`` (admitted:
        ``0.5 * sum(w * w) < threshold``); returns the number of keys dropped
        (admitted and pending). Their rows are reused by later admissions."""
        step = self._check_step(global_step)
        if self.steps_to_live is None and self.l2_weight_threshold is None:
            return 0
        km = self._km
        drop = np.empty(km.slots.shape[0], np.bool_)
        K.eviction_candidates(drop, self.weight.value, km, np.int64(step),
                              np.int64(-1 if self.steps_to_live is None else self.steps_to_live),
                              np.float64(self.l2_weight_threshold or 0.0))
        keys = km.slots[np.flatnonzero(drop), K.KEY]
        if keys.size:
            K.remove_keys(km, keys)
            self._generation += 1
        return int(keys.size)

    # ----------------------------------------------------------- export
    def _held_slots(self, kind):
        """Slots of the admitted (``kind`` 1) or pending (0) keys, by key."""
        slots = self._km.slots
        rows = slots[:, K.ROW]
        found = np.flatnonzero(rows >= 0 if kind else rows <= K.PENDING)
        return found[np.argsort(slots[found, K.KEY], kind="stable")]

    def _admitted_slots(self):
        return self._held_slots(1)

    def _rows_state(self, admitted, pending):
        """State fields (copies) of the keys in map slots ``admitted`` and
        ``pending``."""
        slots, stats = self._km.slots, self._km.stats
        rows = slots[admitted, K.ROW]
        records = self._km.pending[K.PENDING - slots[pending, K.ROW]]
        state = {"keys": slots[admitted, K.KEY], "values": self.weight.value[rows],
                 "counts": stats[rows, K.C_COUNT], "last_seen": stats[rows, K.C_LAST_SEEN],
                 "pending_keys": slots[pending, K.KEY],
                 "pending_counts": records[:, K.C_COUNT],
                 "pending_last_seen": records[:, K.C_LAST_SEEN]}
        for field, slot in sorted(self._slot_fields().items()):
            state[field] = slot.array[rows]
        return state

    def export(self):
        """One consistent snapshot of the admitted keys (copies): ``keys``
        (sorted), ``values``, ``counts``, ``last_seen`` and each slot by its
        name (``"<optimizer>/<slot>"`` when two optimizers share a name),
        rows aligned with ``keys``."""
        state = self._rows_state(self._admitted_slots(), np.empty(0, np.int64))
        out = {field: state[field] for field in ("keys", "values", "counts", "last_seen")}
        names = [s.slot for s in self._slots.values()]
        for field, slot in sorted(self._slot_fields().items()):
            label = slot.slot if names.count(slot.slot) == 1 else f"{slot.optimizer_name}/{slot.slot}"
            out[label] = state[field]
        return out

    def state_dict(self):
        """The whole table as arrays (copies, one moment): see DYNAMIC_PROTOCOL
        / ``load_state_dict``."""
        return self._rows_state(self._admitted_slots(), self._held_slots(0))

    # ----------------------------------------------------------- loading
    def _check_state(self, state, delta):
        """ValueError naming the table and field unless ``state`` is a valid
        state (or delta) of this table; returns it with arrays as given."""
        where = f"table {self.name!r}"
        if not isinstance(state, dict):
            raise ValueError(f"{where}: a state must be a dict of arrays, got {type(state).__name__}")
        allowed = set(_BASE_FIELDS) | (set(_TOMBSTONES) if delta else set())
        for field in state:
            if field not in allowed and not (isinstance(field, str) and field.startswith("slots/")
                                             and field.count("/") == 2):
                raise ValueError(f"{where}: unknown state field {field!r}")
        for field in _BASE_FIELDS + (_TOMBSTONES if delta else ()):
            if field not in state:
                raise ValueError(f"{where}: state field {field!r} is missing")
        arrays = {field: np.asarray(value) for field, value in state.items()}
        n, p = arrays["keys"].shape[:1] or (None,), arrays["pending_keys"].shape[:1] or (None,)
        expect = {"keys": (np.int64, (n[0],)), "counts": (np.int64, (n[0],)),
                  "last_seen": (np.int64, (n[0],)),
                  "values": (np.float32, (n[0], self.embedding_dim)),
                  "pending_keys": (np.int64, (p[0],)), "pending_counts": (np.int64, (p[0],)),
                  "pending_last_seen": (np.int64, (p[0],))}
        for field in _TOMBSTONES if delta else ():
            expect[field] = (np.int64, (arrays[field].shape[:1] or (None,))[0:1])
        for field, (dtype, shape) in expect.items():
            array = arrays[field]
            if array.dtype != dtype or array.shape != shape or None in shape:
                raise ValueError(f"{where}: state field {field!r} must be {np.dtype(dtype)} of "
                                 f"shape {shape}, got {array.dtype} {array.shape}")
        for field in ("keys", "pending_keys") + (_TOMBSTONES if delta else ()):
            keys = arrays[field]
            if keys.size > 1 and not (keys[1:] > keys[:-1]).all():
                raise ValueError(f"{where}: state field {field!r} must be strictly ascending")
        if np.intersect1d(arrays["keys"], arrays["pending_keys"]).size:
            raise ValueError(f"{where}: a key is both admitted ('keys') and pending "
                             f"('pending_keys')")
        if delta:  # a key evicted since the mark may be pending again, not admitted
            for field, upserts in (("tombstones", "keys"), ("pending_tombstones", "pending_keys")):
                if np.intersect1d(arrays[field], arrays[upserts]).size:
                    raise ValueError(f"{where}: state field {field!r} names a key also in "
                                     f"{upserts!r}")
        if not np.isfinite(arrays["values"]).all():
            raise ValueError(f"{where}: state field 'values' holds non-finite numbers")
        fields = self._slot_fields()
        for field, array in arrays.items():
            if not field.startswith("slots/"):
                continue
            slot = fields.get(field)
            if array.ndim not in (1, 2) or array.shape[0] != n[0] or (
                    array.ndim == 2 and array.shape[1] != self.embedding_dim):
                raise ValueError(f"{where}: state field {field!r} must have {n[0]} rows of "
                                 f"[] or [{self.embedding_dim}], got {array.shape}")
            if slot is not None and (array.dtype != slot.dtype
                                     or array.shape[1:] != slot.array.shape[1:]):
                raise ValueError(f"{where}: state field {field!r} must be {slot.dtype} rows of "
                                 f"{slot.array.shape[1:]}, got {array.dtype} {array.shape[1:]}")
            if array.dtype.kind not in "fi":
                raise ValueError(f"{where}: state field {field!r} has dtype {array.dtype}")
        return arrays

    def _check_capacity(self, admitted, pending):
        if self.capacity is not None and admitted > self.capacity:
            raise ValueError(f"table {self.name!r}: the state holds {admitted} admitted keys, "
                             f"over its capacity of {self.capacity}")
        if self.max_pending is not None and pending > self.max_pending:
            raise ValueError(f"table {self.name!r}: the state holds {pending} pending keys, "
                             f"over its max_pending of {self.max_pending}")

    def load_state_dict(self, state):
        """Replace the whole table by ``state`` (as ``state_dict`` gives it).

        Every field is checked first (dtypes, shapes, strictly ascending
        keys, admitted and pending disjoint, capacity): ValueError naming the
        table and the field, nothing changed. Slots of attached optimizers
        are restored (missing ones: their initial value); slots of others
        are held until the optimizer attaches."""
        arrays = self._check_state(state, delta=False)
        self._check_capacity(arrays["keys"].shape[0], arrays["pending_keys"].shape[0])
        self._load(arrays)

    def _load(self, arrays):
        n, p = arrays["keys"].shape[0], arrays["pending_keys"].shape[0]
        rows_allocated = _pow2_at_least(max(n + 1, _MIN_ROWS))
        km = K.empty_map(_pow2_at_least(max(_SLOTS_PER_KEY * (n + p), _MIN_SLOTS)),
                         rows_allocated)
        records = np.empty((n + p, 2), np.int64)
        records[:, K.KEY] = np.concatenate([arrays["keys"], arrays["pending_keys"]])
        records[:n, K.ROW] = np.arange(K.DEFAULT_ROW + 1, n + 1)
        records[n:, K.ROW] = K.PENDING - np.arange(p)
        K.rebuild(km.slots, records)
        km = K.reserve_pending(km, p)
        km.stats[1:n + 1, K.C_COUNT] = arrays["counts"]
        km.stats[1:n + 1, K.C_LAST_SEEN] = arrays["last_seen"]
        km.pending[:p, K.C_COUNT] = arrays["pending_counts"]
        km.pending[:p, K.C_LAST_SEEN] = arrays["pending_last_seen"]
        km.sizes[K.ROWS_USED], km.sizes[K.LIVE], km.sizes[K.ADMITTED] = n + 1, n + p, n
        km.sizes[K.PENDING_USED] = p
        value = self._new_rows_array(rows_allocated)
        value[1:n + 1] = arrays["values"]
        slots = {}
        for key, slot in self._slots.items():
            if slot.variable is None:
                continue  # held slots not in this state are dropped
            array = self._slot_array(slot, rows_allocated)
            if slot.field in arrays:
                array[1:n + 1] = arrays[slot.field]
            slot.variable.value = array
            slots[key] = slot
        for field, values in arrays.items():
            _, optimizer_name, slot_name = field.split("/") if field.startswith("slots/") else ("",) * 3
            if not field.startswith("slots/") or (optimizer_name, slot_name) in slots:
                continue
            held = np.zeros((rows_allocated,) + values.shape[1:], values.dtype)
            held[1:n + 1] = values
            valid = np.zeros(rows_allocated, np.bool_)
            valid[1:n + 1] = True
            slots[(optimizer_name, slot_name)] = _Slot(
                optimizer_name, slot_name, "like" if values.ndim == 2 else "rows",
                values.dtype, 0, held=held, valid=valid)
        self.weight.value = value
        self._slots = slots
        self._km = km
        self._recent = {}
        self._generation += 1

    # ------------------------------------------------------- incremental
    def _fingerprints(self):
        """(held keys sorted, kinds (1 admitted, 0 pending), fingerprints
        [uint64]): a hash of each key's kind, count, last_seen, row values
        and slot rows (not of where they are stored)."""
        slots = self._km.slots
        held = np.flatnonzero(slots[:, K.ROW] != K.EMPTY)
        held = held[np.argsort(slots[held, K.KEY], kind="stable")]
        records = slots[held]
        kinds = (records[:, K.ROW] >= 0).astype(np.int64)
        admitted = np.flatnonzero(kinds)
        pending = np.flatnonzero(kinds == 0)
        counts = np.empty((held.shape[0], 2), np.int64)   # count, last_seen
        counts[admitted] = self._km.stats[records[admitted, K.ROW]]
        counts[pending] = self._km.pending[K.PENDING - records[pending, K.ROW]]
        scalars = np.stack([records[:, K.KEY], kinds, counts[:, K.C_COUNT],
                            counts[:, K.C_LAST_SEEN]], axis=1)
        out = np.zeros(held.shape[0], np.uint64)
        K.mix_rows(out, np.ascontiguousarray(scalars).view(np.uint32),
                   np.arange(held.shape[0], dtype=np.int64))
        rows = np.where(kinds == 1, records[:, K.ROW], -1)
        K.mix_rows(out, self.weight.value.view(np.uint32), rows)
        for _, slot in sorted(self._slot_fields().items()):
            array = slot.array
            K.mix_rows(out, array.reshape(array.shape[0], -1).view(np.uint32), rows)
        return records[:, K.KEY].copy(), kinds, out, held

    def mark_saved(self):
        """Remember the current state as saved: the next ``delta_state_dict``
        holds what changed from here (call after a save commits)."""
        keys, kinds, fingerprints, _ = self._fingerprints()
        self._mark = _Mark(keys, kinds, fingerprints, keys[kinds == 1], keys[kinds == 0],
                           frozenset(self._slot_fields()))

    def delta_state_dict(self):
        """What changed since the last ``mark_saved`` (everything if never):
        the ``state_dict`` fields for keys whose row, slots, count or
        last_seen changed (or that are new), plus ``tombstones`` (admitted at
        the mark, not now) and ``pending_tombstones`` (pending at the mark,
        neither pending nor admitted now). A slot created since the mark
        makes every admitted key an upsert."""
        keys, kinds, fingerprints, held = self._fingerprints()
        mark = self._mark
        if mark is None or not mark.keys.size or not mark.slot_fields >= set(self._slot_fields()):
            changed = np.ones(keys.shape[0], np.bool_)
        else:
            at = np.minimum(np.searchsorted(mark.keys, keys), mark.keys.shape[0] - 1)
            changed = ~((mark.keys[at] == keys) & (mark.kinds[at] == kinds)
                        & (mark.fingerprints[at] == fingerprints))
        delta = self._rows_state(held[changed & (kinds == 1)], held[changed & (kinds == 0)])
        if mark is None:
            delta["tombstones"] = np.empty(0, np.int64)
            delta["pending_tombstones"] = np.empty(0, np.int64)
        else:
            delta["tombstones"] = np.setdiff1d(mark.admitted, keys[kinds == 1], assume_unique=True)
            delta["pending_tombstones"] = np.setdiff1d(mark.pending, keys, assume_unique=True)
        return delta

    def apply_delta_state_dict(self, delta):
        """Apply a ``delta_state_dict`` (validated first; nothing changes on
        error): tombstones drop keys, upserts replace or add them (moving a key
        between admitted and pending as the delta says)."""
        arrays = self._check_state(delta, delta=True)
        current = self.state_dict()
        fields = set(current) | set(arrays)
        slot_fields = sorted(f for f in fields if f.startswith("slots/"))
        drop = np.concatenate([arrays["tombstones"], arrays["keys"], arrays["pending_keys"]])
        keep = ~np.isin(current["keys"], drop)
        merged = {}
        order = np.argsort(np.concatenate([current["keys"][keep], arrays["keys"]]), kind="stable")
        for field in ("keys", "values", "counts", "last_seen") + tuple(slot_fields):
            old = current.get(field)
            new = arrays.get(field)
            if old is None or new is None:
                old, new = self._fill_missing_slot(field, old, new, keep.sum(),
                                                   arrays["keys"].shape[0])
            merged[field] = np.concatenate([old[keep] if old.shape[0] == keep.shape[0] else old,
                                            new])[order]
        pdrop = np.concatenate([arrays["pending_tombstones"], arrays["keys"],
                                arrays["pending_keys"]])
        pkeep = ~np.isin(current["pending_keys"], pdrop)
        porder = np.argsort(np.concatenate([current["pending_keys"][pkeep],
                                            arrays["pending_keys"]]), kind="stable")
        for field in ("pending_keys", "pending_counts", "pending_last_seen"):
            merged[field] = np.concatenate([current[field][pkeep], arrays[field]])[porder]
        merged = self._check_state(merged, delta=False)
        self._check_capacity(merged["keys"].shape[0], merged["pending_keys"].shape[0])
        self._load(merged)

    def _fill_missing_slot(self, field, old, new, kept, upserts):
        """A slot present on one side only: the other side's rows take the
        attached slot's initial value, else the merge is refused."""
        slot = self._slot_fields().get(field)
        present = old if old is not None else new
        rows = kept if old is None else upserts
        if rows and slot is None:
            raise ValueError(f"table {self.name!r}: state field {field!r} is in the delta or in "
                             f"the table but not both, and its initial value is unknown")
        fill = np.full((rows,) + present.shape[1:], slot.initial if slot else 0, present.dtype)
        return (fill, new) if old is None else (old, fill)


def _same_sum_bags(planned, offsets, weights, combiner):
    """The bags ``offsets``, ``weights``, ``combiner`` are a sum without
    weights over the ``planned`` offsets."""
    if weights is not None or combiner != "sum":
        return False
    offsets = np.asarray(offsets)   # other dtypes: checked by the general path
    return (offsets.dtype.kind in "iu" and offsets.shape == planned.shape
            and np.array_equal(offsets, planned))


def _grad_of_plan(plan, d_out, num_bags, dense_shape, where):
    """The ``RowSparseGrad`` of a lookup's gradient plan (rows, starts,
    src_index, src_coef) for ``d_out`` [num_bags, D] (checked and copied as
    ``functional.embedding_bag_grad`` does)."""
    d_out = np.asarray(d_out)
    if d_out.dtype.kind not in "fiu":
        raise ValueError(f"feature {where!r}: d_out must be a real array, got dtype {d_out.dtype}")
    if d_out.ndim != 2 or d_out.shape != (num_bags, dense_shape[1]):
        raise ValueError(f"feature {where!r}: d_out must have shape [{num_bags}, "
                         f"{dense_shape[1]}] (one row per bag), got {d_out.shape}")
    d_out = np.array(d_out, dtype=np.float32, copy=True, order="C")
    return RowSparseGrad._from_plan(GradPlan(*plan, d_out, np.float32(1.0)), dense_shape)


def _grown(array, size, fill):
    """``array`` copied into a new array of ``size`` rows, the rest ``fill``."""
    out = np.full((size,) + array.shape[1:], fill, array.dtype)
    out[:array.shape[0]] = array
    return out
