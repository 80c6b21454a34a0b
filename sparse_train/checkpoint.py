"""Checkpoints: one self-checking file per save, written atomically and streamed.

A checkpoint holds everything a run needs to continue bit for bit: the model
variables, every optimizer's slots (accumulators, decay powers, Adam moments)
and non-slot state (Adam's beta powers), the global step, the state of numpy
``Generator``s (data shuffling), the optimizers' hyperparameters
(``get_config``) and a format version. Entries are keyed by name, never by
position. No pickle: a checkpoint is JSON plus raw arrays.

File format (version 1; all integers little-endian)::

    offset 0        b"SPTCKPT\\0"                      8 bytes, magic
    offset 8        H                                 uint64, header length
    offset 16       header                            H bytes of JSON (UTF-8)
    data_start      arrays, raw C order               data_start = align64(16 + H)
    file_size - 24  trailer: crc32(bytes [0, 16 + H)) uint32, 0 uint32,
                    file_size uint64, b"SPTEND\\0\\0"

The header's ``"arrays"`` lists each array as ``{"name", "dtype"`` (numpy
``dtype.str``, e.g. ``"<f4"``), ``"shape", "offset"`` (from data_start,
a multiple of 64), ``"nbytes", "crc32"`` (8 hex digits, zlib CRC-32 of the
array's bytes)``}``. Next to it: ``"format", "format_version",
"library_version", "variables"`` (names), ``"optimizers"`` (per optimizer:
``name``, ``class``, ``config``, ``non_slot`` {key: array}, ``slots``
[[variable, slot, array]]), ``"global_step"`` ({name, value} or null),
``"rng"`` {name: bit-generator state} and the caller's ``"metadata"``.

Integrity. A truncated file lacks the trailer or has the wrong size; a
damaged header fails the header CRC; a damaged array fails its CRC. All are
reported as ``CorruptCheckpointError`` naming the file (and the array).

Atomicity. ``save`` writes a temporary file in the target's directory,
fsyncs it, renames it over the target with ``os.replace`` and fsyncs the
directory: a crash at any point leaves either the old file or the new one,
never a mix. ``CheckpointManager`` writes its ``latest`` pointer the same way.

Directory contents are data. ``CheckpointManager`` (and the distributed
manager) read file names from the ``latest`` pointer; each must be a plain
name of the manager's own pattern (``{checkpoint_name}-{number}.ckpt``) in
its directory: a separator, ``..``, an absolute path, another pattern or a
symlink leading out of the directory is refused with ``CheckpointError``.
Pruning (``max_to_keep``) deletes only such names, never following a
symlink, and only regular files that start with the checkpoint magic.
Temporary files are named ``.{target}.{host}.{pid}.{random}.tmp``; a new
manager removes its own pattern's leftovers of a save that died (the
writing process gone, or written on another host over a day ago).
``DirectoryLock`` keeps a second run out of a directory (an ``flock``'d
lock file naming its holder; a dead holder's lock is taken over).

Memory. Arrays are streamed in chunks of ``CHUNK_BYTES`` both ways, so a
table is never held twice. ``save`` writes each array straight from the
variable's memory, computing its CRC on the way, then rewrites the header in
place with the CRCs (they have a fixed width). ``restore`` validates names,
shapes and dtypes from the header, then reads the file twice: pass 1 streams
every array through one chunk buffer and checks its CRC; only when all pass
does pass 2 read each array straight into the existing variable
(``readinto``), checking the CRCs again. A bad file therefore changes
nothing; the cost is a second sequential read (usually from the page cache).

Dynamic tables (the ``weight`` of a ``DynamicEmbeddingTable``, a variable
with a ``.table``). Its row store is not saved: the table is evicted at the
global step (``table.evict``: eviction runs at every save), then each field
of ONE ``table.state_dict()`` snapshot (keys, values, counts, last-seen
steps, pending keys with their counts and steps, ``slots/<optimizer>/<slot>``)
is an array named ``"{variable}:{field}"``; the header's ``"dynamic"`` maps
the variable to ``{"kind": "full" or "delta", "embedding_dim", "fields"}``.
The optimizers' slots of that variable live in the table's state, so they
are not listed in ``"slots"`` (nor dropped on restore). A delta
(``CheckpointManager(incremental_every=K)``) holds ``delta_state_dict()``
(changed keys, ``tombstones``) and the header's ``"chain"``: ``{"id",
"files", "index"}``, the full save and the deltas it follows, in order.
Restore merges them by key (``apply_table_delta``) and checks the result
against the table before anything changes; ``load_state_dict`` then puts
it in. The snapshot is a copy of the table: the price of one consistent
moment (DeepRec #1023 saved weights and Adam slots at different moments).
The managers share the chain rules (``next_link``, ``chain_after_save``,
``restored_chain``) and the two steps of a save (``Checkpoint.snapshot``,
then ``Checkpoint.write``): ``distributed.DistributedCheckpointManager``
keeps one such chain per rank, the ranks agreeing on each save's kind.

Optimizer state is reached through ``Optimizer.non_slot_variables``,
``slot_variables``, ``slot_shape``, ``create_slots`` and ``remove_slot``.

>>> import os, tempfile
>>> from sparse_train import GlobalStep, Variable
>>> from sparse_train.optim import Adagrad
>>> w, step = Variable(np.ones((3, 2)), "w"), GlobalStep()
>>> opt = Adagrad(0.1)
>>> opt.apply_gradients([(np.ones((3, 2)), w)], global_step=step)
>>> path = os.path.join(tempfile.mkdtemp(), "model.ckpt")
>>> _ = Checkpoint([w], [opt], step).save(path)
>>> w2, step2, opt2 = Variable(np.zeros((3, 2)), "w"), GlobalStep(), Adagrad(0.1)
>>> _ = Checkpoint([w2], [opt2], step2).restore(path)
>>> accumulator = opt2.get_slot(w2, "accumulator")
>>> bool((w2.value == w.value).all()), int(step2), accumulator.value[0, 0].item()
(True, 1, 1.100000023841858)
"""
import atexit
import json
import os
import re
import socket
import stat
import struct
import tempfile
import time
import warnings
import weakref
import zlib
from typing import NamedTuple

import numpy as np

from .optim.base import Optimizer
from .variable import GlobalStep, Variable

__all__ = ["Checkpoint", "CheckpointManager", "CheckpointReader", "load_checkpoint",
           "apply_table_delta", "TableSnapshot", "PreparedRestore",
           "CheckpointError", "CorruptCheckpointError", "optimizer_state_dict",
           "load_optimizer_state_dict", "FORMAT_VERSION", "DirectoryLock",
           "DirectoryLockedError"]

FORMAT_VERSION = 1
MAGIC = b"SPTCKPT\x00"
END_MAGIC = b"SPTEND\x00\x00"
ALIGN = 64
#: Bytes moved per read, write and CRC call.
CHUNK_BYTES = 8 << 20

_PREFIX = struct.Struct("<8sQ")       # magic, header length
_TRAILER = struct.Struct("<IIQ8s")    # header crc32, reserved, file size, end magic
_NO_CRC = "00000000"


class CheckpointError(ValueError):
    """A checkpoint does not fit the objects it is restored into."""


class CorruptCheckpointError(CheckpointError):
    """A checkpoint file is truncated, damaged or not a checkpoint."""


class DirectoryLockedError(CheckpointError):
    """Another live process holds a directory's ``DirectoryLock``."""


class TableSnapshot(NamedTuple):
    """One consistent copy of a ``Checkpoint``'s dynamic tables
    (``Checkpoint.snapshot``): {table: {field: array}}, {table: sorted row
    fields}, and whether the states are deltas."""
    states: dict
    fields: dict
    delta: bool


# --------------------------------------------------------------- Checkpoint
class Checkpoint:
    """The objects saved and restored together (TF ``tf.train.Checkpoint``).

    Args:
        variables: the model's ``Variable``s (names unique).
        optimizers: the ``Optimizer``s training them (names unique); their
            slots, non-slot state and ``get_config()`` are saved.
        global_step: optional ``GlobalStep``.
        rng: optional ``np.random.Generator``, or a dict name -> Generator
            (e.g. the data shuffler); its bit-generator state is saved.

    ``save(path)`` writes one file atomically; ``restore(path)`` reads it
    back into these same objects (see the module docstring). Slots that do
    not exist yet (before an optimizer's first apply) are created on
    restore; slots the file does not hold are removed, so the optimizer
    state equals the saved one.
    """

    def __init__(self, variables=(), optimizers=(), global_step=None, rng=None):
        self.variables = _unique_by_name(variables, Variable, "variable")
        self.optimizers = _unique_by_name(optimizers, Optimizer, "optimizer")
        if global_step is not None and not isinstance(global_step, GlobalStep):
            raise TypeError(f"global_step must be a GlobalStep, got {type(global_step).__name__}")
        self.global_step = global_step
        self.rngs = _as_rngs(rng)
        #: {variable name: DynamicEmbeddingTable} of the dynamic tables' weights.
        self.tables = {name: _table_of(v) for name, v in self.variables.items()
                       if _table_of(v) is not None}

    def save(self, path, metadata=None):
        """Write every saved object to ``path`` atomically; returns ``path``.

        A dynamic table is first evicted at the global step
        (``table.evict(global_step)``, 0 without one: eviction runs at every
        save), then saved whole from one ``table.state_dict()``.

        Args:
            path: file to write (its directory must exist).
            metadata: optional JSON-serialisable dict stored in the header.
        """
        self._save(path, metadata)
        return path

    def _save(self, path, metadata, chain=None, delta_fields=None):
        """Write ``path`` with the header ``"chain"`` ``chain`` (a manager's
        save; dict: id, files, index). With ``delta_fields`` ({table: row
        fields of the chain's full save}) the tables' deltas are written,
        unless their fields differ (an optimizer attached since): then the
        whole tables, as a new chain's full save.

        Returns ({table: sorted row fields}, the chain written)."""
        snapshot = self.snapshot(delta_fields)
        if delta_fields is not None and not snapshot.delta:
            chain = new_chain()
        self.write(path, snapshot, metadata, chain)
        return snapshot.fields, chain

    def snapshot(self, delta_fields=None):
        """Evict every dynamic table at the global step, then take one
        consistent copy of each (a manager's save, in two steps so that
        ranks can agree on the kind before writing; ``write`` writes it).

        Args:
            delta_fields: None for whole tables; else {table: sorted row
                fields of the chain's full save}: each table's
                ``delta_state_dict()``, unless a table's row fields differ
                from these (an optimizer attached since), then whole tables.

        Returns:
            a ``TableSnapshot`` (``delta`` False when the tables are whole).
        """
        step = 0 if self.global_step is None else int(self.global_step)
        for table in self.tables.values():
            table.evict(step)
        for delta in ((True, False) if delta_fields is not None else (False,)):
            states = {name: _table_state(table, delta) for name, table in self.tables.items()}
            fields = {name: sorted(_row_fields(state)) for name, state in states.items()}
            if not delta or fields == delta_fields:
                break
        return TableSnapshot(states, fields, delta)

    def write(self, path, snapshot, metadata=None, chain=None):
        """Write ``path`` atomically from ``snapshot`` (of ``snapshot()``)
        with the header ``"chain"`` ``chain`` (dict: id, files, index, or
        None); returns ``path``."""
        entries = self._entries(snapshot.states)
        header = self._header(entries, metadata)
        if self.tables:
            header["dynamic"] = {name: {"kind": "delta" if snapshot.delta else "full",
                                        "embedding_dim": int(self.tables[name].embedding_dim),
                                        "fields": sorted(state)}
                                 for name, state in snapshot.states.items()}
        if chain is not None:
            header["chain"] = chain
        _atomic_write(path, lambda f: _write_checkpoint(f, header, entries))
        return path

    def restore(self, path, strict=True):
        """Read ``path`` into these objects; returns the file's header (dict).

        Every name, shape and dtype is checked and every array's CRC is
        verified before anything changes. Raises ``CheckpointError`` when
        the file does not fit (naming each variable with both shapes) and
        ``CorruptCheckpointError`` when it is damaged. ``strict=False``
        ignores entries of the file that no object here claims.

        A dynamic table is restored with ``table.load_state_dict`` from the
        file, or, for a delta of ``CheckpointManager(incremental_every=K)``,
        from its chain: the full save and every delta up to ``path``, merged
        by key in memory (each CRC checked) before anything changes. A
        missing, out-of-order or damaged file of the chain raises
        ``CorruptCheckpointError`` naming it (its ``bad_file``).
        """
        return self.prepare_restore(path, strict).commit()

    def prepare_restore(self, path, strict=True):
        """The first half of ``restore``: every check and CRC (and a delta's
        chain read), nothing changed. Returns a ``PreparedRestore`` whose
        ``commit()`` puts the state in (returns the header) and ``abandon()``
        closes the file; a sharded restore prepares on every rank before any
        rank commits."""
        ckpt = _CheckpointFile(path)
        try:
            targets, drops = self._match(ckpt.header, strict, ckpt.path)
            ckpt.verify([t.array for t in targets])
            states = self._read_tables(ckpt)
        except BaseException:
            ckpt.close()
            raise
        return PreparedRestore(self, ckpt, targets, drops, states)

    # ----------------------------------------------------------- saving
    def _entries(self, states):
        """[(array name, ndarray)] in file order, names unique; a dynamic
        table's fields (``states``) as ``"{variable}:{field}"``."""
        entries = []
        for v in self.variables.values():
            if v.name in states:
                entries += [(_field_array(v.name, field), array)
                            for field, array in sorted(states[v.name].items())]
            else:
                entries.append((v.name, v.value))
        for opt in self.optimizers.values():
            entries += [(v.name, v.value) for _, v in opt.non_slot_variables()]
            entries += [(v.name, v.value) for var_name, _, v in opt.slot_variables()
                        if not self._dynamic_slot(var_name, v)]
        if self.global_step is not None:
            entries.append((self.global_step.name, self.global_step.value))
        seen = set()
        for name, array in entries:
            if name in seen:
                raise ValueError(f"Checkpoint: two saved arrays are named {name!r}")
            seen.add(name)
            if not array.flags.c_contiguous:
                raise ValueError(f"Checkpoint: array {name!r} is not C-contiguous")
        return entries

    def _header(self, entries, metadata):
        from . import __version__  # late: the package imports this module
        arrays, offset = [], 0
        for name, array in entries:
            offset = _align(offset)
            arrays.append({"name": name, "dtype": array.dtype.str, "shape": list(array.shape),
                           "offset": offset, "nbytes": int(array.nbytes), "crc32": _NO_CRC})
            offset += array.nbytes
        step = self.global_step
        return {
            "format": "sparse_train.checkpoint", "format_version": FORMAT_VERSION,
            "library_version": __version__,
            "variables": list(self.variables),
            "optimizers": [_optimizer_header(opt, self._dynamic_slot)
                           for opt in self.optimizers.values()],
            "global_step": None if step is None else {"name": step.name, "value": int(step)},
            "rng": {name: _encode(g.bit_generator.state) for name, g in self.rngs.items()},
            "metadata": {} if metadata is None else metadata,
            "arrays": arrays,
            # 16-bit tables (SPEC §7), saved as their 16-bit storage
            "storage": {name: var.storage for name, var in self.variables.items()
                        if getattr(var, "is_half", False)},
        }

    # ---------------------------------------------------------- restoring
    def _match(self, header, strict, path):
        """(targets, slots to drop): where each array of the file goes.

        Raises CheckpointError listing every mismatch; mutates nothing.
        """
        shapes = {a["name"]: (tuple(a["shape"]), a["dtype"]) for a in header["arrays"]}
        match = _Matcher(shapes)
        _expect_same_names("variable", header["variables"], self.variables, strict, match)
        dynamic = header.get("dynamic", {})
        for name in header["variables"]:
            if name not in self.variables:
                continue
            if (name in self.tables) != (name in dynamic):
                kind = {True: "a dynamic table", False: "a fixed-shape array"}
                match.problems.append(f"variable {name!r} is {kind[name in self.tables]} in "
                                      f"the model, {kind[name in dynamic]} in the checkpoint")
            elif name in self.tables:
                _match_table(self.tables[name], name, dynamic[name], match)
            else:
                var = self.variables[name]
                saved = header.get("storage", {}).get(name, _plain_storage(shapes, name))
                if saved != var.storage:  # never narrowed or widened implicitly
                    match.problems.append(
                        f"variable {name!r}: stored as {saved} in the checkpoint, {var.storage} "
                        f"in the model (to convert, restore into a model of the checkpoint's "
                        f"dtype and copy the values over with Variable.assign, which narrows "
                        f"nearest-even)")
                    continue
                match.add(name, f"variable {name!r}", var.shape, var.dtype, lambda v=var: v.value)
        saved_opts = {o["name"]: o for o in header["optimizers"]}
        _expect_same_names("optimizer", saved_opts, self.optimizers, strict, match)
        drops = []
        for name, opt in self.optimizers.items():
            if name in saved_opts:
                drops += _match_optimizer(opt, saved_opts[name], self.variables, match,
                                          self._dynamic_slot)
        self._match_step_and_rng(header, strict, match)
        if match.problems:
            raise CheckpointError(f"checkpoint {path} does not fit: " + "; ".join(match.problems)
                                  + _shard_hint(path))
        return match.targets, drops

    def _dynamic_slot(self, var_name, slot_var):
        """Whether a slot lives in a dynamic table's state (saved with the
        table's ``state_dict``, not as a fixed-shape array)."""
        return var_name in self.tables or _table_of(slot_var) is not None

    def _read_tables(self, ckpt):
        """{variable: full state} of every dynamic table, read from ``ckpt``
        and, for a delta, its chain (``_table_states``); checked against
        the tables. Nothing is mutated."""
        if not self.tables:
            return {}
        states = _table_states(ckpt, list(self.tables))
        problems = [p for name, state in states.items()
                    for p in _table_state_problems(self.tables[name], name, state)]
        if problems:
            raise CheckpointError(f"checkpoint {ckpt.path} does not fit: " + "; ".join(problems))
        return states

    def _match_step_and_rng(self, header, strict, match):
        saved_step = header["global_step"]
        if self.global_step is not None:
            if saved_step is None:
                match.problems.append("the checkpoint has no global step")
            else:
                step = self.global_step
                match.add(saved_step["name"], "the global step", step.value.shape,
                          step.value.dtype, lambda: step.value)
        elif saved_step is not None and strict:
            match.problems.append("the checkpoint has a global step but none was given")
        _expect_same_names("rng", header["rng"], self.rngs, strict, match)
        for name, rng in self.rngs.items():
            if name in header["rng"]:
                _check_rng_state(name, rng, header["rng"][name], match)


class PreparedRestore:
    """A checked restore waiting to be put in (``Checkpoint.prepare_restore``)."""

    def __init__(self, checkpoint, ckpt, targets, drops, states):
        self._checkpoint, self._ckpt = checkpoint, ckpt
        self._targets, self._drops, self._states = targets, drops, states

    def commit(self):
        """Put the state in (the dynamic tables first: ``load_state_dict``
        validates again); returns the file's header."""
        checkpoint, ckpt = self._checkpoint, self._ckpt
        with ckpt:
            for name, state in self._states.items():
                checkpoint.tables[name].load_state_dict(state)
                _count_restore(checkpoint.tables[name])
            for opt, var_name, slot in self._drops:
                opt.remove_slot(var_name, slot)
            for target in self._targets:
                ckpt.read_into(target.array, target.fetch())
        for name, state in ckpt.header["rng"].items():
            if name in checkpoint.rngs:
                checkpoint.rngs[name].bit_generator.state = _decode(state)
        return ckpt.header

    def abandon(self):
        """Close the file; nothing is restored."""
        self._ckpt.close()


def _plain_storage(shapes, name):
    """The ``Variable.storage`` of a saved array that is not a 16-bit table."""
    return np.dtype(shapes[name][1]).name if name in shapes else "missing"


class _Target:
    """One array of the file and the function returning its destination."""

    def __init__(self, array, fetch):
        self.array, self.fetch = array, fetch


class _Matcher:
    """Collects targets and the problems found while matching a file."""

    def __init__(self, shapes):
        self.shapes, self.targets, self.problems = shapes, [], []

    def add(self, array, what, shape, dtype, fetch, creates=False):
        """Expect ``array`` of ``shape`` and ``dtype``, read into ``fetch()``
        (which creates a slot when ``creates``, so is called only later)."""
        if not creates and not _writable_c_array(fetch()):
            self.problems.append(f"{what}: the model's array is not a writable C-contiguous array")
            return
        if array not in self.shapes:
            self.problems.append(f"{what}: array {array!r} is missing from the file")
            return
        saved_shape, saved_dtype = self.shapes[array]
        if saved_shape != tuple(shape):
            self.problems.append(f"{what}: shape {saved_shape} in the checkpoint, "
                                 f"{tuple(shape)} in the model")
        elif saved_dtype != np.dtype(dtype).str:
            self.problems.append(f"{what}: dtype {saved_dtype} in the checkpoint, "
                                 f"{np.dtype(dtype).str} in the model")
        else:
            self.targets.append(_Target(array, fetch))


def _expect_same_names(kind, saved, given, strict, match):
    for name in given:
        if name not in saved:
            match.problems.append(f"the checkpoint has no {kind} {name!r} "
                                  f"(it has {sorted(saved)})")
    if strict:
        for name in saved:
            if name not in given:
                match.problems.append(f"the checkpoint has {kind} {name!r}, which was "
                                      f"not given (pass strict=False to ignore it)")


def _match_optimizer(opt, saved, variables, match, dynamic_slot=lambda var_name, slot: False):
    """Add the targets of ``opt``'s state; return the (opt, var, slot) to drop
    (never a slot of a dynamic table: its state restores those)."""
    where = f"optimizer {opt.name!r}"
    if saved["class"] != type(opt).__name__:
        match.problems.append(f"{where} is a {type(opt).__name__}, the checkpoint holds "
                              f"a {saved['class']}'s state")
        return []
    _warn_config(opt, saved["config"])
    non_slot = dict(opt.non_slot_variables())
    for key in sorted(set(non_slot) | set(saved["non_slot"])):
        if key not in non_slot or key not in saved["non_slot"]:
            match.problems.append(f"{where}: non-slot state {key!r} is only in "
                                  f"{'the model' if key in non_slot else 'the checkpoint'}")
            continue
        var = non_slot[key]
        match.add(saved["non_slot"][key], f"{where} state {key!r}", var.shape, var.dtype,
                  lambda v=var: v.value)
    saved_slots = set()
    for var_name, slot, array in saved["slots"]:
        saved_slots.add((var_name, slot))
        _match_slot(opt, var_name, slot, array, variables, match)
    return [(opt, var_name, slot) for var_name, slot, var in opt.slot_variables()
            if (var_name, slot) not in saved_slots and not dynamic_slot(var_name, var)]


def _match_slot(opt, var_name, slot, array, variables, match):
    where = f"slot {slot!r} of variable {var_name!r} (optimizer {opt.name!r})"
    if slot not in opt.get_slot_names():
        match.problems.append(f"{where}: {type(opt).__name__} has no such slot")
        return
    existing = dict(((v, s), var) for v, s, var in opt.slot_variables()).get((var_name, slot))
    if existing is not None:
        match.add(array, where, existing.shape, existing.dtype, lambda: existing.value)
    elif var_name in variables:
        var = variables[var_name]
        shape, dtype = opt.slot_shape(var, slot)
        match.add(array, where, shape, dtype, lambda: _ensure_slot(opt, var, slot).value,
                  creates=True)
    else:
        match.problems.append(f"{where}: the variable was not given, so the slot cannot "
                              f"be created")


def _warn_config(opt, saved_config):
    config = json.loads(json.dumps(opt.get_config()))
    if config != saved_config:
        diffs = [f"{k}={saved_config.get(k)!r} in the checkpoint, {config.get(k)!r} now"
                 for k in sorted(set(config) | set(saved_config))
                 if config.get(k) != saved_config.get(k)]
        warnings.warn(f"optimizer {opt.name!r}: hyperparameters differ from the checkpoint "
                      f"({'; '.join(diffs)}); the run will not continue as saved",
                      stacklevel=5)


def _check_rng_state(name, rng, saved_state, match):
    """Set the saved state on a scratch bit generator of the same kind."""
    kind = type(rng.bit_generator).__name__
    if saved_state.get("bit_generator") != kind:
        match.problems.append(f"rng {name!r} is a {kind}, the checkpoint holds a "
                              f"{saved_state.get('bit_generator')} state")
        return
    try:
        type(rng.bit_generator)().state = _decode(saved_state)
    except (TypeError, ValueError, KeyError) as error:
        match.problems.append(f"rng {name!r}: the saved state is invalid ({error})")


# ---------------------------------------- optimizer state (interim, see module)
def optimizer_state_dict(optimizer):
    """Every state array of ``optimizer`` by its variable's name (the live
    arrays, not copies): non-slot state such as ``"Adam/beta1_power"``, then
    slots named ``"{variable}/{optimizer}/{slot}"``.

    ``get_config()`` holds the hyperparameters.

    >>> from sparse_train.optim import Adam
    >>> opt, w = Adam(), Variable(np.zeros(2), "w")
    >>> opt.apply_gradients([(np.ones(2), w)])
    >>> sorted(optimizer_state_dict(opt))
    ['Adam/beta1_power', 'Adam/beta2_power', 'w/Adam/m', 'w/Adam/v']
    """
    return {v.name: v.value for v in optimizer.variables()}


def load_optimizer_state_dict(optimizer, state, var_list, keep=None):
    """Copy ``state`` (as from ``optimizer_state_dict``) into ``optimizer``.

    Slots of the variables in ``var_list`` are created when missing;
    slots absent from ``state`` are removed, except those of variables
    whose name ``keep(name)`` accepts (a dynamic table's, restored with
    its state). Every key, shape and dtype is checked first: a mismatch
    raises ``CheckpointError`` naming it, with nothing changed.
    """
    variables = _unique_by_name(var_list, Variable, "variable")
    names = {v.name: key for key, v in optimizer.non_slot_variables()}
    saved = {"class": type(optimizer).__name__, "config": json.loads(json.dumps(optimizer.get_config())),
             "non_slot": {key: name for name, key in names.items() if name in state},
             "slots": []}
    for var in variables.values():
        for slot in optimizer.get_slot_names():
            name = f"{var.name}/{optimizer.name}/{slot}"
            if name in state:
                saved["slots"].append([var.name, slot, name])
                names[name] = slot
    arrays = {k: np.asarray(v) for k, v in state.items()}
    match = _Matcher({k: (a.shape, a.dtype.str) for k, a in arrays.items()})
    match.problems += [f"unknown state {k!r}" for k in arrays if k not in names]
    drops = _match_optimizer(optimizer, saved, variables, match,
                             (lambda var_name, slot: keep(var_name)) if keep else
                             (lambda var_name, slot: False))
    if match.problems:
        raise CheckpointError(f"state does not fit optimizer {optimizer.name!r}: "
                              + "; ".join(match.problems))
    for opt, var_name, slot in drops:
        opt.remove_slot(var_name, slot)
    for target in match.targets:
        target.fetch()[...] = arrays[target.array]


def _ensure_slot(opt, var, slot):
    opt.create_slots([var])
    return opt.get_slot(var, slot)


def _optimizer_header(opt, dynamic_slot=lambda var_name, slot: False):
    return {"name": opt.name, "class": type(opt).__name__, "config": opt.get_config(),
            "non_slot": {key: v.name for key, v in opt.non_slot_variables()},
            "slots": [[var_name, slot, v.name] for var_name, slot, v in opt.slot_variables()
                      if not dynamic_slot(var_name, v)]}


# ------------------------------------------------------------ dynamic tables
#: Fields of a dynamic table's state that are not aligned with its "keys".
_KEY_FIELDS = ("keys", "pending_keys", "pending_counts", "pending_last_seen",
               "tombstones", "pending_tombstones")
_PENDING_ROWS = ("pending_counts", "pending_last_seen")
_REQUIRED = ("keys", "values", "counts", "last_seen") + _KEY_FIELDS[1:4]


def new_chain():
    """The header ``"chain"`` of a full save starting a delta chain."""
    return {"id": os.urandom(8).hex(), "files": [], "index": 0}


def check_incremental_every(value):
    """``incremental_every`` as an int >= 1 or None; ValueError naming it."""
    if value is not None and (isinstance(value, (bool, np.bool_)) or not isinstance(
            value, (int, np.integer, float)) or int(value) != value or value < 1):
        raise ValueError(f"incremental_every must be an integer >= 1 or None, got {value!r}")
    return None if value is None else int(value)


def next_link(chain, tables, incremental_every, latest, name):
    """The header ``"chain"`` of a manager's next save, named ``name``.

    A delta continues ``chain`` (the manager's, from ``chain_after_save`` or
    ``restored_chain``) when that is safe: deltas asked for
    (``incremental_every`` > 1), the chain has fewer than
    ``incremental_every`` files, no table was restored by anyone since, and
    ``latest`` (the pointer's newest name) is the chain's last file. Else a
    new chain's full save; None without ``incremental_every`` or tables."""
    if not incremental_every or not tables:
        return None
    if (incremental_every > 1 and chain is not None
            and chain["restores"] is not None
            and chain["restores"] == _restore_counts(tables)
            and len(chain["files"]) < incremental_every
            and chain["files"][-1] == latest and name not in chain["files"]):
        return {"id": chain["id"], "files": list(chain["files"]),
                "index": len(chain["files"])}
    return new_chain()


def kept_names(names, max_to_keep, chain_files):
    """The pointer entries a manager keeps, in save order: the last
    ``max_to_keep`` of ``names`` (all if None) and every entry their delta
    chains need (``chain_files(name)``), so pruning never breaks a chain."""
    kept = names if max_to_keep is None else names[-max_to_keep:]
    needed = set(kept).union(*(chain_files(n) for n in kept))
    return [n for n in names if n in needed]


def chain_after_save(link, name, fields, tables):
    """A manager's chain once the save ``name`` (header chain ``link``, row
    fields ``fields``) has committed: the tables are marked saved (their
    next delta starts here). None when ``link`` is None."""
    for table in tables.values():
        table.mark_saved()
    if link is None:
        return None
    return {"id": link["id"], "files": list(link["files"]) + [name], "fields": fields,
            "restores": _restore_counts(tables)}


def restored_chain(header, files, tables):
    """A manager's chain after restoring a save whose header (a file's, or
    a rank's shard's) is ``header``: ``files`` the chain's names through the
    restored one; the row fields from the header. Mark the tables saved first."""
    return {"id": header["chain"]["id"], "files": list(files),
            "fields": {t: sorted(f for f in header["dynamic"][t]["fields"]
                                 if f not in _KEY_FIELDS) for t in tables},
            "restores": _restore_counts(tables)}


def _table_of(var):
    """The dynamic table owning ``var`` (a ``DynamicVariable``), else None."""
    table = getattr(var, "table", None)
    return table if hasattr(table, "state_dict") and hasattr(table, "load_state_dict") else None


#: Restores of each dynamic table by any ``Checkpoint``: a manager continues
#: a delta chain only if no table was restored since it marked them.
_RESTORES = weakref.WeakKeyDictionary()


def _count_restore(table):
    try:
        _RESTORES[table] = _RESTORES.get(table, 0) + 1
    except TypeError:  # not weakly referenceable: never continue a chain
        pass


def _restore_counts(tables):
    """{table name: restores so far}, or None if one cannot be tracked."""
    counts = {}
    for name, table in tables.items():
        try:
            weakref.ref(table)
        except TypeError:
            return None
        counts[name] = _RESTORES.get(table, 0)
    return counts


def _table_state(table, delta):
    """One snapshot of ``table`` as C-contiguous arrays: whole, or (``delta``)
    what changed since its last ``mark_saved``."""
    state = table.delta_state_dict() if delta else table.state_dict()
    return {field: np.ascontiguousarray(array) for field, array in state.items()}


def _row_fields(state):
    """The fields of a table state aligned with its ``keys`` (values, counts,
    last_seen, ``slots/<optimizer>/<slot>``)."""
    return [field for field in state if field not in _KEY_FIELDS]


def _field_array(var_name, field):
    """The file's array name of a dynamic table's field (``:`` appears in no
    variable, slot or step name the library makes)."""
    return f"{var_name}:{field}"


def apply_table_delta(state, delta):
    """A dynamic table's full state after applying ``delta`` (as from
    ``table.delta_state_dict()``) to ``state`` (as from ``state_dict()``).

    Admitted keys: ``state`` minus the delta's tombstones and every key the
    delta carries, plus the delta's rows (upserts), sorted; pending keys the
    same with ``pending_tombstones``. A key the delta admits leaves the
    pending set and vice versa. Pure NumPy; no table is touched.

    Raises ValueError when the two do not hold the same fields or dtypes.

    >>> import numpy as np
    >>> i64 = lambda *x: np.array(x, np.int64)
    >>> state = {"keys": i64(1, 5), "values": np.ones((2, 1), np.float32),
    ...          "pending_keys": i64(9), "pending_counts": i64(1), "pending_last_seen": i64(0)}
    >>> delta = {"keys": i64(9), "values": np.full((1, 1), 2, np.float32), "tombstones": i64(1),
    ...          "pending_keys": i64(), "pending_counts": i64(), "pending_last_seen": i64(),
    ...          "pending_tombstones": i64()}
    >>> out = apply_table_delta(state, delta)
    >>> out["keys"].tolist(), out["values"][:, 0].tolist(), out["pending_keys"].tolist()
    ([5, 9], [1.0, 2.0], [])
    """
    rows = sorted(_row_fields(state))
    if rows != sorted(_row_fields(delta)):
        raise ValueError(f"the delta holds fields {sorted(_row_fields(delta))}, the state "
                         f"{rows}")
    for field in rows + ["keys"] + list(_PENDING_ROWS):
        if state[field].dtype != delta[field].dtype:
            raise ValueError(f"field {field!r}: dtype {delta[field].dtype} in the delta, "
                             f"{state[field].dtype} in the state")
    gone = np.concatenate([delta["tombstones"], delta["keys"], delta["pending_keys"]])
    out = _upsert(state, delta, "keys", rows, gone)
    gone = np.concatenate([delta["pending_tombstones"], delta["pending_keys"], delta["keys"]])
    out.update(_upsert(state, delta, "pending_keys", _PENDING_ROWS, gone))
    return out


def _upsert(state, delta, key_field, fields, gone):
    keep = ~np.isin(state[key_field], gone)
    keys = np.concatenate([state[key_field][keep], delta[key_field]])
    order = np.argsort(keys, kind="stable")
    out = {key_field: keys[order]}
    for field in fields:
        out[field] = np.ascontiguousarray(
            np.concatenate([state[field][keep], delta[field]])[order])
    return out


def _match_table(table, name, saved, match):
    """Cheap header checks of a dynamic table (its arrays are checked after reading)."""
    if saved.get("embedding_dim") != int(table.embedding_dim):
        match.problems.append(f"dynamic table {name!r}: embedding_dim {saved.get('embedding_dim')} "
                              f"in the checkpoint, {int(table.embedding_dim)} in the model")


def _table_state_problems(table, name, state):
    """What keeps ``table.load_state_dict(state)`` from succeeding, checked
    here so that a restore changes nothing when any table does not fit."""
    where = f"dynamic table {name!r}"
    missing = [f for f in _REQUIRED if f not in state]
    if missing:
        return [f"{where}: fields {missing} are missing"]
    problems = []
    for key_field, fields in (("keys", _row_fields(state)), ("pending_keys", _PENDING_ROWS)):
        keys = state[key_field]
        if keys.dtype != np.int64 or keys.ndim != 1 or (keys.size and (np.diff(keys) <= 0).any()):
            problems.append(f"{where}: {key_field!r} must be sorted unique int64 keys")
            continue
        for field in fields:
            if state[field].ndim < 1 or state[field].shape[0] != keys.shape[0]:
                problems.append(f"{where}: {field!r} has {state[field].shape[:1]} rows, "
                                f"{key_field!r} {keys.shape[0]}")
    values, dim = state["values"], int(table.embedding_dim)
    if values.dtype != np.float32 or values.ndim != 2 or values.shape[1] != dim:
        problems.append(f"{where}: values are {values.dtype} {values.shape}, the table holds "
                        f"float32 rows of {dim}")
    for field in ("counts", "last_seen") + _PENDING_ROWS:
        if state[field].dtype != np.int64:
            problems.append(f"{where}: {field!r} is {state[field].dtype}, not int64")
    for field in _row_fields(state):
        if field.startswith("slots/") and (
                field.count("/") != 2 or state[field].dtype.kind not in "fi"
                or state[field].shape[1:] not in ((), (dim,))):
            problems.append(f"{where}: {field!r} is {state[field].dtype} rows of "
                            f"{state[field].shape[1:]}, not [] or [{dim}] numbers")
    if values.dtype.kind == "f" and not np.isfinite(values).all():
        problems.append(f"{where}: values hold non-finite numbers")
    if not problems and np.intersect1d(state["keys"], state["pending_keys"],
                                       assume_unique=True).size:  # both checked unique
        problems.append(f"{where}: a key is both admitted and pending")
    capacity = getattr(table, "capacity", None)
    if capacity is not None and state["keys"].shape[0] > capacity:
        problems.append(f"{where}: {state['keys'].shape[0]} admitted keys in the checkpoint, "
                        f"capacity {capacity} in the model")
    return problems


def read_table_states(path, names):
    """{table: full state} of the dynamic tables ``names`` saved in the
    checkpoint file ``path``: as saved for a full save, else its delta
    chain's full save and deltas merged in order; every CRC is checked, no
    table is touched. A broken chain raises ``CorruptCheckpointError``
    whose ``bad_file`` names the first file that breaks it."""
    with _CheckpointFile(path) as ckpt:
        return _table_states(ckpt, names)


def _table_states(ckpt, names):
    """``read_table_states`` of an open checkpoint file."""
    dynamic = ckpt.header.get("dynamic", {})
    missing = [name for name in names if name not in dynamic]
    if missing:
        raise CheckpointError(f"checkpoint {ckpt.path} holds no dynamic table {missing}")
    if all(dynamic[name]["kind"] == "full" for name in names):
        return {name: _read_fields(ckpt, name, dynamic[name]) for name in names}
    return _read_chain(ckpt, names)


def _read_fields(ckpt, name, saved):
    """{field: array} of dynamic table ``name`` in an open checkpoint file."""
    return {field: ckpt.read_array(_field_array(name, field)) for field in saved["fields"]}


def _broken(path, why, name=None):
    error = CorruptCheckpointError(f"checkpoint {path}: {why}")
    error.bad_file = os.path.basename(name or path)
    return error


def _read_chain(ckpt, names):
    """{table: full state} for ``ckpt``, a delta: its chain's full save, then
    each delta in order, merged by key (``apply_table_delta``).

    The header's ``"chain"`` is ``{"id", "files", "index"}``: ``files`` names
    the full save and the deltas before this one, in order; each must exist,
    carry the same chain id, its own position as ``index``, the same file
    list before it, and a full table (position 0) or a delta (after). Any
    other case raises ``CorruptCheckpointError`` whose ``bad_file`` names the
    first file that breaks the chain."""
    chain = ckpt.header.get("chain")
    if not isinstance(chain, dict) or not chain.get("files"):
        raise _broken(ckpt.path, "holds deltas of dynamic tables but names no full save "
                                 "to apply them to")
    directory = os.path.dirname(os.path.abspath(ckpt.path))
    files, states = list(chain["files"]), {}
    for index, name in enumerate(files + [None]):
        path = (ckpt.path if name is None
                else entry_path(directory, name, os.path.basename(ckpt.path)))
        try:
            if name is None:
                _merge_link(states, ckpt, names, chain, index)
                continue
            with _CheckpointFile(path) as part:
                _merge_link(states, part, names, chain, index)
        except FileNotFoundError:
            raise _broken(ckpt.path, f"the delta chain it continues is broken: {name} (position "
                                     f"{index}) is missing", name) from None
        except CorruptCheckpointError as error:
            if getattr(error, "bad_file", None) is None:
                error.bad_file = os.path.basename(path)
            raise
    return states


def _merge_link(states, part, names, chain, index):
    """Check that ``part`` is position ``index`` of ``chain``; merge its tables."""
    link = part.header.get("chain")
    if not isinstance(link, dict) or link.get("id") != chain["id"] or link.get("index") != index \
            or list(link.get("files", ())) != list(chain["files"][:index]):
        raise _broken(part.path, f"out of order: expected position {index} of delta chain "
                                 f"{chain['id']}, found {json.dumps(link)}")
    dynamic = part.header.get("dynamic", {})
    for name in names:
        kind = "full" if index == 0 else "delta"
        if dynamic.get(name, {}).get("kind") != kind:
            raise _broken(part.path, f"out of order: dynamic table {name!r} should be a {kind} "
                                     f"save at position {index} of its delta chain")
        fields = _read_fields(part, name, dynamic[name])
        try:
            states[name] = fields if index == 0 else apply_table_delta(states[name], fields)
        except (KeyError, ValueError) as error:
            raise _broken(part.path, f"dynamic table {name!r}: the delta does not apply "
                                     f"({error})") from None


# ------------------------------------------------------------ file writing
def _atomic_write(path, write):
    """Call ``write(f)`` on a temporary file beside ``path``, fsync it and
    rename it over ``path``; on any error the temporary file is removed."""
    path = os.fspath(path)
    directory = os.path.dirname(os.path.abspath(path))
    fd, tmp = tempfile.mkstemp(dir=directory, suffix=".tmp",
                               prefix=f".{os.path.basename(path)}.{_HOST}.{os.getpid()}.")
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise
    _fsync_directory(directory)


def _fsync_directory(directory):
    """Make a rename durable (POSIX); a no-op where directories cannot be opened."""
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _write_checkpoint(f, header, entries):
    """Prefix, header (CRC placeholders), arrays; then the real header and trailer."""
    placeholder = _dumps(header)
    f.write(_PREFIX.pack(MAGIC, len(placeholder)))
    f.write(placeholder)
    data_start = _align(_PREFIX.size + len(placeholder))
    for meta, (_, array) in zip(header["arrays"], entries):
        _pad_to(f, data_start + meta["offset"])
        meta["crc32"] = f"{_write_array(f, array):08x}"
    end = f.tell()
    final = _dumps(header)
    assert len(final) == len(placeholder)  # fixed-width CRCs: same length
    f.seek(_PREFIX.size)
    f.write(final)
    f.seek(end)
    header_crc = zlib.crc32(final, zlib.crc32(_PREFIX.pack(MAGIC, len(final))))
    f.write(_TRAILER.pack(header_crc, 0, end + _TRAILER.size, END_MAGIC))


def _write_array(f, array):
    """Write ``array``'s bytes in chunks straight from its memory; its CRC-32."""
    data = _bytes_view(array)
    crc = 0
    for start in range(0, len(data), CHUNK_BYTES):
        chunk = data[start:start + CHUNK_BYTES]
        f.write(chunk)
        crc = zlib.crc32(chunk, crc)
    return crc


def _pad_to(f, position):
    f.write(b"\0" * (position - f.tell()))


def _dumps(header):
    return json.dumps(header, separators=(",", ":"), ensure_ascii=True,
                      allow_nan=False).encode("ascii")


def _align(n):
    return (n + ALIGN - 1) // ALIGN * ALIGN


def _writable_c_array(array):
    return isinstance(array, np.ndarray) and array.flags.c_contiguous and array.flags.writeable


def _bytes_view(array):
    """A writable-if-possible memoryview of a C-contiguous array's bytes, no copy."""
    return memoryview(array.reshape(-1).view(np.uint8))


# ------------------------------------------------------------ file reading
class _CheckpointFile:
    """An open checkpoint whose prefix, header and trailer have been checked."""

    def __init__(self, path):
        self.path = os.fspath(path)
        self._f = open(self.path, "rb")
        try:
            self.header, self._data_start = _read_header(self._f, self.path)
        except BaseException:
            self._f.close()
            raise
        self._arrays = {a["name"]: a for a in self.header["arrays"]}

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self._f.close()

    def close(self):
        self._f.close()

    def verify(self, names=None):
        """Pass 1: check the CRC of each named array (default: all)."""
        names = list(self._arrays) if names is None else names
        buffer = bytearray(min(CHUNK_BYTES, max([self._arrays[n]["nbytes"] for n in names] + [1])))
        for name in names:
            crc = 0
            for chunk in self._chunks(name, memoryview(buffer)):
                crc = zlib.crc32(chunk, crc)
            self._check_crc(name, crc, "")

    def read_array(self, name):
        """A new array holding ``name``'s bytes, its CRC checked."""
        meta = self._arrays.get(name)
        if meta is None:
            raise CorruptCheckpointError(f"checkpoint {self.path} has no array {name!r}")
        out = np.empty(meta["shape"], np.dtype(meta["dtype"]))
        crc = 0
        for chunk in self._chunks(name, _bytes_view(out), into=True):
            crc = zlib.crc32(chunk, crc)
        self._check_crc(name, crc, "")
        return out

    def read_into(self, name, array):
        """Pass 2: read array ``name`` straight into ``array``'s memory."""
        if not _writable_c_array(array):
            raise ValueError(f"cannot read {name!r} into a read-only or non-contiguous array")
        crc = 0
        for chunk in self._chunks(name, _bytes_view(array), into=True):
            crc = zlib.crc32(chunk, crc)
        self._check_crc(name, crc, " while being restored: the objects are partly restored")

    def _chunks(self, name, buffer, into=False):
        """Read array ``name`` in chunks into ``buffer`` (reused, or filled
        in place when ``into``); yields each filled chunk."""
        meta = self._arrays[name]
        self._f.seek(self._data_start + meta["offset"])
        done = 0
        while done < meta["nbytes"]:
            size = min(CHUNK_BYTES, meta["nbytes"] - done)
            chunk = buffer[done:done + size] if into else buffer[:size]
            got = self._f.readinto(chunk)
            while got < size:
                more = self._f.readinto(chunk[got:])
                if not more:
                    raise CorruptCheckpointError(f"checkpoint {self.path}: array {name!r} "
                                                 f"is cut short")
                got += more
            done += size
            yield chunk

    def _check_crc(self, name, crc, when):
        if f"{crc:08x}" != self._arrays[name]["crc32"]:
            raise CorruptCheckpointError(
                f"checkpoint {self.path} is corrupt: array {name!r} fails its CRC-32 check "
                f"(stored {self._arrays[name]['crc32']}, computed {crc:08x}){when}")


def _read_header(f, path):
    """(header dict, data_start) after checking magic, trailer and header CRC."""
    def corrupt(why):
        return CorruptCheckpointError(f"checkpoint {path} is corrupt or not a checkpoint: {why}")
    size = os.fstat(f.fileno()).st_size
    if size < _PREFIX.size + _TRAILER.size:
        raise corrupt(f"only {size} bytes")
    magic, header_len = _PREFIX.unpack(f.read(_PREFIX.size))
    if magic != MAGIC:
        if magic.startswith(b"{") and str(path).endswith(".manifest.json"):
            raise CheckpointError(f"{path} is the manifest of a sharded (distributed) "
                                  f"checkpoint, not a checkpoint file: restore it with "
                                  f"sparse_train.distributed.restore_sharded or "
                                  f"DistributedCheckpointManager (any number of ranks)")
        raise corrupt(f"bad magic {magic!r}")
    f.seek(size - _TRAILER.size)
    header_crc, _, saved_size, end_magic = _TRAILER.unpack(f.read(_TRAILER.size))
    if end_magic != END_MAGIC or saved_size != size:
        raise corrupt(f"truncated or extended (no end marker for a {size}-byte file)")
    if _PREFIX.size + header_len > size - _TRAILER.size:
        raise corrupt(f"header length {header_len} exceeds the file")
    f.seek(_PREFIX.size)
    raw = f.read(header_len)
    if zlib.crc32(raw, zlib.crc32(_PREFIX.pack(magic, header_len))) != header_crc:
        raise corrupt("the header fails its CRC-32 check")
    try:
        header = json.loads(raw.decode("ascii"))
        version = header["format_version"]
        arrays = [(m["name"], _nbytes(m), m["nbytes"], m["offset"]) for m in header["arrays"]]
    except (ValueError, KeyError, TypeError) as error:
        raise corrupt(f"malformed header ({error!r})") from None
    if version > FORMAT_VERSION:
        raise CheckpointError(f"checkpoint {path} has format version {version}; this "
                              f"sparse_train reads up to {FORMAT_VERSION}")
    data_start = _align(_PREFIX.size + header_len)
    for name, expected, nbytes, offset in arrays:
        if nbytes != expected or data_start + offset + expected > size - _TRAILER.size:
            raise corrupt(f"array {name!r} does not fit the file")
    return header, data_start


def _shard_hint(path):
    """For a shard file of a multi-rank save, what reads it instead."""
    found = re.search(r"\.shard-(\d+)-of-(\d+)\.ckpt$", os.fspath(path))
    if not found or int(found.group(2)) < 2:
        return ""
    return (f" (this is shard {found.group(1)} of {found.group(2)} of a distributed "
            f"checkpoint: restore its manifest with sparse_train.distributed.restore_sharded "
            f"or DistributedCheckpointManager, on any number of ranks)")


def _nbytes(meta):
    """Bytes of a header array entry; ValueError for a dtype that is not plain numbers."""
    dtype = np.dtype(meta["dtype"])
    if dtype.kind not in "biuf" or min(meta["shape"], default=0) < 0:
        raise ValueError(f"array {meta['name']!r}: dtype {dtype} shape {meta['shape']}")
    return int(np.prod(meta["shape"], dtype=np.int64)) * dtype.itemsize


class CheckpointReader:
    """Read-only access to a checkpoint file (TF ``tf.train.load_checkpoint``).

    ``header`` is the parsed JSON header (see the module docstring).

    >>> import tempfile, os
    >>> path = os.path.join(tempfile.mkdtemp(), "c.ckpt")
    >>> _ = Checkpoint([Variable(np.arange(3.0), "w")]).save(path)
    >>> reader = load_checkpoint(path)
    >>> reader.get_variable_to_shape_map(), reader.get_tensor("w").tolist()
    ({'w': (3,)}, [0.0, 1.0, 2.0])
    """

    def __init__(self, path):
        self.path = os.fspath(path)
        with _CheckpointFile(self.path) as ckpt:
            self.header = ckpt.header

    def get_variable_to_shape_map(self):
        """Every array's name -> shape (variables, slots, global step)."""
        return {a["name"]: tuple(a["shape"]) for a in self.header["arrays"]}

    def get_variable_to_dtype_map(self):
        return {a["name"]: np.dtype(a["dtype"]) for a in self.header["arrays"]}

    def get_tensor(self, name):
        """A new array holding ``name``'s saved value, its CRC checked."""
        meta = {a["name"]: a for a in self.header["arrays"]}.get(name)
        if meta is None:
            raise KeyError(f"checkpoint {self.path} has no array {name!r}")
        out = np.empty(meta["shape"], np.dtype(meta["dtype"]))
        with _CheckpointFile(self.path) as ckpt:
            ckpt.read_into(name, out)
        return out

    def verify(self):
        """Check every array's CRC; raises ``CorruptCheckpointError``."""
        with _CheckpointFile(self.path) as ckpt:
            ckpt.verify()


def load_checkpoint(path):
    """A ``CheckpointReader`` for ``path`` (its header checked, not its arrays)."""
    return CheckpointReader(path)


# ------------------------------------------------------------ the manager
class CheckpointManager:
    """Keeps the last ``max_to_keep`` checkpoints of a ``Checkpoint`` in a
    directory (TF ``tf.train.CheckpointManager``).

    Files are ``{checkpoint_name}-{number}.ckpt``, the number being the global
    step (or a counter without one). After each file is written, the
    pointer file ``latest`` (JSON: the latest file and the kept files in
    save order) is replaced atomically, then files beyond ``max_to_keep``
    are deleted; a crash at any point leaves ``latest`` naming a complete
    file. ``restore_latest`` falls back to older files when the latest is
    corrupt, and to the newest file found in the directory (with a warning)
    when the pointer names only missing files.

    The pointer is data: a name in it that is not a plain file name of
    this manager's pattern, or a symlink leading out of the directory, is
    refused with ``CheckpointError`` (see the module docstring). A new
    manager removes the temporary files of a save that died.

    Dynamic tables (``incremental_every=K``, DeepRec's incremental
    checkpoints): every K-th save is full; the K - 1 saves after it write the
    tables' ``delta_state_dict()`` only (changed rows and slots, counts,
    tombstones of evicted keys) with the rest of the state whole, each
    naming the full save and the deltas before it (its chain, in the
    header). ``table.mark_saved()`` runs once a save has committed (file and
    pointer written). A save is full whenever a delta would not be safe: no
    full save by this manager or its ``restore_latest`` yet, a restore made
    by someone else since, the pointer's latest file not the chain's last,
    or other slots than the full save's. ``restore_latest`` restores a delta
    as its full save plus the deltas in order; a missing, out-of-order or
    corrupt file of the chain is named in a warning and the newest
    consistent point before it is restored. Pruning never deletes a file
    that a kept delta needs (those stay listed in ``latest``).

    Args:
        checkpoint: the ``Checkpoint`` to save and restore.
        directory: created if missing.
        max_to_keep: >= 1, or None to keep every file.
        checkpoint_name: file name prefix.
        incremental_every: K >= 1, or None (every save full, like K = 1).

    >>> import tempfile
    >>> step = GlobalStep()
    >>> manager = CheckpointManager(Checkpoint([Variable(np.zeros(2), "w")], global_step=step),
    ...                             tempfile.mkdtemp(), max_to_keep=2)
    >>> for _ in range(3):
    ...     _ = manager.save()
    ...     _ = step.increment()
    >>> [os.path.basename(p) for p in manager.checkpoints]
    ['ckpt-1.ckpt', 'ckpt-2.ckpt']
    >>> os.path.basename(manager.restore_latest()), int(step), manager.latest_step()
    ('ckpt-2.ckpt', 2, 2)
    """

    POINTER = "latest"

    def __init__(self, checkpoint, directory, max_to_keep=5, checkpoint_name="ckpt",
                 incremental_every=None):
        if not isinstance(checkpoint, Checkpoint):
            raise TypeError(f"checkpoint must be a Checkpoint, got {type(checkpoint).__name__}")
        if max_to_keep is not None and (int(max_to_keep) != max_to_keep or max_to_keep < 1):
            raise ValueError(f"max_to_keep must be an integer >= 1 or None, got {max_to_keep!r}")
        self.incremental_every = check_incremental_every(incremental_every)
        self._chain = None  # the delta chain the tables' marks belong to (_continue_chain)
        if not re.fullmatch(r"[\w.-]+", checkpoint_name):
            raise ValueError(f"checkpoint_name must be a plain file name, got {checkpoint_name!r}")
        self.checkpoint = checkpoint
        self.directory = os.fspath(directory)
        self.max_to_keep = max_to_keep
        self.checkpoint_name = checkpoint_name
        if os.path.exists(self.directory) and not os.path.isdir(self.directory):
            raise CheckpointError(f"checkpoint directory {self.directory} is not a directory")
        os.makedirs(self.directory, exist_ok=True)
        remove_stale_temporaries(self.directory, self._owns)

    @property
    def checkpoints(self):
        """Paths of the kept checkpoints that exist, oldest save first."""
        names = self._read_pointer()[1]
        return [p for p in (self._path(n) for n in names) if os.path.exists(p)]

    @property
    def latest_checkpoint(self):
        """Path of the newest checkpoint, or None."""
        candidates = self._candidates()
        return candidates[0] if candidates else None

    def latest_step(self):
        """The number (global step) of the newest checkpoint, or None."""
        latest = self.latest_checkpoint
        return None if latest is None else self._number(os.path.basename(latest))

    def has_checkpoints(self):
        """Whether the directory holds a checkpoint of this manager (or a
        distributed one, which raises ``CheckpointError`` saying so)."""
        return self.latest_checkpoint is not None

    def save(self, checkpoint_number=None, metadata=None):
        """Write a new checkpoint, update ``latest``, drop the oldest; its path."""
        names = self._read_pointer()[1]
        if checkpoint_number is None:
            step = self.checkpoint.global_step
            checkpoint_number = int(step) if step is not None else 1 + max(
                [self._number(n) for n in names] + [0])
        name = f"{self.checkpoint_name}-{int(checkpoint_number)}.ckpt"
        chain = self._next_link(names, name)
        fields, chain = self.checkpoint._save(
            self._path(name), metadata, chain,
            self._chain["fields"] if chain is not None and chain["index"] > 0 else None)
        names = [n for n in names if n != name] + [name]
        kept = kept_names(names, self.max_to_keep, self._chain_files)
        needed = set(kept)
        pointer = _dumps({"latest": name, "checkpoints": kept})
        _atomic_write(os.path.join(self.directory, self.POINTER), lambda f: f.write(pointer))
        self._committed(chain, name, fields)
        for old in names:
            if old not in needed:
                remove_own_file(self.directory, old, MAGIC)
        return os.path.join(self.directory, name)

    # ------------------------------------------------- incremental saves
    def _next_link(self, names, name):
        """The header ``"chain"`` of the save ``name`` (``next_link``)."""
        return next_link(self._chain, self.checkpoint.tables, self.incremental_every,
                         names[-1] if names else None, name)

    def _committed(self, chain, name, fields):
        """After a save is committed: the tables' changes are saved."""
        self._chain = chain_after_save(chain, name, fields, self.checkpoint.tables)

    def _chain_files(self, name):
        """The files the kept checkpoint ``name`` needs to restore (its delta
        chain's), from its header; [] when it is unreadable."""
        try:
            with _CheckpointFile(self._path(name)) as ckpt:
                files = (ckpt.header.get("chain") or {}).get("files", [])
        except (OSError, CheckpointError):
            return []
        return [f for f in files if _plain_name(f) and self._number(f) is not None]

    def restore_latest(self, fallback=True, strict=True):
        """Restore the newest checkpoint; returns its path, or None if there is none.

        With ``fallback`` a corrupt file is reported by a warning and the
        next older one is tried (a failed restore changes nothing, so this is
        safe); without, ``CorruptCheckpointError`` propagates. A checkpoint that
        does not fit the objects always raises.
        """
        error, bad = None, set()
        for path in self._candidates():
            name = os.path.basename(path)
            try:
                if bad.intersection(self._chain_files(name) + [name]):
                    continue  # needs a file already reported
                header = self.checkpoint.restore(path, strict=strict)
            except CorruptCheckpointError as exc:
                if not fallback:
                    raise
                bad_file = getattr(exc, "bad_file", None) or name
                if bad_file not in bad:
                    warnings.warn(f"{exc}; trying an older checkpoint", stacklevel=2)
                bad.add(bad_file)
                error = exc
                continue
            self._restored(header, name)
            return path
        if error is not None:
            raise error
        return None

    def _restored(self, header, name):
        """After restoring ``name``: its chain continues with the next save."""
        for table in self.checkpoint.tables.values():
            table.mark_saved()
        chain = header.get("chain")
        self._chain = (restored_chain(header, list(chain["files"]) + [name],
                                      self.checkpoint.tables)
                       if self.incremental_every and isinstance(chain, dict) else None)

    def _candidates(self):
        """Existing checkpoint paths, newest first: the pointer's; when it
        names only missing files, the directory's own files (warning)."""
        latest, names = self._read_pointer()
        ordered = ([latest] if latest else []) + [n for n in names[::-1] if n != latest]
        found = [p for p in (self._path(n) for n in ordered) if os.path.exists(p)]
        if ordered and not found:
            scanned = sorted(_own_names(self.directory, self._number), key=self._number)[::-1]
            found = [self._path(n) for n in scanned]
            if found:
                warnings.warn(f"{os.path.join(self.directory, self.POINTER)} names only missing "
                              f"files ({', '.join(ordered)}); falling back to the newest "
                              f"checkpoint in the directory, {found[0]}", stacklevel=3)
        if not found:
            self._refuse_distributed()
        return found

    def _read_pointer(self):
        try:
            return read_pointer(self.directory, self.POINTER, self._number)
        except CheckpointError as error:
            if re.fullmatch(r"[\w.-]+\.manifest\.json", getattr(error, "bad_name", "") or ""):
                self._refuse_distributed(always=True)
            raise

    def _refuse_distributed(self, always=False):
        """A directory of sharded (multi-rank) checkpoints: say what reads it."""
        manifests = sorted(n for n in os.listdir(self.directory)
                           if re.fullmatch(re.escape(self.checkpoint_name)
                                           + r"-\d+\.manifest\.json", n))
        if manifests or always:
            raise CheckpointError(
                f"checkpoint directory {self.directory} holds sharded checkpoints of a "
                f"distributed run ({', '.join(manifests) or 'its latest pointer names a manifest'}), "
                f"not single-process ones: restore them with "
                f"sparse_train.distributed.DistributedCheckpointManager (train.py --distributed), "
                f"on any number of ranks (it reshards), or point to another directory")

    def _path(self, name):
        return entry_path(self.directory, name, self.POINTER)

    def _number(self, file_name):
        found = re.fullmatch(re.escape(self.checkpoint_name) + r"-(\d+)\.ckpt", file_name)
        return int(found.group(1)) if found else None

    def _owns(self, file_name):
        return file_name == self.POINTER or self._number(file_name) is not None


# ------------------------------------------------------------ directories
_HOST = re.sub(r"[^A-Za-z0-9-]", "-", socket.gethostname() or "host")[:64] or "host"
#: A temporary file written on another host is stale after this many seconds.
STALE_TEMPORARY_SECONDS = 24 * 3600
_TEMPORARY = re.compile(r"\.(?P<target>[\w.-]+?)\.(?:(?P<host>[A-Za-z0-9-]+)\.(?P<pid>\d+)\.)?"
                        r"[a-z0-9_]{8}\.tmp")


def _plain_name(name):
    return (isinstance(name, str) and name not in ("", ".", "..")
            and re.fullmatch(r"[\w.-]+", name) is not None)


def entry_path(directory, name, pointer_name="latest", links=True):
    """``directory/name`` for a file name read from the directory's own
    files; ``CheckpointError`` unless it is a plain name whose real path
    (symlinks resolved, unless ``links`` is False) lies inside ``directory``."""
    if not _plain_name(name):
        raise CheckpointError(f"{os.path.join(directory, pointer_name)}: {name!r} is not a plain "
                              f"file name; names read from a checkpoint directory must name "
                              f"files inside it")
    path = os.path.join(directory, name)
    if links and os.path.islink(path):
        inside = os.path.realpath(directory)
        if os.path.dirname(os.path.realpath(path)) != inside:
            raise CheckpointError(f"{path} is a symlink leading out of the checkpoint directory "
                                  f"(to {os.path.realpath(path)}); refused")
    return path


def remove_own_file(directory, name, magic):
    """Delete ``directory/name`` (a plain name) if it is a symlink (the link
    only: unlink never follows it) or a regular file starting with
    ``magic``; warn and keep it otherwise."""
    path = entry_path(directory, name, links=False)
    try:
        mode = os.lstat(path).st_mode
        if stat.S_ISREG(mode):
            with open(path, "rb") as f:
                if f.read(len(magic)) != magic:
                    warnings.warn(f"{path} is not a checkpoint file written by sparse_train; "
                                  f"not deleting it", stacklevel=3)
                    return
        elif not stat.S_ISLNK(mode):
            warnings.warn(f"{path} is not a regular file; not deleting it", stacklevel=3)
            return
        os.unlink(path)
    except FileNotFoundError:
        pass


def _own_names(directory, number_of):
    return [n for n in os.listdir(directory) if number_of(n) is not None]


def _process_alive(pid):
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def remove_stale_temporaries(directory, owns):
    """Delete the temporary files of saves that died in ``directory``:
    names ``_atomic_write`` makes for a target ``owns(target)`` accepts,
    written by a process that is gone (this host), over
    ``STALE_TEMPORARY_SECONDS`` ago (another host), or by an older
    version (no host and pid in the name). Returns the names removed."""
    removed = []
    for name in os.listdir(directory):
        found = _TEMPORARY.fullmatch(name)
        if not found or not owns(found.group("target")):
            continue
        path = os.path.join(directory, name)
        try:
            info = os.lstat(path)
            if not stat.S_ISREG(info.st_mode):
                continue
            if found.group("host") == _HOST:
                if _process_alive(int(found.group("pid"))):
                    continue
            elif found.group("host") is not None:
                if time.time() - info.st_mtime < STALE_TEMPORARY_SECONDS:
                    continue
            os.unlink(path)
            removed.append(name)
        except FileNotFoundError:
            pass
    if removed:
        warnings.warn(f"{directory}: removed {len(removed)} temporary file(s) of a save that "
                      f"did not finish ({', '.join(sorted(removed))})", stacklevel=3)
    return removed


class DirectoryLock:
    """An advisory lock file (default ``LOCK``) in a directory, held by one
    process for as long as it runs: an ``flock`` on the file, which holds
    JSON naming the holder's pid, host and start time.

    ``acquire()`` takes it, or raises ``DirectoryLockedError`` naming the
    live holder. The kernel drops the ``flock`` when its process dies (even
    by kill -9), so a lock file left by a dead process is stale: it is taken
    over, with a warning naming that process. ``release()`` (also at exit,
    or leaving a ``with`` block) removes the file.

    >>> import tempfile
    >>> with DirectoryLock(tempfile.mkdtemp()) as lock:
    ...     lock.held
    True
    """

    def __init__(self, directory, name="LOCK"):
        if not _plain_name(name):
            raise ValueError(f"DirectoryLock: name must be a plain file name, got {name!r}")
        self.directory = os.fspath(directory)
        self.path = os.path.join(self.directory, name)
        self.held = False
        self._fd = None

    def acquire(self):
        """Take the lock; ``DirectoryLockedError`` if a live process holds it."""
        import fcntl
        if self.held:
            return self
        for _ in range(10):
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT | getattr(os, "O_NOFOLLOW", 0), 0o644)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError:
                holder = _read_holder(fd)
                os.close(fd)
                raise DirectoryLockedError(
                    f"{self.directory} is in use by {holder} (lock file {self.path}); use "
                    f"another directory, or wait for that run to end") from None
            try:
                same = os.fstat(fd).st_ino == os.stat(self.path).st_ino
            except FileNotFoundError:
                same = False
            if not same:  # released and removed between our open and flock: retry
                os.close(fd)
                continue
            previous = _read_holder(fd)
            if previous is not None:
                warnings.warn(f"{self.path}: taking over the stale lock of {previous}, "
                              f"which is no longer running", stacklevel=2)
            me = json.dumps({"pid": os.getpid(), "host": socket.gethostname(),
                             "started": time.time()}).encode()
            os.ftruncate(fd, 0)
            os.pwrite(fd, me, 0)
            self._fd, self.held = fd, True
            atexit.register(self.release)
            return self
        raise DirectoryLockedError(f"could not take the lock {self.path}")

    def release(self):
        """Remove the lock file and drop the lock (a no-op if not held)."""
        if not self.held:
            return
        import fcntl
        self.held = False
        atexit.unregister(self.release)
        try:
            os.unlink(self.path)  # before unlocking: a waiter re-checks the inode
        except FileNotFoundError:
            pass
        fcntl.flock(self._fd, fcntl.LOCK_UN)
        os.close(self._fd)
        self._fd = None

    def __enter__(self):
        return self.acquire()

    def __exit__(self, *exc):
        self.release()


def _read_holder(fd):
    """'process P on host H' from a lock file's content, or None if empty."""
    raw = os.pread(fd, 4096, 0)
    if not raw:
        return None
    try:
        holder = json.loads(raw.decode("utf-8"))
        return f"process {int(holder['pid'])} on host {holder['host']}"
    except (ValueError, KeyError, TypeError):
        return "an unknown process"


# ------------------------------------------------------------ helpers
def read_pointer(directory, pointer_name, number_of):
    """(latest name or None, kept names oldest first) of a checkpoint
    directory: from its pointer file, or by scanning the directory (names
    whose ``number_of(name)`` is not None) when it is missing or unreadable.

    Every name of the pointer must be a plain file name that ``number_of``
    accepts; otherwise ``CheckpointError`` (its ``bad_name`` the name)."""
    pointer_path = entry_path(directory, pointer_name, pointer_name)  # not a symlink out
    try:
        with open(pointer_path, "rb") as f:
            pointer = json.loads(f.read().decode("ascii"))
        latest, names = pointer["latest"], list(pointer["checkpoints"])
    except FileNotFoundError:
        pass
    except (ValueError, KeyError, TypeError):
        warnings.warn(f"{pointer_path} is unreadable; scanning the directory", stacklevel=4)
    else:
        for name in ([] if latest is None else [latest]) + names:
            if not _plain_name(name) or number_of(name) is None:
                error = CheckpointError(
                    f"{pointer_path} names {name!r}, which is not a checkpoint file name of "
                    f"this directory (a plain name of the manager's pattern); refused: a "
                    f"checkpoint directory's files may only name files inside it")
                error.bad_name = name if isinstance(name, str) else None
                raise error
        return latest, names
    names = sorted(_own_names(directory, number_of), key=number_of)
    return (names[-1] if names else None), names


def _unique_by_name(objects, kind, what):
    """{name: object} in the given order; TypeError / ValueError otherwise."""
    if isinstance(objects, kind):
        objects = [objects]
    by_name = {}
    for obj in objects:
        if not isinstance(obj, kind):
            raise TypeError(f"expected a {kind.__name__} as {what}, got {type(obj).__name__}")
        if obj.name in by_name:
            raise ValueError(f"two {what}s are named {obj.name!r}")
        by_name[obj.name] = obj
    return by_name


def _as_rngs(rng):
    if rng is None:
        return {}
    rngs = {"rng": rng} if isinstance(rng, np.random.Generator) else dict(rng)
    for name, generator in rngs.items():
        if not isinstance(generator, np.random.Generator):
            raise TypeError(f"rng {name!r} must be a numpy Generator, got {type(generator).__name__}")
    return rngs


def _encode(state):
    """A bit-generator state as JSON-safe values (arrays tagged with their dtype)."""
    if isinstance(state, dict):
        return {k: _encode(v) for k, v in state.items()}
    if isinstance(state, np.ndarray):
        return {"__ndarray__": state.tolist(), "dtype": state.dtype.str}
    if isinstance(state, np.generic):
        return state.item()
    return state


def _decode(state):
    if isinstance(state, dict):
        if "__ndarray__" in state:
            return np.array(state["__ndarray__"], dtype=np.dtype(state["dtype"]))
        return {k: _decode(v) for k, v in state.items()}
    return state
