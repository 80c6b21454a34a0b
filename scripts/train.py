#!/usr/bin/env python
"""Train a CTR model on a click log; report validation AUC, logloss and speed.

With no arguments: DeepFM on a synthetic click log generated in memory
(the planted model's AUC is printed beside the model's), under a minute on
2 cores. Every flag can also come from ``--config FILE.toml`` with the same
keys (``batch_size = 4096``); a flag on the command line wins.

Examples:
    python scripts/train.py
    python scripts/train.py --format criteo --data day_0.tsv --valid-fraction 0.1
    python scripts/train.py --format csv --data ratings.csv --schema movielens.toml
    python scripts/train.py --checkpoint-dir runs/a  # later: ... --resume
"""
import argparse
import sys

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

DEFAULTS = {
    "config": None, "data": None, "valid": None, "valid_fraction": 0.1,
    "format": "synthetic", "schema": None, "model": "deepfm", "embedding_dim": 16,
    "hidden_units": "256,128", "batch_size": 512, "epochs": 4,
    "sparse_optimizer": "adagrad_decay", "sparse_learning_rate": 0.3,
    "dense_optimizer": "adam", "dense_learning_rate": 0.0005,
    "accumulator_decay_step": 100_000, "clip_norm": None,
    "ids": "vocabulary", "min_count": 1, "hash_buckets": 1 << 20,
    "on_bad_line": "error", "examples": 400_000, "max_examples": None,
    "num_fields": None, "featindex": None,
    "max_steps": None, "checkpoint_dir": None, "checkpoint_every": 0, "resume": False,
    "keep_checkpoints": 3,
    "seed": 0, "threads": None, "metrics_out": None, "quiet": False,
    "distributed": False,
}


def parse_args(argv):
    """Flags merged over ``--config`` over ``DEFAULTS``."""
    p = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog=__doc__.split("\n\n", 2)[2], argument_default=argparse.SUPPRESS)
    p.add_argument("--config", help="TOML file with any of these keys (underscores)")
    data = p.add_argument_group("data")
    data.add_argument("--data", help="training file(s), comma-separated")
    data.add_argument("--valid", help="validation file (ids from the training data)")
    data.add_argument("--valid-fraction", type=float, help="held out of --data by seed (default 0.1)")
    data.add_argument("--format", choices=("synthetic", "criteo", "libsvm", "libffm", "csv"))
    data.add_argument("--schema", help="TOML schema of a csv/tsv file (--format csv)")
    data.add_argument("--ids", choices=("vocabulary", "hash"), help="feature ids (default vocabulary)")
    data.add_argument("--min-count", type=int, help="vocabulary: rarer tokens share the OOV id")
    data.add_argument("--hash-buckets", type=int, help="hash: buckets a feature")
    data.add_argument("--on-bad-line", choices=("error", "skip"))
    data.add_argument("--num-fields", type=int,
                      help="libsvm: pair k of a row is field k; libffm: number of fields")
    data.add_argument("--featindex", help="libsvm: field:value<TAB>index file naming the fields")
    data.add_argument("--examples", type=int, help="synthetic: examples generated (default 400000)")
    data.add_argument("--max-examples", type=int, help="read at most this many rows a pass")
    model = p.add_argument_group("model")
    model.add_argument("--model", choices=("lr", "fm", "wide_deep", "deepfm", "dcn", "dlrm"))
    model.add_argument("--embedding-dim", type=int)
    model.add_argument("--hidden-units", help="MLP widths, e.g. 400,400,400")
    train = p.add_argument_group("training")
    train.add_argument("--batch-size", type=int)
    train.add_argument("--epochs", type=int)
    train.add_argument("--sparse-optimizer",
                       choices=("adagrad", "adagrad_decay", "lazy_adam", "rowwise_adagrad", "sgd"))
    train.add_argument("--sparse-learning-rate", type=float)
    train.add_argument("--dense-optimizer", choices=("adam", "adagrad", "sgd"))
    train.add_argument("--dense-learning-rate", type=float)
    train.add_argument("--accumulator-decay-step", type=int, help="adagrad_decay period in steps")
    train.add_argument("--clip-norm", type=float, help="clip gradients by global norm")
    train.add_argument("--max-steps", type=int, help="stop when the global step reaches this")
    train.add_argument("--seed", type=int)
    train.add_argument("--threads", type=int, help="Numba threads (default: all cores)")
    out = p.add_argument_group("output")
    out.add_argument("--checkpoint-dir", help="save a checkpoint after each epoch here")
    out.add_argument("--checkpoint-every", type=int, help="also every N steps (0: epochs only)")
    out.add_argument("--keep-checkpoints", type=int)
    out.add_argument("--resume", action="store_true", help="continue from --checkpoint-dir")
    out.add_argument("--metrics-out", help="write auc, logloss, samples_per_second as JSON")
    out.add_argument("--quiet", action="store_true", help="no progress bar")
    train.add_argument("--distributed", action="store_true",
                       help="under mpirun: shard tables over the ranks (docs/DISTRIBUTED.md)")
    given = vars(p.parse_args(argv))
    options = dict(DEFAULTS)
    if given.get("config"):
        options.update(read_config(given["config"]))
    options.update(given)
    return argparse.Namespace(**options)


def read_config(path):
    try:
        with open(path, "rb") as f:
            config = tomllib.load(f)
    except FileNotFoundError:
        raise SystemExit(f"error: config file {path} does not exist") from None
    except tomllib.TOMLDecodeError as error:
        raise SystemExit(f"error: config file {path}: {error}") from None
    config = {key.replace("-", "_"): value for key, value in config.items()}
    unknown = sorted(set(config) - set(DEFAULTS) - {"config"})
    if unknown:
        raise SystemExit(f"error: config file {path}: unknown key(s) {unknown}; "
                         f"keys are {sorted(set(DEFAULTS) - {'config'})}")
    return config


def open_data(args):
    """(train, valid) datasets; everything checkable is checked before training."""
    from sparse_train.data import open_dataset

    common = dict(batch_size=args.batch_size, on_bad_line=args.on_bad_line)
    extra = {}
    if args.format == "synthetic":
        if args.data:
            raise SystemExit("error: --format synthetic takes no --data")
        dataset = open_dataset(format="synthetic", num_examples=args.examples,
                               seed=args.seed, **common)
    else:
        if not args.data:
            raise SystemExit(f"error: --format {args.format} needs --data PATH")
        paths = [p for p in str(args.data).split(",") if p]
        extra = {k: getattr(args, k) for k in ("num_fields", "featindex")
                 if getattr(args, k) is not None}
        dataset = open_dataset(paths, args.format, schema=args.schema, ids=args.ids,
                               min_count=args.min_count, hash_buckets=args.hash_buckets,
                               max_examples=args.max_examples, **common, **extra)
    if args.valid:
        return dataset, open_dataset(args.valid, args.format, schema=args.schema, like=dataset,
                                     max_examples=args.max_examples, **common, **extra)
    if not 0.0 < args.valid_fraction < 1.0:
        raise SystemExit(f"error: --valid-fraction must be in (0, 1), got {args.valid_fraction}")
    return dataset.split(args.valid_fraction, seed=args.seed)


def build(args, spec, train_data=None):
    """Model, optimizers and global step from the options; the logit bias
    starts at the log-odds of ``train_data``'s click rate (a checkpoint, if
    resumed, overrides it)."""
    import sparse_train as st

    options = {}
    if args.hidden_units:
        units = args.hidden_units
        units = tuple(int(u) for u in units.split(",")) if isinstance(units, str) else tuple(units)
        accepted = st.models.model_options(args.model)
        key = "hidden_units" if "hidden_units" in accepted else "top_mlp" if "top_mlp" in accepted else None
        if key is not None:
            options[key] = units
        elif args.hidden_units != DEFAULTS["hidden_units"]:
            raise SystemExit(f"error: --hidden-units: model {args.model!r} has no MLP")
    model = st.build_model(args.model, spec, embedding_dim=args.embedding_dim, seed=args.seed,
                           **options)
    if train_data is not None:
        model.init_logit_bias(base_rate(train_data))
    global_step = st.GlobalStep()
    sparse_options = ({"accumulator_decay_step": args.accumulator_decay_step}
                      if args.sparse_optimizer == "adagrad_decay" else {})
    sparse = st.optim.build_optimizer(args.sparse_optimizer, args.sparse_learning_rate,
                                      global_step, name="sparse", **sparse_options)
    dense = st.optim.build_optimizer(args.dense_optimizer, args.dense_learning_rate,
                                     global_step, name="dense")
    return model, sparse, dense, global_step


def base_rate(dataset, rows=200_000):
    """Click rate of the first ``rows`` training examples."""
    clicks = count = 0
    for batch in dataset.batches():
        clicks, count = clicks + float(batch.labels.sum()), count + batch.size
        if count >= rows:
            break
    return clicks / count if count else 0.5


def train(args):
    import sparse_train as st

    if args.threads:
        import numba
        numba.set_num_threads(args.threads)
    say = (lambda *a: None) if args.quiet else (lambda *a: print(*a, file=sys.stderr, flush=True))
    train_data, valid_data = open_data(args)
    spec = train_data.spec
    model, sparse_opt, dense_opt, global_step = build(args, spec, train_data)
    say(f"model {args.model}: {sum(v.value.size for v in model.sparse_variables()):,} embedding "
        f"and {sum(v.value.size for v in model.dense_variables()):,} dense parameters; "
        f"{len(spec.sparse_features)} categorical and {spec.num_dense} numeric features")
    manager, start_epoch, skip_batches = None, 0, 0
    if args.checkpoint_dir:
        checkpoint = st.Checkpoint(model.variables(), [sparse_opt, dense_opt], global_step)
        manager = st.CheckpointManager(checkpoint, args.checkpoint_dir,
                                       max_to_keep=args.keep_checkpoints)
        if args.resume:
            path = manager.restore_latest()
            if path is None:
                say(f"no checkpoint in {args.checkpoint_dir}: starting afresh")
            else:
                header = st.checkpoint.load_checkpoint(path).header
                start_epoch = header["metadata"]["epoch"]
                skip_batches = header["metadata"]["batches_done"]
                say(f"resumed at epoch {start_epoch + 1}, batch {skip_batches}, "
                    f"global step {int(global_step)}")
    elif args.resume:
        raise SystemExit("error: --resume needs --checkpoint-dir")

    transform = None
    if args.clip_norm:
        transform = lambda grads: st.clip_gradients(grads, args.clip_norm)[0]  # noqa: E731
    result = st.models.fit(
        train_data, valid_data,
        lambda batch: st.train_step(model, batch, sparse_opt, dense_opt, global_step, transform),
        lambda batches: st.models.evaluate(model, batches), global_step,
        epochs=args.epochs, seed=args.seed, start_epoch=start_epoch, skip_batches=skip_batches,
        manager=manager, checkpoint_every=args.checkpoint_every, max_steps=args.max_steps,
        say=say, progress=None if args.quiet else sys.stderr)
    result.update(model=args.model, format=args.format)
    st.models.report(result, say, args.metrics_out)
    return result


def main(argv=None):
    args = parse_args(argv)
    from sparse_train.checkpoint import CheckpointError
    from sparse_train.data import DataError
    try:
        if args.distributed:  # every rank runs this; a failing rank ends the whole job
            from sparse_train.distributed import run_distributed
            run_distributed(args, open_data, build)
        else:
            train(args)
    except (DataError, CheckpointError, FileNotFoundError, ValueError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("\ninterrupted", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
