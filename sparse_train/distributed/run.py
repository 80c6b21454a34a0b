"""The ``--distributed`` path of ``scripts/train.py``.

It mirrors ``train()`` of the script (same flags, progress, metrics JSON,
checkpoint metadata); keep the two loops in step when either changes.

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
import json
import sys
import time
from pathlib import Path

import numpy as np

from ..checkpoint import CheckpointError
from ..data import DataError
from ..progress import Progress
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
    say = (lambda *a: None) if args.quiet or not lead else (
        lambda *a: print(*a, file=sys.stderr, flush=True))
    train_data, valid_data = open_data(args)
    model, sparse_opt, dense_opt, global_step = build(args, train_data.spec, train_data)
    total_rows = sum(v.value.size for v in model.sparse_variables())
    dist = DistributedModel(model, comm)
    say(f"distributed over {comm.size} ranks: model {args.model}, {total_rows:,} embedding "
        f"parameters sharded by id mod {comm.size} "
        f"(this rank holds {sum(v.value.size for v in dist.sparse_variables()):,}), "
        f"{sum(v.value.size for v in dist.dense_variables()):,} dense parameters replicated")
    manager, start_epoch, skip_batches = _checkpoints(args, dist, sparse_opt, dense_opt,
                                                      global_step, say)
    history, examples, seconds, stopped = [], 0, 0.0, False
    max_steps = getattr(args, "max_steps", None)
    for epoch in range(start_epoch, args.epochs):
        bar = Progress(train_data.num_examples, f"epoch {epoch + 1}/{args.epochs}", unit="ex",
                       file=None if args.quiet or not lead else sys.stderr)
        loss_sum, loss_count, batches_done = 0.0, 0, 0
        started = time.perf_counter()
        for batch in train_data.batches(shuffle=True, seed=args.seed * 1000 + epoch):
            if batches_done < skip_batches:
                batches_done += 1
                bar.update(batch.size)
                continue
            loss = dist.train_step(local_batch(batch, comm), sparse_opt, dense_opt, global_step,
                                   clip_norm=args.clip_norm or None)
            if not np.isfinite(loss):
                raise ValueError(f"the loss became {loss} at step {int(global_step)}; lower the "
                                 f"learning rates or set --clip-norm")
            loss_sum, loss_count = loss_sum + loss * batch.size, loss_count + batch.size
            batches_done += 1
            bar.update(batch.size, loss=loss_sum / loss_count)
            if manager and args.checkpoint_every and int(global_step) % args.checkpoint_every == 0:
                manager.save(int(global_step), {"epoch": epoch, "batches_done": batches_done})
            if max_steps and int(global_step) >= max_steps:
                stopped = True
                break
        seconds += time.perf_counter() - started
        examples += loss_count
        skip_batches = 0
        bar.close()
        if stopped:
            say(f"stopped at global step {int(global_step)} (--max-steps)")
            break
        figures = dist.evaluate(local_batch(b, comm) for b in valid_data.batches())
        figures.update(epoch=epoch + 1, train_loss=loss_sum / max(loss_count, 1))
        history.append(figures)
        say(f"epoch {epoch + 1}: train loss {figures['train_loss']:.4f}  valid auc "
            f"{figures['auc']:.4f}  logloss {figures['logloss']:.4f}")
        if manager:
            manager.save(int(global_step), {"epoch": epoch + 1, "batches_done": 0})
    result = dict(history[-1]) if history else dist.evaluate(
        local_batch(b, comm) for b in valid_data.batches())
    result.update(samples_per_second=examples / seconds if seconds else None,
                  global_step=int(global_step), history=history, model=args.model,
                  format=args.format, world_size=comm.size,
                  communication_seconds=_gathered_timings(dist))
    planted = getattr(valid_data, "planted_auc", None)
    if planted is not None:
        result["planted_auc"] = planted
        say(f"planted model's auc on the validation data: {planted:.4f} "
            f"(the best any model can do)")
    skipped = sum(getattr(d, "skipped_lines", 0) or 0 for d in (train_data, valid_data))
    if skipped:
        say(f"skipped {skipped} malformed line(s)")
        result["skipped_lines"] = skipped
    say(f"validation auc {result['auc']:.4f}, logloss {result['logloss']:.4f}, "
        + (f"{result['samples_per_second']:,.0f} samples/s on {comm.size} ranks"
           if result["samples_per_second"] else "no training this run"))
    if args.metrics_out and lead:
        path = Path(args.metrics_out)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(result, indent=2, default=float) + "\n")
    return result


def _checkpoints(args, dist, sparse_opt, dense_opt, global_step, say):
    """(manager or None, start epoch, batches to skip) after an optional resume."""
    if not args.checkpoint_dir:
        if args.resume:
            raise ValueError("--resume needs --checkpoint-dir")
        return None, 0, 0
    manager = DistributedCheckpointManager(dist, [sparse_opt, dense_opt], global_step,
                                           args.checkpoint_dir, max_to_keep=args.keep_checkpoints)
    if not args.resume:
        return manager, 0, 0
    path = manager.restore_latest()
    if path is None:
        say(f"no checkpoint in {args.checkpoint_dir}: starting afresh")
        return manager, 0, 0
    manifest = manager.manifest(path)
    metadata = manifest["metadata"]
    say(f"resumed from {path} (saved by {manifest['world_size']} rank(s)) at epoch "
        f"{metadata['epoch'] + 1}, batch {metadata['batches_done']}, "
        f"global step {int(global_step)}")
    return manager, metadata["epoch"], metadata["batches_done"]


def _gathered_timings(dist):
    """Seconds in each kind of collective, the largest over ranks."""
    mine = {k: float(v) for k, v in dist.timings.items()}
    everyone = dist.comm.allgather(mine)
    return {k: max(t.get(k, 0.0) for t in everyone) for k in sorted(mine)}
