"""``train_distributed``: the epoch loop (``training.fit``) on every rank of
an MPI job, with sharded checkpoints.

``scripts/train.py --distributed`` opens the data and builds the model on
every rank (the same model, same seed) and hands them here: the model is
trained as a ``DistributedModel``, each global batch split over the ranks,
so the run follows the single-process run's steps. Checkpoints are sharded
(``DistributedCheckpointManager``) and a resume restores them on any world
size, or a single-process run's checkpoints.

Every rank reads and parses the whole data stream and keeps its slices
(simple, and the global batches are exactly those of one process); with
large files that reading is repeated on every rank.
"""
from ..checkpoint import check_incremental_every
from ..training.loop import check_resume, fit, resume_point
from ..training.schedule import CheckpointState, EarlyStopping, MemoryState, ReduceLROnPlateau
from .checkpoint import DistributedCheckpointManager, restore_sharded, save_sharded
from .comm import world
from .model import DistributedModel
from .sharding import local_batch

__all__ = ["train_distributed"]


def train_distributed(model, train_data, valid_data, sparse_optimizer, dense_optimizer,
                      global_step, *, epochs, seed=0, clip_norm=None, checkpoint_dir=None,
                      keep_checkpoints=5, resume=False, checkpoint_every=0, max_steps=None,
                      run=None, say=None, warn=None, progress=None, flag=lambda key: key,
                      comm=None, l2_embedding=0.0, l2_dense=0.0, eval_every_steps=0,
                      early_stopping_patience=0, early_stopping_metric="auc",
                      early_stopping_min_delta=0.0, lr_decay_factor=None, lr_decay_patience=0,
                      min_learning_rate=0.0, early_stopping_patience_steps=0,
                      incremental_every=None):
    """Shard ``model`` over ``comm`` (default ``world()``) and train it with
    ``training.fit``; returns ``fit``'s result dict plus ``world_size`` and
    ``communication_seconds`` (the largest over ranks), on every rank.

    Every rank calls it with the same model (same options and seed), the
    same data and the same options; a collective call.

    Args:
        model: a ``CTRModel`` (sharded in place: ``DistributedModel``).
        train_data, valid_data: ``Dataset``s, whole on every rank.
        sparse_optimizer, dense_optimizer, global_step: as ``train_step``.
        epochs, seed, checkpoint_every, max_steps, run: as ``fit``.
        clip_norm: clip by the global norm of all ranks' gradients, or None.
        checkpoint_dir: where sharded checkpoints go (None: none saved);
            ``keep_checkpoints`` of them are kept.
        incremental_every: K: every K-th save is full, the saves between
            write only each rank's changed rows of its dynamic tables and
            tombstones (``DistributedCheckpointManager``); None: all full.
        resume: restore the latest checkpoint of ``checkpoint_dir`` first
            (none there: a warning, then a fresh start).
        say, warn: message printers (None: silent); pass printing ones on
            rank 0 only. progress: stream of the progress bars, or None.
        flag: ``flag(key)`` names a ``run`` option in a refused resume's
            message (``check_resume``).
        l2_embedding, l2_dense: the L2 penalty (``training.l2_regularize``).
        eval_every_steps: as ``fit``.
        early_stopping_patience: > 0 stops after that many evaluations
            without improvement of ``early_stopping_metric`` ("auc" or
            "logloss") by more than ``early_stopping_min_delta`` (and at
            least ``early_stopping_patience_steps`` steps after the best), and
            restores the best state (``training.EarlyStopping``); the best
            state is a sharded ``best-<step>`` checkpoint in
            ``checkpoint_dir`` (a resume finds it), else each rank's copy
            in memory.
        lr_decay_factor: in (0, 1): reduce both learning rates on a plateau
            (``training.ReduceLROnPlateau`` with ``lr_decay_patience`` and
            ``min_learning_rate``); None: off.
    """
    comm = world() if comm is None else comm
    say, warn = say or (lambda *a: None), warn or (lambda *a: None)
    if resume and not checkpoint_dir:
        raise ValueError("resume needs a checkpoint directory")
    check_incremental_every(incremental_every)
    total_rows = sum(v.value.size for v in model.sparse_variables())
    dist = DistributedModel(model, comm)
    say(f"distributed over {comm.size} ranks: model {model.name}, {total_rows:,} embedding "
        f"parameters sharded by id mod {comm.size} "
        f"(this rank holds {sum(v.value.size for v in dist.sparse_variables()):,}), "
        f"{sum(v.value.size for v in dist.dense_variables()):,} dense parameters replicated")
    optimizers = [sparse_optimizer, dense_optimizer]
    options = {"eval_every_steps": eval_every_steps}
    if lr_decay_factor:
        options["lr_schedule"] = ReduceLROnPlateau(
            optimizers, lr_decay_factor, lr_decay_patience, min_learning_rate,
            early_stopping_metric, early_stopping_min_delta)
    if early_stopping_patience:
        options["early_stopping"] = EarlyStopping(early_stopping_patience, early_stopping_metric,
                                                  early_stopping_min_delta,
                                                  early_stopping_patience_steps)
        options["best_state"] = (
            CheckpointState(checkpoint_dir,
                            lambda prefix: save_sharded(*_split(prefix), dist, optimizers,
                                                        global_step),
                            lambda prefix: restore_sharded(prefix + ".manifest.json", dist,
                                                           optimizers, global_step),
                            lead=comm.rank == 0, suffix=".manifest.json")
            if checkpoint_dir else MemoryState(
                lambda: dist.variables() + [v for o in optimizers for v in o.variables()],
                global_step))
    manager, start = None, {}
    if checkpoint_dir:
        manager = DistributedCheckpointManager(dist, optimizers, global_step, checkpoint_dir,
                                               max_to_keep=keep_checkpoints,
                                               incremental_every=incremental_every)
        if resume:
            start = _resume(manager, run, flag, global_step, say, warn, checkpoint_dir,
                            options.get("lr_schedule"))
    result = fit(
        train_data, valid_data,
        lambda batch: dist.train_step(local_batch(batch, comm), sparse_optimizer,
                                      dense_optimizer, global_step, clip_norm=clip_norm,
                                      l2_embedding=l2_embedding, l2_dense=l2_dense),
        lambda batches: dist.evaluate(local_batch(b, comm) for b in batches), global_step,
        epochs=epochs, seed=seed, **start, manager=manager, checkpoint_every=checkpoint_every,
        max_steps=max_steps, run=run, say=say, progress=progress, **options)
    result.update(world_size=comm.size, communication_seconds=_gathered_timings(dist))
    return result


def _split(prefix):
    import os
    return os.path.dirname(prefix), os.path.basename(prefix)


def _resume(manager, run, flag, global_step, say, warn, checkpoint_dir, lr_schedule=None):
    """``fit`` arguments to continue from the latest checkpoint ({} if none);
    a plateau schedule's rates are set first (the restore then sees the
    hyperparameters it saved)."""
    if lr_schedule is not None:
        comm = manager.comm
        latest = comm.bcast(manager._candidates() if comm.rank == 0 else None)
        if latest:
            saved = (manager.manifest(latest[0])["metadata"].get("schedules") or {}).get(
                "lr_schedule")
            if saved:
                lr_schedule.set_learning_rates(saved["learning_rates"])
    path = manager.restore_latest()
    if path is None:
        warn(f"no checkpoint in {checkpoint_dir}: starting afresh")
        return {}
    manifest = manager.manifest(path)
    check_resume(manifest["metadata"], run, flag)
    start = resume_point(manifest["metadata"])
    say(f"resumed from {path} (saved by {manifest['world_size']} rank(s)) at epoch "
        f"{start['start_epoch'] + 1}, batch {start['skip_batches']}, "
        f"global step {int(global_step)}")
    return start


def _gathered_timings(dist):
    """Seconds in each kind of collective, the largest over ranks."""
    mine = {k: float(v) for k, v in dist.timings.items()}
    everyone = dist.comm.allgather(mine)
    return {k: max(t.get(k, 0.0) for t in everyone) for k in sorted(mine)}


def run_distributed(*args, **kwargs):
    """Removed: it took ``scripts/train.py``'s argparse Namespace, and the
    library reads no command line. Run ``scripts/train.py --distributed``
    under mpirun, or call ``train_distributed`` with plain keyword arguments.
    The name stays importable so old imports fail with this message, not an
    ImportError."""
    raise TypeError("sparse_train.distributed.run_distributed was removed: use "
                    "`mpirun -n N python -m mpi4py scripts/train.py --distributed` or "
                    "sparse_train.distributed.train_distributed(model, train_data, valid_data, "
                    "sparse_optimizer, dense_optimizer, global_step, epochs=...)")
