"""The ``--distributed`` path of ``scripts/train.py``.

It shares the epoch loop of ``train()`` of the script (``models.fit``: same
flags, progress, metrics JSON, checkpoint metadata).

``mpirun -n W python -m mpi4py scripts/train.py --distributed [flags]``: every
rank opens the same data and builds the same model with the script's own
``open_data`` and ``build`` (so every flag means what it means in one
process), then trains it as a ``DistributedModel``: each global batch of
``--batch-size`` examples is split over the ranks, so the run follows the
single-process run's steps. Rank 0 prints progress and writes the metrics
JSON; checkpoints are sharded (``DistributedCheckpointManager``) and
``--resume`` restores them on any world size, or a single-process run's
checkpoints. A rank that fails ends the job (``fail_fast``).

Every rank reads and parses the whole data stream and keeps its slices
(simple, and the global batches are exactly those of one process); with
large files that reading is repeated on every rank.
"""
import sys

from ..checkpoint import CheckpointError
from ..data import DataError
from ..models.fit import check_resume, fit, report, resume_point
from .checkpoint import DistributedCheckpointManager
from .comm import world
from .faults import DistributedError, fail_fast
from .model import DistributedModel
from .sharding import local_batch

__all__ = ["run_distributed"]


def run_distributed(args, open_data, build, comm=None):
    """Train as ``scripts/train.py`` does, on every rank of ``comm`` (default
    ``world()``); returns the result dict on every rank. Any error on any
    rank ends the job (exit code 2 for a user error, 1 otherwise)."""
    comm = world() if comm is None else comm
    expected = (DataError, CheckpointError, FileNotFoundError, ValueError, DistributedError)
    with fail_fast(comm, expected=expected):
        return _train(args, open_data, build, comm)


def _train(args, open_data, build, comm):
    if args.threads:
        import numba
        numba.set_num_threads(args.threads)
    lead = comm.rank == 0
    say, warn = _printers(args.quiet, lead)
    train_data, valid_data = open_data(args)
    train_data.build_ids(progress=None if args.quiet or not lead else sys.stderr)
    model, sparse_opt, dense_opt, global_step = build(args, train_data.spec, train_data)
    total_rows = sum(v.value.size for v in model.sparse_variables())
    dist = DistributedModel(model, comm)
    say(f"distributed over {comm.size} ranks: model {args.model}, {total_rows:,} embedding "
        f"parameters sharded by id mod {comm.size} "
        f"(this rank holds {sum(v.value.size for v in dist.sparse_variables()):,}), "
        f"{sum(v.value.size for v in dist.dense_variables()):,} dense parameters replicated")
    manager, start = _checkpoints(args, dist, sparse_opt, dense_opt, global_step, say, warn)
    result = fit(
        train_data, valid_data,
        lambda batch: dist.train_step(local_batch(batch, comm), sparse_opt, dense_opt,
                                      global_step, clip_norm=args.clip_norm or None),
        lambda batches: dist.evaluate(local_batch(b, comm) for b in batches), global_step,
        epochs=args.epochs, seed=args.seed, **start, manager=manager, checkpoint_every=args.checkpoint_every,
        max_steps=getattr(args, "max_steps", None), run=getattr(args, "batches", None),
        say=say,
        progress=None if args.quiet or not lead else sys.stderr)
    result.update(model=args.model, format=args.format, world_size=comm.size,
                  communication_seconds=_gathered_timings(dist))
    report(result, say, args.metrics_out if lead else None, f" on {comm.size} ranks", warn)
    return result


def _printers(quiet, lead):
    """(say, warn) as in ``scripts/train.py``: rank 0 only; ``say`` is
    silent with ``--quiet``, ``warn`` is not."""
    def warn(*a):
        if lead:
            print(*a, file=sys.stderr, flush=True)
    return ((lambda *a: None) if quiet else warn), warn


def _checkpoints(args, dist, sparse_opt, dense_opt, global_step, say, warn):
    """(manager or None, ``fit`` arguments to resume from) after an
    optional resume."""
    if not args.checkpoint_dir:
        if args.resume:
            raise ValueError("--resume needs --checkpoint-dir")
        return None, {}
    manager = DistributedCheckpointManager(dist, [sparse_opt, dense_opt], global_step,
                                           args.checkpoint_dir, max_to_keep=args.keep_checkpoints)
    if not args.resume:
        return manager, {}
    path = manager.restore_latest()
    if path is None:
        warn(f"no checkpoint in {args.checkpoint_dir}: starting afresh")
        return manager, {}
    manifest = manager.manifest(path)
    check_resume(manifest["metadata"], getattr(args, "batches", None),
                 lambda key: "--" + key.replace("_", "-"))
    start = resume_point(manifest["metadata"])
    say(f"resumed from {path} (saved by {manifest['world_size']} rank(s)) at epoch "
        f"{start['start_epoch'] + 1}, batch {start['skip_batches']}, "
        f"global step {int(global_step)}")
    return manager, start


def _gathered_timings(dist):
    """Seconds in each kind of collective, the largest over ranks."""
    mine = {k: float(v) for k, v in dist.timings.items()}
    everyone = dist.comm.allgather(mine)
    return {k: max(t.get(k, 0.0) for t in everyone) for k in sorted(mine)}
