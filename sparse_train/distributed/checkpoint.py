"""Sharded checkpoints: one file per rank, a manifest, restore on any world size.

A save is collective. Each rank writes ``{prefix}.shard-{r}-of-{W}.ckpt``, a
regular ``sparse_train.checkpoint`` file (atomic: temporary file, fsync,
rename) holding its table shards, their slots, and the replicated dense
variables, optimizer state and global step. When every rank has written
its file, rank 0 writes ``{prefix}.manifest.json`` (atomically) naming the
world size, the shard files and the tables' global row counts; a save is
complete once its manifest exists. ``DistributedCheckpointManager`` keeps a
``latest`` pointer to manifests, like ``CheckpointManager``.

Restore is collective too. On the world size of the save, each rank reads
its own shard file (every CRC checked before anything changes). On another
world size the checkpoint is resharded: every rank reads each old shard's
arrays (one array in memory at a time) and keeps the rows it now owns
(``id mod W``); replicated state comes from shard 0. A dynamic table (its
``DynamicVariable`` among the variables) is saved whole by each rank (the
keys it owns, with their slots and counts); on another world size every
rank concatenates the old shards' states and keeps the keys
``dynamic.key_owner`` gives it. A plain single-process
checkpoint file restores the same way, as a world of one.

Incremental saves (``DistributedCheckpointManager(incremental_every=K)``):
a delta's shard r holds rank r's tables' ``delta_state_dict()`` and names,
in its header's ``"chain"``, shard r of the chain's full save and earlier
deltas (``sparse_train.checkpoint``'s delta chain, one per rank); the
manifest's ``"chain"`` names their manifests. On the same world size each
rank restores its own chain; on another, each rank merges every old rank's
chain (``checkpoint.read_table_states``) before keeping its keys. The directory
must be visible to every rank at the same path (a shared file system on
several hosts).

Names in the manifest and the pointer are data: each must be a plain file
name of the expected pattern in the directory (shard r of W is
``*.shard-r-of-W.ckpt``); anything else, or a symlink out of the directory,
is refused with ``CheckpointError``, and pruning deletes only the exact
names a save of that prefix writes.

If any rank fails, every rank raises (``CheckpointError``, or
``CorruptCheckpointError`` when a file is damaged), so none is left waiting.
"""
import json
import os
import re
import warnings
import zlib

import numpy as np

from ..checkpoint import (MAGIC, Checkpoint, CheckpointError, CheckpointReader, read_pointer,
                          CorruptCheckpointError, _atomic_write, _dumps, entry_path,
                          load_optimizer_state_dict, remove_own_file, remove_stale_temporaries,
                          _table_of, _table_state_problems, _count_restore, _plain_name,
                          chain_after_save, check_incremental_every, kept_names, new_chain,
                          next_link, read_table_states, restored_chain)
from .dynamic import reshard_table_states
from .faults import DistributedError
from .sharding import owned_ids, shard_size

__all__ = ["save_sharded", "restore_sharded", "DistributedCheckpointManager",
           "MANIFEST_FORMAT"]

MANIFEST_FORMAT = "sparse_train.sharded_checkpoint"
MANIFEST_VERSION = 1


def shard_file(prefix, rank, world_size):
    return f"{prefix}.shard-{rank}-of-{world_size}.ckpt"


def manifest_file(prefix):
    return f"{prefix}.manifest.json"


def save_sharded(directory, prefix, dist, optimizers, global_step=None, metadata=None):
    """Write this rank's shard and (rank 0) the manifest; collective.

    Args:
        directory: shared directory (created if missing).
        prefix: file name prefix, e.g. ``"ckpt-100"``.
        dist: the ``DistributedModel``.
        optimizers: the optimizers training it (their state is saved).
        global_step: optional ``GlobalStep``.
        metadata: optional JSON-serialisable dict (stored in every file).

    Returns:
        the manifest's path (on every rank).

    Also checks that the dense replicas are still identical on every rank
    (CRC-32 of each dense variable), raising ``DistributedError`` if not.
    """
    return _save_shards(directory, prefix, dist, optimizers, global_step, metadata)[0]


def _save_shards(directory, prefix, dist, optimizers, global_step, metadata, link=None,
                 delta_fields=None):
    """``save_sharded`` as a link of a delta chain (``DistributedCheckpointManager``).

    ``link`` is the manifest's ``"chain"`` (``{"id", "files", "index"}``,
    files: the manifests of the chain's full save and deltas before this
    one) or None; each rank's shard gets the same chain over its own shard
    files. With ``delta_fields`` (this rank's {table: row fields of the
    chain's full save}) every rank writes its tables' deltas, unless one
    cannot (fields changed): then every rank writes whole tables, as a new
    chain's full save. Returns (manifest path, this rank's {table: row
    fields}, the manifest's chain)."""
    comm = dist.comm
    _check_replicas(dist)
    os.makedirs(directory, exist_ok=True)
    name = shard_file(prefix, comm.rank, comm.size)
    checkpoint = _collective(comm, "save", lambda: Checkpoint(dist.variables(), optimizers,
                                                              global_step))
    snapshot = _collective(comm, "save", lambda: checkpoint.snapshot(delta_fields))
    if delta_fields is not None and not all(comm.allgather(snapshot.delta)):
        if snapshot.delta:  # another rank's fields changed: all save whole tables
            snapshot = _collective(comm, "save", checkpoint.snapshot)
        else:
            _collective(comm, "save", lambda: None)
        link = comm.bcast(new_chain() if comm.rank == 0 else None)
    shard_link = None if link is None else {
        "id": link["id"], "index": link["index"],
        "files": [shard_file(_prefix_of(n), comm.rank, comm.size) for n in link["files"]]}
    _collective(comm, "save", lambda: checkpoint.write(os.path.join(directory, name), snapshot,
                                                       metadata, shard_link))
    manifest = {
        "format": MANIFEST_FORMAT, "format_version": MANIFEST_VERSION,
        "world_size": comm.size, "sharding": "row id mod world_size",
        "shards": [shard_file(prefix, r, comm.size) for r in range(comm.size)],
        "tables": {t.name: t.num_embeddings for t in dist.tables.values()},
        "dynamic_tables": {v.name: "key_owner: splitmix64(key) mod world_size"
                           for v in dist.variables() if _table_of(v) is not None},
        "global_step": None if global_step is None else int(global_step),
        "metadata": {} if metadata is None else metadata,
    }
    if link is not None:
        manifest["chain"] = link
    path = os.path.join(directory, manifest_file(prefix))
    _collective(comm, "save", lambda: comm.rank == 0 and _atomic_write(
        path, lambda f: f.write(_dumps(manifest))))
    return path, snapshot.fields, link


def _prefix_of(manifest_name):
    return manifest_name[:-len(".manifest.json")]


def restore_sharded(path, dist, optimizers, global_step=None):
    """Restore a sharded checkpoint (its manifest's path) or a single-process
    checkpoint file into ``dist``, ``optimizers`` and ``global_step``;
    collective. Returns the manifest (dict; for a plain file, one made up
    with ``world_size`` 1 and the file's metadata).

    Same world size: each rank restores its own shard file (strict; every
    rank checks its file, a delta's chain included, every CRC, before any
    rank changes anything). Another world size: resharded (module docstring).
    """
    return _restore_shards(path, dist, optimizers, global_step)[0]


def _restore_shards(path, dist, optimizers, global_step, fallback=False):
    """``restore_sharded``; returns (manifest, this rank's shard header when
    each rank restored its own shard of the same world size, else None).
    With ``fallback`` (``restore_latest``) a missing shard is reported as
    corrupt (``CorruptCheckpointError`` naming it), so an older save is tried."""
    comm = dist.comm
    manifest = _collective(comm, "restore", lambda: _read_manifest(path) if comm.rank == 0
                           else None, root_result=True)
    _check_tables(manifest, dist, path)
    directory = os.path.dirname(os.path.abspath(path))
    shards = [entry_path(directory, name, os.path.basename(path)) for name in manifest["shards"]]
    present = _present if fallback else (lambda shard: shard)
    if manifest["world_size"] == comm.size:  # every rank checks before any rank changes
        prepared = []
        try:
            _collective(comm, "restore", lambda: prepared.append(Checkpoint(
                dist.variables(), optimizers, global_step).prepare_restore(
                    present(shards[comm.rank]))))
        except CheckpointError:
            for restore in prepared:
                restore.abandon()
            raise
        return manifest, _collective(comm, "restore", prepared[0].commit)
    _collective(comm, "restore", lambda: _reshard([present(s) for s in shards], manifest, dist,
                                                  optimizers, global_step))
    return manifest, None


def _present(path):
    """``path``, or ``CorruptCheckpointError`` naming it when a shard of a
    complete save (its manifest written) is gone."""
    if not os.path.exists(path):
        error = CorruptCheckpointError(f"checkpoint shard {path} is missing")
        error.bad_file = os.path.basename(path)
        raise error
    return path


class DistributedCheckpointManager:
    """Keeps the last ``max_to_keep`` sharded checkpoints in ``directory``
    (``CheckpointManager`` for ``DistributedModel``); collective.

    Files: ``{checkpoint_name}-{number}.shard-{r}-of-{W}.ckpt`` and
    ``{checkpoint_name}-{number}.manifest.json``; the pointer ``latest``
    (JSON: the latest manifest and the kept ones, oldest first) is replaced
    atomically by rank 0 after the manifest, then older checkpoints' files
    are deleted. ``restore_latest`` falls back to older checkpoints when a
    file is corrupt or missing, on every rank together.

    Incremental checkpoints (``incremental_every=K``, as
    ``CheckpointManager``'s): every K-th save is full; the saves between
    write, on each rank, only its dynamic tables' changed rows and
    tombstones (``delta_state_dict``), the rest whole. The manifest's
    ``"chain"`` (``{"id", "files", "index"}``) names the manifests of the
    chain's full save and the deltas before it; shard r's header names the
    same saves' shard r files. A save is full whenever a delta is not safe
    (see ``CheckpointManager``; the ranks agree on it). Restore on the same
    world size merges each rank's own chain (``Checkpoint.restore``); on
    another one (or in one process) every rank merges each old rank's chain,
    then keeps the keys it owns. A missing, out-of-order or corrupt file is
    named in a warning and the newest consistent point before it restored.
    Pruning keeps every file a kept delta needs.

    Args:
        dist: the ``DistributedModel`` (or an object with its ``comm``,
            ``variables()``, ``dense_variables()`` and ``tables``).
        optimizers, global_step: saved and restored with it.
        directory: shared by every rank (created if missing).
        max_to_keep: >= 1, or None to keep every checkpoint.
        checkpoint_name: file name prefix.
        incremental_every: K >= 1, or None (every save full).
    """

    POINTER = "latest"

    def __init__(self, dist, optimizers, global_step, directory, max_to_keep=5,
                 checkpoint_name="ckpt", incremental_every=None):
        if max_to_keep is not None and (int(max_to_keep) != max_to_keep or max_to_keep < 1):
            raise ValueError(f"max_to_keep must be an integer >= 1 or None, got {max_to_keep!r}")
        if not re.fullmatch(r"[\w.-]+", checkpoint_name):
            raise ValueError(f"checkpoint_name must be a plain file name, got {checkpoint_name!r}")
        self.incremental_every = check_incremental_every(incremental_every)
        self._chain = None  # the delta chain the tables' marks belong to (next_link)
        self.dist, self.optimizers, self.global_step = dist, list(optimizers), global_step
        self.directory = os.fspath(directory)
        self.max_to_keep = max_to_keep
        self.checkpoint_name = checkpoint_name
        os.makedirs(self.directory, exist_ok=True)
        if self.comm.rank == 0:  # no rank saves before rank 0 answers save's bcast
            remove_stale_temporaries(self.directory, self._owns)

    @property
    def comm(self):
        return self.dist.comm

    @property
    def _tables(self):
        """{variable name: dynamic table} of this rank."""
        return {v.name: _table_of(v) for v in self.dist.variables() if _table_of(v) is not None}

    def save(self, checkpoint_number=None, metadata=None):
        """Write a new sharded checkpoint (a delta with ``incremental_every``
        when safe), update ``latest``, drop the oldest; returns the
        manifest's path."""
        names = self.comm.bcast(self._read_pointer()[1] if self.comm.rank == 0 else None)
        if checkpoint_number is None:
            checkpoint_number = int(self.global_step) if self.global_step is not None else 1 + max(
                [self._number(n) for n in names] + [0])
        prefix = f"{self.checkpoint_name}-{int(checkpoint_number)}"
        link = self._next_link(names, manifest_file(prefix))
        delta = link is not None and link["index"] > 0
        path, fields, link = _save_shards(self.directory, prefix, self.dist, self.optimizers,
                                          self.global_step, metadata, link,
                                          self._chain["fields"] if delta else None)
        name = os.path.basename(path)
        names = [n for n in names if n != name] + [name]
        _collective(self.comm, "save", lambda: self.comm.rank == 0 and self._update_pointer(
            name, names))
        if self.incremental_every:
            self._chain = chain_after_save(link, name, fields, self._tables)
        return path

    def _next_link(self, names, name):
        """The manifest ``"chain"`` of the save ``name`` (``next_link``),
        the same on every rank: a delta only if every rank may continue."""
        link = next_link(self._chain, self._tables, self.incremental_every,
                         names[-1] if names else None, name)
        if link is None:
            return None
        if all(self.comm.allgather(link["index"] > 0)):
            return link
        return self.comm.bcast(new_chain() if self.comm.rank == 0 else None)

    def restore_latest(self):
        """Restore the newest complete checkpoint (older ones if it is
        corrupt or a file it needs is missing: a warning names the file);
        returns its manifest path, or None if there is none."""
        candidates = self.comm.bcast(self._candidates() if self.comm.rank == 0 else None)
        error, bad = None, set()
        for path in candidates:
            name = os.path.basename(path)
            needs = self.comm.bcast(self._chain_files(name) if self.comm.rank == 0 else None)
            if bad.intersection(needs + [name]):
                continue  # needs a file already reported
            try:
                manifest, header = _restore_shards(path, self.dist, self.optimizers,
                                                   self.global_step, fallback=True)
            except CorruptCheckpointError as exc:
                broken = {self._entry_of(f) for f in getattr(exc, "bad_files", ())} or {name}
                if broken - bad:
                    warnings.warn(f"{exc}; trying an older checkpoint", stacklevel=2)
                bad |= broken
                error = exc
                continue
            self._restored(manifest, header, name)
            return path
        if error is not None:
            raise error
        return None

    def _restored(self, manifest, header, name):
        """After restoring ``name``: its chain continues with the next save
        when each rank restored its own shard (same world size)."""
        self._chain = None
        if not self.incremental_every:
            return
        tables = self._tables
        for table in tables.values():
            table.mark_saved()
        if header is not None and isinstance(manifest.get("chain"), dict) \
                and isinstance(header.get("chain"), dict):
            self._chain = restored_chain(header, list(manifest["chain"]["files"]) + [name],
                                         tables)

    def latest_step(self):
        """The number (global step) of the newest checkpoint, or None (every rank)."""
        candidates = self.comm.bcast(self._candidates() if self.comm.rank == 0 else None)
        return self._number(os.path.basename(candidates[0])) if candidates else None

    def has_checkpoints(self):
        """Whether the directory holds a checkpoint of this manager (every rank)."""
        return self.latest_step() is not None

    def manifest(self, path):
        """The manifest (dict) at ``path``, read on rank 0 and shared."""
        return _collective(self.comm, "restore", lambda: _read_manifest(path) if self.comm.rank == 0
                           else None, root_result=True)

    # ------------------------------------------------------------ rank 0
    def _candidates(self):
        latest, names = self._read_pointer()
        ordered = ([latest] if latest else []) + [n for n in names[::-1] if n != latest]
        found = [p for p in (self._path(n) for n in ordered) if os.path.exists(p)]
        if ordered and not found:
            scanned = sorted((n for n in os.listdir(self.directory)
                              if n.endswith(".manifest.json") and self._number(n) is not None),
                             key=self._number)[::-1]
            found = [self._path(n) for n in scanned]
            if found:
                warnings.warn(f"{os.path.join(self.directory, self.POINTER)} names only missing "
                              f"files ({', '.join(ordered)}); falling back to the newest "
                              f"checkpoint in the directory, {found[0]}", stacklevel=3)
        return found

    def _path(self, name):
        return entry_path(self.directory, name, self.POINTER)

    def _owns(self, file_name):
        return (file_name == self.POINTER or self._number(file_name) is not None
                or re.fullmatch(re.escape(self.checkpoint_name) + r"-\d+\.shard-\d+-of-\d+\.ckpt",
                                file_name) is not None)

    def _entry_of(self, file_name):
        """The pointer entry (manifest) a shard file belongs to."""
        found = re.fullmatch(r"([\w.-]+)\.shard-\d+-of-\d+\.ckpt", file_name or "")
        return manifest_file(found.group(1)) if found else file_name

    def _chain_files(self, name):
        """The pointer entries the kept checkpoint ``name`` needs (its delta
        chain's manifests), from its manifest; [] when it is unreadable."""
        if not name.endswith(".manifest.json"):
            return []
        try:
            files = (_read_manifest(self._path(name)).get("chain") or {}).get("files", [])
        except (OSError, CheckpointError, AttributeError):
            return []
        return [f for f in files if _plain_name(f) and self._number(f) is not None]

    def _update_pointer(self, latest, names):
        """Point ``latest`` at the newest save, keep the last ``max_to_keep``
        and every save their chains need; delete the others' files."""
        kept = kept_names(names, self.max_to_keep, self._chain_files)
        needed = set(kept)
        pointer = _dumps({"latest": latest, "checkpoints": kept})
        _atomic_write(os.path.join(self.directory, self.POINTER), lambda f: f.write(pointer))
        for name in names:
            if name not in needed:
                for file in self._files_of(name):
                    remove_own_file(self.directory, file,
                                    MAGIC if file.endswith(".ckpt") else b"{")
        return True

    def _files_of(self, name):
        """The files a save wrote for pointer entry ``name``, manifest last:
        only the exact names ``save_sharded`` gives that prefix."""
        if not name.endswith(".manifest.json"):
            return [name]
        prefix = name[:-len(".manifest.json")]
        try:
            world_size = _read_manifest(self._path(name))["world_size"]
        except (OSError, CheckpointError):
            return [name]
        return [shard_file(prefix, r, world_size) for r in range(world_size)] + [name]

    def _read_pointer(self):
        return read_pointer(self.directory, self.POINTER, self._number)

    def _number(self, file_name):
        found = re.fullmatch(re.escape(self.checkpoint_name) + r"-(\d+)\.(manifest\.json|ckpt)",
                             file_name)
        return int(found.group(1)) if found else None


# ----------------------------------------------------------------- helpers
def _collective(comm, what, action, root_result=False):
    """Run ``action`` on every rank; if it raised anywhere, raise on every
    rank (``CorruptCheckpointError`` if every failure was one, else
    ``CheckpointError``) naming the failed ranks, its ``bad_files`` the
    files their errors named as broken. Returns the action's result (rank
    0's when ``root_result``)."""
    result, failure = None, None
    try:
        result = action()
    except (OSError, ValueError, KeyError) as exc:  # CheckpointError is a ValueError
        failure = (isinstance(exc, CorruptCheckpointError), f"{type(exc).__name__}: {exc}",
                   getattr(exc, "bad_file", None))
    failures = comm.allgather(failure)
    bad = [(rank, f) for rank, f in enumerate(failures) if f is not None]
    if bad:
        kind = CorruptCheckpointError if all(f[0] for _, f in bad) else CheckpointError
        error = kind(f"checkpoint {what} failed on "
                     + "; ".join(f"rank {rank}: {f[1]}" for rank, f in bad))
        error.bad_files = sorted({f[2] for _, f in bad if f[2]})  # the files that broke
        raise error
    return comm.bcast(result) if root_result else result


def _read_manifest(path):
    """The manifest at ``path``; a plain checkpoint file reads as a world of one."""
    path = os.fspath(path)
    if not path.endswith(".json"):
        header = CheckpointReader(path).header
        return {"format": MANIFEST_FORMAT, "format_version": MANIFEST_VERSION, "world_size": 1,
                "shards": [os.path.basename(path)], "tables": None,
                "global_step": (header["global_step"] or {}).get("value"),
                "metadata": header.get("metadata", {})}
    try:
        with open(path, "rb") as f:
            manifest = json.loads(f.read().decode("utf-8"))
        if manifest.get("format") != MANIFEST_FORMAT:
            raise CheckpointError(f"{path} is not a sparse_train sharded checkpoint manifest")
        if manifest["format_version"] > MANIFEST_VERSION:
            raise CheckpointError(f"{path} has manifest version {manifest['format_version']}; "
                                  f"this sparse_train reads up to {MANIFEST_VERSION}")
        _check_shard_names(path, manifest)
        return manifest
    except (ValueError, KeyError, TypeError) as error:
        if isinstance(error, CheckpointError):
            raise
        raise CorruptCheckpointError(f"manifest {path} is unreadable: {error!r}") from None


def _check_shard_names(path, manifest):
    """Shard r of W must be a plain name ``*.shard-r-of-W.ckpt`` (TypeError,
    KeyError for a malformed manifest; CheckpointError for a bad name)."""
    world_size, shards = manifest["world_size"], manifest["shards"]
    if isinstance(world_size, bool) or not isinstance(world_size, int) or world_size < 1:
        raise TypeError(f"world_size {world_size!r} is not a positive integer")
    if not isinstance(shards, list) or len(shards) != world_size:
        raise TypeError(f"shards must list {world_size} file names")
    for rank, name in enumerate(shards):
        if not (isinstance(name, str) and re.fullmatch(
                r"[\w.-]+\.shard-" + f"{rank}-of-{world_size}" + r"\.ckpt", name)):
            raise CheckpointError(
                f"manifest {path}: shard {rank} is {name!r}, not a plain file name "
                f"'<prefix>.shard-{rank}-of-{world_size}.ckpt' of its directory; refused: "
                f"a checkpoint directory's files may only name files inside it")


def _check_tables(manifest, dist, path):
    """The checkpoint's tables must be the model's, with the same row counts."""
    saved = manifest.get("tables")
    if saved is None:
        return  # a single-process file: Checkpoint's own checks apply
    mine = {t.name: t.num_embeddings for t in dist.tables.values()}
    if saved != mine:
        diff = sorted(f"{name}: {saved.get(name)} rows saved, {mine.get(name)} in the model"
                      for name in set(saved) | set(mine) if saved.get(name) != mine.get(name))
        raise CheckpointError(f"checkpoint {path} does not fit the model's tables: "
                              + "; ".join(diff))


def _reshard(shards, manifest, dist, optimizers, global_step):
    """Read every old shard and keep this rank's rows (see module docstring).

    Every array is read (CRCs checked) and checked against the model before
    anything changes.
    """
    comm, old_size = dist.comm, manifest["world_size"]
    readers = [CheckpointReader(path) for path in shards]
    first = readers[0].header
    tables = {t.name: t.num_embeddings for t in dist.tables.values()}

    def fetch(array, var_name):
        if var_name not in tables:
            return readers[0].get_tensor(array)
        return _gather_rows(readers, array, tables[var_name], old_size, comm.rank, comm.size)

    values, dynamic = {}, {}
    for var in dist.variables():
        if var.name not in first["variables"]:
            raise CheckpointError(f"checkpoint {shards[0]} has no variable {var.name!r}")
        if _table_of(var) is not None:
            dynamic[var.name] = _reshard_table(shards, var, comm.rank, comm.size)
            continue
        values[var.name] = fetch(var.name, var.name)
        if values[var.name].shape != var.shape:
            raise CheckpointError(f"variable {var.name!r}: shape {values[var.name].shape} "
                                  f"after resharding, {var.shape} in the model")
    states = []
    saved = {o["name"]: o for o in first["optimizers"]}
    for opt in optimizers:
        if opt.name not in saved:
            raise CheckpointError(f"checkpoint {shards[0]} has no optimizer {opt.name!r}")
        if saved[opt.name]["class"] != type(opt).__name__:
            raise CheckpointError(f"optimizer {opt.name!r} is a {type(opt).__name__}, the "
                                  f"checkpoint holds a {saved[opt.name]['class']}'s state")
        state = {array: readers[0].get_tensor(array)
                 for array in saved[opt.name]["non_slot"].values()}
        for var_name, _, array in saved[opt.name]["slots"]:
            state[array] = fetch(array, var_name)
        states.append((opt, state))
    dynamic_names = set(dynamic)
    step = first["global_step"]
    if global_step is not None and step is None:
        raise CheckpointError(f"checkpoint {shards[0]} has no global step")
    for opt, state in states:
        load_optimizer_state_dict(opt, state, [v for v in dist.variables()
                                               if v.name not in dynamic_names],
                                  keep=lambda var_name: var_name in dynamic_names)
    for var in dist.variables():
        if var.name in dynamic:
            var.table.load_state_dict(dynamic[var.name])
            _count_restore(var.table)
        else:
            var.assign(values[var.name])
    if global_step is not None:
        global_step.assign(step["value"])


def _reshard_table(shards, var, rank, size):
    """This rank's state of the dynamic table ``var`` from every old shard's
    state (a full save, or a delta merged with its chain: ``read_table_states``),
    keeping the keys ``key_owner`` gives it; checked against the table."""
    parts = [read_table_states(path, [var.name])[var.name] for path in shards]
    state = reshard_table_states(parts, rank, size)
    problems = _table_state_problems(var.table, var.name, state)
    if problems:
        raise CheckpointError(f"{shards[0]}: " + "; ".join(problems))
    return state


def _gather_rows(readers, array, num_embeddings, old_size, rank, size):
    """The rows of ``array`` (a table or one of its row slots) that ``rank``
    of ``size`` owns, read from the shards of a world of ``old_size``."""
    out = None
    for old_rank, reader in enumerate(readers):
        part = reader.get_tensor(array)
        expected = shard_size(num_embeddings, old_rank, old_size)
        if part.shape[0] != expected:
            raise CheckpointError(f"{reader.path}: {array!r} has {part.shape[0]} rows, shard "
                                  f"{old_rank} of {old_size} of a {num_embeddings}-row table "
                                  f"has {expected}")
        if out is None:  # zeros: a placeholder row (see sharding.shard_size) stays 0
            out = np.zeros((shard_size(num_embeddings, rank, size),) + part.shape[1:], part.dtype)
        ids = owned_ids(num_embeddings, old_rank, old_size)
        mine = ids % size == rank
        out[ids[mine] // size] = part[:ids.shape[0]][mine]
    return out


def _check_replicas(dist):
    """Dense variables must be bit-identical on every rank."""
    crcs = [zlib.crc32(v.value.tobytes()) for v in dist.dense_variables()]
    everyone = dist.comm.allgather(crcs)
    for rank, theirs in enumerate(everyone):
        if theirs != crcs:
            names = [v.name for v, a, b in zip(dist.dense_variables(), crcs, theirs) if a != b]
            raise DistributedError(f"dense variables {names} differ between rank "
                                   f"{dist.comm.rank} and rank {rank}: the replicas diverged")
