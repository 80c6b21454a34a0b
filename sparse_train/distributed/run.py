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
from ..training.loop import check_resume, fit, resume_point
from .checkpoint import DistributedCheckpointManager
from .comm import world
from .model import DistributedModel
from .sharding import local_batch

__all__ = ["train_distributed"]


def train_distributed(model, train_data, valid_data, sparse_optimizer, dense_optimizer,
                      global_step, *, epochs, seed=0, clip_norm=None, checkpoint_dir=None,
                      keep_checkpoints=5, resume=False, checkpoint_every=0, max_steps=None,
                      run=None, say=None, warn=None, progress=None, flag=lambda key: key,
                      comm=None):
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
        resume: restore the latest checkpoint of ``checkpoint_dir`` first
            (none there: a warning, then a fresh start).
        say, warn: message printers (None: silent); pass printing ones on
            rank 0 only. progress: stream of the progress bars, or None.
        flag: ``flag(key)`` names a ``run`` option in a refused resume's
            message (``check_resume``).
    """
    comm = world() if comm is None else comm
    say, warn = say or (lambda *a: None), warn or (lambda *a: None)
    if resume and not checkpoint_dir:
        raise ValueError("resume needs a checkpoint directory")
    total_rows = sum(v.value.size for v in model.sparse_variables())
    dist = DistributedModel(model, comm)
    say(f"distributed over {comm.size} ranks: model {model.name}, {total_rows:,} embedding "
        f"parameters sharded by id mod {comm.size} "
        f"(this rank holds {sum(v.value.size for v in dist.sparse_variables()):,}), "
        f"{sum(v.value.size for v in dist.dense_variables()):,} dense parameters replicated")
    manager, start = None, {}
    if checkpoint_dir:
        manager = DistributedCheckpointManager(dist, [sparse_optimizer, dense_optimizer],
                                               global_step, checkpoint_dir,
                                               max_to_keep=keep_checkpoints)
        if resume:
            start = _resume(manager, run, flag, global_step, say, warn, checkpoint_dir)
    result = fit(
        train_data, valid_data,
        lambda batch: dist.train_step(local_batch(batch, comm), sparse_optimizer,
                                      dense_optimizer, global_step, clip_norm=clip_norm),
        lambda batches: dist.evaluate(local_batch(b, comm) for b in batches), global_step,
        epochs=epochs, seed=seed, **start, manager=manager, checkpoint_every=checkpoint_every,
        max_steps=max_steps, run=run, say=say, progress=progress)
    result.update(world_size=comm.size, communication_seconds=_gathered_timings(dist))
    return result


def _resume(manager, run, flag, global_step, say, warn, checkpoint_dir):
    """``fit`` arguments to continue from the latest checkpoint ({} if none)."""
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
