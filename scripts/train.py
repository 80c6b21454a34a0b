#!/usr/bin/env python
"""Train a CTR model on a click log; report validation AUC, logloss and speed.

With no arguments: DeepFM on a synthetic click log generated in memory
(the planted model's AUC is printed beside the model's), trained until the
validation AUC stops improving (early stopping; about 20 s on 2 cores once
the kernels are compiled). Every flag can also come from ``--config
FILE.toml`` with the same keys (``batch_size = 4096``); a flag on the
command line wins.

Bad flags and config values fail before any data is read (exit code 2);
Ctrl-C or SIGTERM stops after the current step, saving a checkpoint when
``--checkpoint-dir`` is given (exit code 130), and ``--resume`` continues
from it as if never stopped. One run at a time per --checkpoint-dir (a lock
file); one already holding checkpoints needs --resume or --overwrite.
Output paths are checked before any data is read. The samples/s reported
time the training steps from the run's second step on (the first compiles
the kernels on a first run, about 10 s; they are cached afterwards).

Examples:
    python scripts/train.py
    python scripts/train.py --format criteo --data day_0.tsv --valid-fraction 0.1
    python scripts/train.py --format csv --data ratings.csv --schema movielens.toml
    python scripts/train.py --format parquet --data 'day_*.parquet' --label click
    python scripts/train.py --checkpoint-dir runs/a  # later: ... --resume
    python scripts/train.py --predict-out valid.txt --export-onnx model.onnx
    python scripts/train.py --format criteo --data day_0.tsv --ids dynamic --filter-freq 2 \
        --steps-to-live 100000            # raw ids, dynamic tables (README "Dynamic tables")
"""
import argparse
import math
import os
import sys

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

DEFAULTS = {
    "config": None, "data": None, "valid": None, "valid_fraction": 0.1,
    "format": "synthetic", "schema": None, "model": "deepfm", "embedding_dim": 16,
    "hidden_units": "256,128", "batch_size": 512, "epochs": 200,
    "sparse_optimizer": "adagrad_decay", "sparse_learning_rate": 0.5,
    "dense_optimizer": "auto", "dense_learning_rate": 0.001,
    "accumulator_decay_step": 100_000, "clip_norm": None,
    "ids": "vocabulary", "min_count": 1, "hash_buckets": 1 << 20,
    "on_bad_line": "error", "numeric_transform": "log1p", "examples": 400_000,
    "max_examples": None, "num_fields": None, "featindex": None,
    "max_steps": None, "checkpoint_dir": None, "checkpoint_every": 0, "resume": False,
    "keep_checkpoints": 3, "incremental_every": None,
    "seed": 0, "threads": None, "blas_threads": "auto", "metrics_out": None, "quiet": False,
    "distributed": False, "label": None, "overwrite": False, "predict_out": None,
    "export_onnx": None, "export_vocabulary": False,
    "early_stopping_patience": 3, "early_stopping_patience_steps": 50,
    "early_stopping_metric": "auc", "early_stopping_min_delta": 0.0,
    "eval_every_steps": 0, "lr_decay_factor": None, "lr_decay_patience": 0,
    "min_learning_rate": 0.0, "l2_embedding": 0.0, "l2_dense": 0.0,
    "ftrl_l1": 0.0, "ftrl_l2": 0.0, "normalizer": None,
    "filter_freq": 0, "steps_to_live": None, "l2_weight_threshold": None, "evict_every_steps": 0,
    "table_dtype": "float32", "rounding": "nearest",
    **{key: None for key in ("max_vocabulary_size", "max_line_bytes", "max_fields",
                             "max_bag_length", "max_index")},
}

#: Limits on what a data file may make us allocate (the readers' defaults:
#: data.vocabulary.MAX_VOCABULARY_SIZE, data._lines.MAX_LINE_BYTES,
#: data.libsvm.MAX_FIELDS / MAX_BAG_LENGTH / MAX_INDEX; None keeps them):
#: flag -> (default shown in --help, what it bounds).
DATA_LIMITS = {
    "max_vocabulary_size": (1 << 27, "ids in one feature's vocabulary (--ids dynamic: keys "
                            "admitted to one table, its capacity)"),
    "max_line_bytes": (64 << 20, "bytes in one line of a text file"),
    "max_fields": (1000, "libffm: field numbers (largest + 1)"),
    "max_bag_length": (1 << 20, "libsvm / libffm: pairs in one row"),
    "max_index": ((1 << 26) - 1, "libsvm --featindex: the largest index"),
}


#: --normalizer and --numeric-transform choices (data/numeric.py NORMALIZERS).
NORMALIZER_CHOICES = ("none", "log1p", "standard", "minmax", "log_standard")

#: Optimizer names of --sparse-optimizer and --dense-optimizer.
SPARSE_OPTIMIZERS = ("adagrad", "adagrad_decay", "lazy_adam", "rowwise_adagrad", "sgd", "ftrl")
DENSE_OPTIMIZERS = ("auto", "adam", "adagrad", "sgd", "ftrl")


class UsageError(ValueError):
    """A bad flag or config value: reported as ``error: ...``, exit code 2,
    before any data is read."""


def _parser():
    p = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog=__doc__.split("\n\n", 2)[2], argument_default=argparse.SUPPRESS)
    p.add_argument("--config", help="TOML file with any of these keys (underscores)")
    data = p.add_argument_group("data")
    data.add_argument("--data", help="training file(s), comma-separated; globs such as "
                      "'day_*.gz' expand in sorted order")
    data.add_argument("--valid", help="validation file (ids from the training data)")
    data.add_argument("--valid-fraction", type=float, help="held out of --data by seed")
    data.add_argument("--format", choices=("synthetic", "criteo", "libsvm", "libffm", "csv",
                                           "parquet"))
    data.add_argument("--schema", help="TOML schema of a csv/tsv file (--format csv), or of "
                      "parquet columns (optional: default the Arrow types)")
    data.add_argument("--label", help="parquet without --schema: the label column")
    data.add_argument("--ids", choices=("vocabulary", "hash", "dynamic"),
                      help="feature ids; dynamic: raw int64 keys (integers as they are, strings "
                      "by a fixed 64-bit hash) into dynamic tables, no vocabulary pass")
    data.add_argument("--min-count", type=int, help="vocabulary: rarer tokens share the OOV id")
    data.add_argument("--hash-buckets", type=int, help="hash: buckets a feature")
    data.add_argument("--on-bad-line", choices=("error", "skip"))
    data.add_argument("--numeric-transform", choices=NORMALIZER_CHOICES,
                      help="criteo: the normalizer of I1..I13; log1p: log(1 + x) for x > 0, "
                      "else 0")
    data.add_argument("--normalizer", choices=NORMALIZER_CHOICES,
                      help="csv/parquet: normalizer of numeric columns whose schema declares "
                      "none (default log_standard)")
    data.add_argument("--num-fields", type=int,
                      help="libsvm: pair k of a row is field k; libffm: number of fields")
    data.add_argument("--featindex", help="libsvm: field:value<TAB>index file naming the fields")
    data.add_argument("--examples", type=int, help="synthetic: examples generated")
    data.add_argument("--max-examples", type=int, help="files: read at most this many rows a pass")
    for key, (default, what) in DATA_LIMITS.items():
        data.add_argument("--" + key.replace("_", "-"), type=int,
                          help=f"refuse data needing more {what} (default {default:,})")
    model = p.add_argument_group("model")
    model.add_argument("--model", choices=("lr", "fm", "wide_deep", "deepfm", "dcn", "dlrm"))
    model.add_argument("--embedding-dim", type=int)
    model.add_argument("--hidden-units", help="MLP widths, e.g. 400,400,400")
    dynamic = p.add_argument_group("dynamic tables (--ids dynamic; DeepRec EmbeddingVariable)")
    dynamic.add_argument("--filter-freq", type=int, help="admit a key at its N-th occurrence in "
                         "training; before that it reads 0 and takes no gradient (DeepRec "
                         "CounterFilter filter_freq; 0: at once)")
    dynamic.add_argument("--steps-to-live", type=int, help="evict keys not used in training for "
                         "more than N global steps (DeepRec GlobalStepEvict steps_to_live)")
    dynamic.add_argument("--l2-weight-threshold", type=float, help="evict keys whose row has "
                         "0.5 * sum(w^2) below this (DeepRec L2WeightEvict l2_weight_threshold)")
    dynamic.add_argument("--evict-every-steps", type=int, help="also evict every N global steps "
                         "(0: only at each checkpoint save, as DeepRec; runs without "
                         "--checkpoint-dir need it to bound memory)")
    model.add_argument("--table-dtype", choices=("float32", "bfloat16", "float16"),
                       help="storage of the embedding tables (16 bits: half the memory, "
                            "float32 arithmetic and optimizer slots)")
    model.add_argument("--rounding", choices=("nearest", "stochastic"),
                       help="how 16-bit tables round their updates (stochastic: seeded "
                            "by --seed, the step, the row and the column)")
    train = p.add_argument_group("training")
    train.add_argument("--batch-size", type=int)
    train.add_argument("--epochs", type=int)
    train.add_argument("--sparse-optimizer", choices=SPARSE_OPTIMIZERS)
    train.add_argument("--sparse-learning-rate", type=float)
    train.add_argument("--dense-optimizer", choices=DENSE_OPTIMIZERS,
                       help="auto: adam for a model with an MLP; for lr and fm, the sparse "
                       "optimizer's rule and rate (as TF's LinearClassifier trains every "
                       "weight with one optimizer)")
    train.add_argument("--dense-learning-rate", type=float)
    train.add_argument("--ftrl-l1", type=float, help="ftrl: l1_regularization_strength")
    train.add_argument("--ftrl-l2", type=float, help="ftrl: l2_regularization_strength")
    train.add_argument("--l2-embedding", type=float, help="L2 penalty on the embedding rows a "
                       "step uses: grad += l2 * w, once per unique row")
    train.add_argument("--l2-dense", type=float, help="L2 penalty on dense kernels (not biases)")
    train.add_argument("--early-stopping-patience", type=int, help="stop after this many "
                       "evaluations without improvement and restore the best state; --epochs "
                       "is then a maximum (0: off)")
    train.add_argument("--early-stopping-patience-steps", type=int, help="and only once this "
                       "many steps have passed since the best evaluation (a tiny data set "
                       "trains one step an epoch)")
    train.add_argument("--early-stopping-metric", choices=("auc", "logloss"),
                       help="validation metric of early stopping and --lr-decay-factor")
    train.add_argument("--early-stopping-min-delta", type=float,
                       help="an improvement must exceed this")
    train.add_argument("--eval-every-steps", type=int, help="also evaluate every N steps "
                       "(0: once per epoch)")
    train.add_argument("--lr-decay-factor", type=float, help="reduce on plateau: multiply both "
                       "learning rates by this, in (0, 1), when the metric stops improving "
                       "(default: off)")
    train.add_argument("--lr-decay-patience", type=int, help="evaluations without improvement "
                       "tolerated before a decay")
    train.add_argument("--min-learning-rate", type=float, help="decay never goes below this")
    train.add_argument("--accumulator-decay-step", type=int, help="adagrad_decay period in steps")
    train.add_argument("--clip-norm", type=float, help="clip gradients by global norm")
    train.add_argument("--max-steps", type=int, help="stop when the global step reaches this")
    train.add_argument("--seed", type=int)
    train.add_argument("--threads", type=int, help="Numba threads (default: all cores)")
    train.add_argument("--blas-threads", help="threads of NumPy's BLAS (the dense layers): "
                       "auto (time steps at 1 and 2, keep the faster; the same results) or N")
    train.add_argument("--distributed", action="store_true",
                       help="under mpirun: shard tables over the ranks (docs/DISTRIBUTED.md)")
    out = p.add_argument_group("output")
    out.add_argument("--checkpoint-dir", help="save a checkpoint after each epoch, and on "
                     "Ctrl-C / SIGTERM, here")
    out.add_argument("--checkpoint-every", type=int, help="also every N steps (0: epochs only)")
    out.add_argument("--keep-checkpoints", type=int)
    out.add_argument("--incremental-every", type=int, help="--ids dynamic: every K-th save is "
                     "full, the saves between write only the rows changed since the previous "
                     "one and the evicted keys (DeepRec incremental_save_restore; default: "
                     "every save full)")
    out.add_argument("--resume", action="store_true", help="continue from --checkpoint-dir")
    out.add_argument("--overwrite", action="store_true", help="start afresh in a --checkpoint-dir "
                     "that holds checkpoints (the new run's saves prune the old ones)")
    out.add_argument("--metrics-out", help="write auc, logloss, samples_per_second as JSON")
    out.add_argument("--predict-out", help="write the validation rows' click probabilities, "
                     "one a line in file order, after training")
    out.add_argument("--export-onnx", help="write the trained model as ONNX here (onnxruntime "
                     "serves it; extra 'onnx')")
    out.add_argument("--export-vocabulary", action="store_true", help="--export-onnx: the "
                     "graph takes raw tokens (every feature needs --ids vocabulary)")
    out.add_argument("--quiet", action="store_true", help="no progress bar or per-epoch lines "
                     "(warnings and errors still print)")
    for action in p._actions:
        default = DEFAULTS.get(action.dest)
        if default is not None and default is not False and action.dest != "help":
            action.help = f"{action.help or ''} (default {default})".lstrip()
    return p


def parse_args(argv):
    """Flags merged over ``--config`` over ``DEFAULTS``, checked (``UsageError``).

    ``options.explicit`` is the set of keys given by a flag or the config."""
    parser = _parser()
    given = vars(parser.parse_args(argv))
    options = dict(DEFAULTS)
    config = read_config(given["config"], parser) if given.get("config") else {}
    options.update(config)
    options.update(given)
    args = argparse.Namespace(**options)
    args.explicit = set(config) | set(given)
    check_options(args)
    return args


def read_config(path, parser=None):
    """The keys of a TOML config, each checked like its flag (type, choices)."""
    try:
        with open(path, "rb") as f:
            config = tomllib.load(f)
    except FileNotFoundError:
        raise UsageError(f"config file {path} does not exist") from None
    except tomllib.TOMLDecodeError as error:
        raise UsageError(f"config file {path}: {error}") from None
    except UnicodeDecodeError as error:
        raise UsageError(f"config file {path} is not UTF-8 text (byte {error.object[error.start]:#04x} "
                         f"at offset {error.start}): it must be a TOML file") from None
    except OSError as error:
        raise UsageError(f"config file {path}: {error.strerror or error}") from None
    config = {key.replace("-", "_"): value for key, value in config.items()}
    unknown = sorted(set(config) - set(DEFAULTS) - {"config"})
    if unknown:
        raise UsageError(f"config file {path}: unknown key(s) {unknown}; "
                         f"keys are {sorted(set(DEFAULTS) - {'config'})}")
    actions = {a.dest: a for a in (parser or _parser())._actions}
    return {key: _config_value(path, key, value, actions[key]) for key, value in config.items()}


def _config_value(path, key, value, action):
    """A config value checked against its flag's type and choices."""
    where = f"config file {path}: {key}"
    if isinstance(action, argparse._StoreTrueAction):
        if not isinstance(value, bool):
            raise UsageError(f"{where} must be true or false, got {value!r}")
        return value
    if key == "hidden_units" and isinstance(value, list):
        if not all(isinstance(u, int) and not isinstance(u, bool) for u in value):
            raise UsageError(f"{where} must be a list of integers, got {value!r}")
        return value
    kind = action.type or str
    ok = (isinstance(value, int) and not isinstance(value, bool) if kind is int else
          isinstance(value, (int, float)) and not isinstance(value, bool) if kind is float else
          isinstance(value, str))
    if not ok:
        what = {int: "an integer", float: "a number", str: "a string"}[kind]
        raise UsageError(f"{where} must be {what}, got {value!r}")
    if action.choices and value not in action.choices:
        raise UsageError(f"{where} must be one of {', '.join(action.choices)}, got {value!r}")
    return float(value) if kind is float else value


def _flag(key):
    return "--" + key.replace("_", "-")


def hidden_units(value):
    """MLP widths from "400,400" or a list (``UsageError`` naming the flag)."""
    if isinstance(value, (list, tuple)):
        units = list(value)
    else:
        try:
            units = [int(u) for u in str(value).split(",") if u.strip()]
        except ValueError:
            raise UsageError(f"--hidden-units must be comma-separated integers, e.g. 400,400, "
                             f"got {value!r}") from None
    if not units:
        raise UsageError(f"--hidden-units must list at least one width, e.g. 400,400, "
                         f"got {value!r}")
    if any(u < 1 for u in units):
        raise UsageError(f"--hidden-units must be positive, got {value!r}")
    return tuple(units)


def _mlp_option(model):
    """The option of ``build_model(model)`` that --hidden-units sets (DLRM:
    its top MLP), or None for a model without an MLP."""
    from sparse_train.models import model_options
    accepted = model_options(model)
    return next((k for k in ("hidden_units", "top_mlp") if k in accepted), None)


#: Flags that must be an integer >= the value (None is allowed: "not set").
_AT_LEAST = {"batch_size": 1, "epochs": 1, "embedding_dim": 1, "examples": 1, "min_count": 1,
             "hash_buckets": 1, "keep_checkpoints": 1, "threads": 1, "num_fields": 1,
             "max_examples": 1, "max_steps": 1, "accumulator_decay_step": 1,
             "checkpoint_every": 0, "seed": 0, "early_stopping_patience": 0,
             "early_stopping_patience_steps": 0,
             "eval_every_steps": 0, "lr_decay_patience": 0,
             "filter_freq": 0, "steps_to_live": 0, "evict_every_steps": 0,
             "incremental_every": 1,
             **{key: 1 for key in DATA_LIMITS}}

#: Flags that must be a finite number >= 0.
_NON_NEGATIVE = ("l2_embedding", "l2_dense", "ftrl_l1", "ftrl_l2", "min_learning_rate",
                 "early_stopping_min_delta")


def _uses_ftrl(a):
    return "ftrl" in (a.sparse_optimizer, a.dense_optimizer)


def dense_optimizer_choice(args):
    """(kind, learning rate) of the dense optimizer. ``auto``: Adam at
    --dense-learning-rate for a model with an MLP (the usual rule for deep
    layers); for a linear model (lr, fm: no MLP) the sparse optimizer's rule
    at --sparse-learning-rate, as TF's LinearClassifier trains every weight
    with one optimizer. Adam at 1e-3 moves a numeric feature's weight by at
    most 1e-3 a step: on the Criteo sample (a few steps an epoch) LR's
    numeric part barely trained (AUC 0.56 against 0.66; scripts/sweep.py)."""
    if args.dense_optimizer != "auto":
        return args.dense_optimizer, args.dense_learning_rate
    if _mlp_option(args.model) is None:  # the same rule for dense gradients
        kind = {"lazy_adam": "adam", "rowwise_adagrad": "adagrad"}.get(args.sparse_optimizer,
                                                                      args.sparse_optimizer)
        return kind, args.sparse_learning_rate
    return "adam", args.dense_learning_rate


#: Flags that mean nothing unless a condition holds: (key, applies(args), where they apply).
_APPLIES = (
    ("data", lambda a: a.format != "synthetic",
     "with a file --format (synthetic generates its data)"),
    ("examples", lambda a: a.format == "synthetic",
     "with --format synthetic (files: --max-examples)"),
    ("max_examples", lambda a: a.format != "synthetic",
     "with a file --format (synthetic: --examples)"),
    ("schema", lambda a: a.format in ("csv", "parquet"), "with --format csv or parquet"),
    ("label", lambda a: a.format == "parquet", "with --format parquet"),
    ("overwrite", lambda a: a.checkpoint_dir, "with --checkpoint-dir"),
    ("export_vocabulary", lambda a: a.export_onnx, "with --export-onnx"),
    ("predict_out", lambda a: not a.distributed, "without --distributed (sharded tables)"),
    ("blas_threads", lambda a: not a.distributed, "without --distributed (one process)"),
    ("export_onnx", lambda a: not a.distributed, "without --distributed (sharded tables)"),
    ("numeric_transform", lambda a: a.format == "criteo", "with --format criteo (csv: the "
     "schema's transform)"),
    ("num_fields", lambda a: a.format in ("libsvm", "libffm"), "with --format libsvm or libffm"),
    ("featindex", lambda a: a.format == "libsvm", "with --format libsvm"),
    ("ids", lambda a: a.format != "synthetic" or a.ids == "dynamic",
     "with a file --format, or as --ids dynamic"),
    ("min_count", lambda a: a.ids != "dynamic" and (
        a.format == "csv" or (a.format != "synthetic" and a.ids == "vocabulary")),
     "with --ids vocabulary"),
    ("rounding", lambda a: a.table_dtype != "float32", "with --table-dtype bfloat16 or float16"),
    ("table_dtype", lambda a: a.ids != "dynamic", "without --ids dynamic (dynamic tables are "
     "float32)"),
    ("hash_buckets", lambda a: a.ids != "dynamic" and (a.format == "csv" or a.ids == "hash"),
     "with --ids hash"),
    *((key, lambda a: a.ids == "dynamic", "with --ids dynamic")
      for key in ("filter_freq", "steps_to_live", "l2_weight_threshold", "evict_every_steps")),
    ("on_bad_line", lambda a: a.format != "synthetic", "with a file --format"),
    *((key, lambda a, key=key: a.format != "synthetic" or (key == "max_vocabulary_size"
                                                           and a.ids == "dynamic"),
       "with a file --format" + (" or --ids dynamic" if key == "max_vocabulary_size" else ""))
      for key in DATA_LIMITS),
    ("valid_fraction", lambda a: not a.valid, "without --valid"),
    ("accumulator_decay_step", lambda a: a.sparse_optimizer == "adagrad_decay",
     "with --sparse-optimizer adagrad_decay"),
    ("normalizer", lambda a: a.format in ("csv", "parquet"), "with --format csv or parquet "
     "(criteo: --numeric-transform)"),
    ("dense_learning_rate", lambda a: a.dense_optimizer != "auto"
     or _mlp_option(a.model) is not None,
     "with a model that has an MLP or an explicit --dense-optimizer (lr and fm train their "
     "dense weights with the sparse optimizer's rule and --sparse-learning-rate)"),
    ("ftrl_l1", _uses_ftrl, "with --sparse-optimizer or --dense-optimizer ftrl"),
    ("ftrl_l2", _uses_ftrl, "with --sparse-optimizer or --dense-optimizer ftrl"),
    ("early_stopping_patience_steps", lambda a: a.early_stopping_patience,
     "with --early-stopping-patience > 0"),
    ("early_stopping_metric", lambda a: a.early_stopping_patience or a.lr_decay_factor,
     "with --early-stopping-patience > 0 or --lr-decay-factor"),
    ("early_stopping_min_delta", lambda a: a.early_stopping_patience or a.lr_decay_factor,
     "with --early-stopping-patience > 0 or --lr-decay-factor"),
    ("lr_decay_patience", lambda a: a.lr_decay_factor, "with --lr-decay-factor"),
    ("min_learning_rate", lambda a: a.lr_decay_factor, "with --lr-decay-factor"),
    ("checkpoint_every", lambda a: a.checkpoint_dir, "with --checkpoint-dir"),
    ("keep_checkpoints", lambda a: a.checkpoint_dir, "with --checkpoint-dir"),
    ("incremental_every", lambda a: a.checkpoint_dir and a.ids == "dynamic",
     "with --checkpoint-dir and --ids dynamic"),
    ("resume", lambda a: a.checkpoint_dir, "with --checkpoint-dir"),
)


def check_options(args):
    """Every flag's range, and no flag that the run would ignore; raises
    ``UsageError`` naming the flag, before any data is read."""
    for key, minimum in _AT_LEAST.items():
        value = getattr(args, key)
        if value is not None and value < minimum:
            raise UsageError(f"{_flag(key)} must be an integer >= {minimum}, got {value}")
    for key in ("sparse_learning_rate", "dense_learning_rate", "clip_norm"):
        value = getattr(args, key)
        if value is not None and not (math.isfinite(value) and value > 0):
            raise UsageError(f"{_flag(key)} must be a number > 0, got {value}")
    for key in _NON_NEGATIVE:
        value = getattr(args, key)
        if not (math.isfinite(value) and value >= 0):
            raise UsageError(f"{_flag(key)} must be a number >= 0, got {value}")
    if args.l2_weight_threshold is not None and not (math.isfinite(args.l2_weight_threshold)
                                                     and args.l2_weight_threshold > 0):
        raise UsageError(f"--l2-weight-threshold must be a number > 0, got "
                         f"{args.l2_weight_threshold}")
    if args.lr_decay_factor is not None and not 0.0 < args.lr_decay_factor < 1.0:
        raise UsageError(f"--lr-decay-factor must be in (0, 1), got {args.lr_decay_factor}")
    if not 0.0 < args.valid_fraction < 1.0:
        raise UsageError(f"--valid-fraction must be in (0, 1), got {args.valid_fraction}")
    args.hidden_units = hidden_units(args.hidden_units)
    if "hidden_units" in args.explicit and _mlp_option(args.model) is None:
        raise UsageError(f"--hidden-units: model {args.model!r} has no MLP")
    for key, applies, where in _APPLIES:
        if key in args.explicit and getattr(args, key) not in (None, False) and not applies(args):
            raise UsageError(f"{_flag(key)} only applies {where}; this run would ignore it")
    if args.format != "synthetic" and not args.data:
        raise UsageError(f"--format {args.format} needs --data PATH")
    if args.format == "csv" and not args.schema:
        raise UsageError("--format csv needs --schema FILE.toml (datasets/README.md)")
    check_run_options(args)
    args.blas_threads = blas_threads_setting(args.blas_threads)
    if args.threads is not None:
        import numba
        if args.threads > numba.config.NUMBA_NUM_THREADS:
            raise UsageError(f"--threads must be <= {numba.config.NUMBA_NUM_THREADS} (the cores "
                             f"Numba may use; NUMBA_NUM_THREADS), got {args.threads}")


def blas_threads_setting(value):
    """--blas-threads as ``fit(blas_threads=...)`` takes it: "auto" or an int >= 1."""
    if value == "auto":
        return value
    try:
        count = int(value)
    except (TypeError, ValueError):
        count = 0
    if isinstance(value, (bool, float)) or count < 1 or str(count) != str(value).strip():
        raise UsageError(f"--blas-threads must be 'auto' or an integer >= 1, got {value!r}")
    return count


def check_run_options(args):
    """The options of this run's outputs and formats (``UsageError`` naming
    the flag): flags that contradict, empty lists, and every output path
    (``check_output_paths``), all before any data is read."""
    if args.overwrite and args.resume:
        raise UsageError("--overwrite starts afresh and --resume continues: give one of them")
    check_dynamic_options(args)
    if args.format == "parquet" and not (args.label or args.schema):
        raise UsageError("--format parquet needs --label COLUMN (or --schema FILE.toml)")
    for key in ("data", "valid"):
        value = getattr(args, key)
        if value is not None and not [p for p in str(value).split(",") if p.strip()]:
            raise UsageError(f"{_flag(key)} lists no file, got {value!r}")
    import importlib.util
    for needed, modules, extra in ((args.export_onnx, ("onnx",), "onnx"),
                                   (args.format == "parquet", ("pyarrow",), "parquet")):
        missing = [m for m in modules if needed and importlib.util.find_spec(m) is None]
        if missing:
            what = "--export-onnx" if extra == "onnx" else "--format parquet"
            raise UsageError(f"{what} needs {', '.join(missing)}: pip install -e '.[{extra}]'")
    check_output_paths(args)


def check_dynamic_options(args):
    """--ids dynamic with flags it cannot serve (``UsageError`` naming them)."""
    if args.ids != "dynamic":
        return
    if args.distributed and args.evict_every_steps:
        raise UsageError("--evict-every-steps does not run with --distributed yet (sharded "
                         "dynamic tables evict at each checkpoint save): drop it, or train in "
                         "one process")
    if args.export_onnx:
        raise UsageError("--export-onnx: an ONNX graph holds fixed tables indexed by row, and "
                         "--ids dynamic tables are keyed by raw int64 ids (their keys and rows "
                         "are in a checkpoint, or table.export()); export without --ids dynamic")


#: Output flags naming a file (written at the end of the run).
_OUTPUT_FILES = ("metrics_out", "predict_out", "export_onnx")


def check_output_paths(args):
    """Each output path can be written, checked before any data is read: a
    file flag (``--metrics-out``, ``--predict-out``, ``--export-onnx``) must
    not name a directory, ``--checkpoint-dir`` must not name a file, and the
    nearest existing directory on the way must take a new file (tried with a
    temporary file, removed at once: nothing is left behind). Missing parent
    directories are created at the end, as the run writes."""
    import tempfile
    wanted = [(key, getattr(args, key), False) for key in _OUTPUT_FILES]
    wanted.append(("checkpoint_dir", args.checkpoint_dir, True))
    for key, value, is_dir in wanted:
        if not value:
            continue
        flag, path = _flag(key), os.path.abspath(str(value))
        if os.path.isdir(path) and not is_dir:
            raise UsageError(f"{flag} {value} is a directory; give a file name")
        if os.path.exists(path) and not os.path.isdir(path) and is_dir:
            raise UsageError(f"{flag} {value} is a file, not a directory")
        if os.path.exists(path) and not is_dir:
            if not os.access(path, os.W_OK):
                raise UsageError(f"{flag} {value} cannot be written (permission denied)")
            continue
        parent = path if is_dir and os.path.isdir(path) else os.path.dirname(path)
        while not os.path.exists(parent):
            parent = os.path.dirname(parent)
        if not os.path.isdir(parent):
            raise UsageError(f"{flag} {value} cannot be written: {parent} is a file, "
                             f"not a directory")
        try:
            fd, probe = tempfile.mkstemp(prefix=".write-test-", dir=parent)
            os.close(fd)
            os.unlink(probe)
        except OSError as error:
            raise UsageError(f"{flag} {value} cannot be written: {parent}: "
                             f"{error.strerror or error}") from None


def claim_checkpoint_dir(args, warn, comm=None):
    """One run per checkpoint directory, before any data is read.

    The run holds a ``DirectoryLock`` in ``--checkpoint-dir`` until it ends
    (under ``--distributed``: rank 0 holds it, and if it cannot, the job
    ends on every rank); a second live run there fails at start, and the
    lock of a dead run is taken over with a warning. Without ``--resume``, a
    directory already holding checkpoints is refused (naming the newest
    step) unless ``--overwrite``. Returns the lock (or None: no directory,
    or not rank 0); ``args.lock`` keeps it for ``main`` to release."""
    import types
    import warnings
    import sparse_train as st
    from sparse_train.checkpoint import DirectoryLock

    args.lock = None
    if not args.checkpoint_dir:
        return None
    directory = args.checkpoint_dir
    lead = comm is None or comm.rank == 0
    if lead:
        os.makedirs(directory, exist_ok=True)
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            args.lock = DirectoryLock(directory).acquire()
        for warning in caught:
            warn(f"warning: {warning.message}")
    if comm is None:
        probe = st.CheckpointManager(st.Checkpoint(), directory)
    else:
        from sparse_train.distributed import DistributedCheckpointManager
        probe = DistributedCheckpointManager(types.SimpleNamespace(comm=comm), [], None,
                                             directory)
    newest = probe.latest_step()
    if newest is not None and not args.resume:
        if args.overwrite:
            warn(f"--overwrite: starting afresh in {directory} (its checkpoints up to step "
                 f"{newest} are pruned as this run saves)")
        elif lead:
            raise UsageError(f"checkpoint directory {directory} already holds checkpoints "
                             f"(the newest at step {newest}): continue that run with --resume, "
                             f"start afresh there with --overwrite, or use another directory")
    if comm is not None:
        comm.barrier()  # the other ranks wait here while rank 0 may fail
    return args.lock


def data_record(train_data):
    """What a checkpoint records of the training data (``"data_record"`` in
    its run options): each categorical feature's ids (``Dataset.fingerprint``)
    and the numeric preprocessing (``Dataset.preprocessing_state``)."""
    return {"ids": train_data.fingerprint(), "preprocessing": train_data.preprocessing_state()}


def check_resume_data(metadata, train_data, path):
    """Refuse to resume with data whose feature ids or numeric preprocessing
    differ from the checkpoint's (``DataError`` naming the feature): its
    embedding rows would silently belong to other tokens. Checkpoints
    without a record (older ones) are not checked."""
    saved = (metadata.get("run") or {}).get("data_record")
    if not saved:
        return
    where = f"checkpoint {path}"
    train_data.check_fingerprint(saved.get("ids", {}), where=where)
    train_data.check_preprocessing(saved.get("preprocessing", {}), where=where)


def comparable_run(run, metadata):
    """``run`` as ``check_resume`` compares it with a checkpoint's: without
    the data record when the checkpoint has none (saved before it existed;
    ``check_resume_data`` checks the record itself)."""
    if "data_record" in (metadata.get("run") or {}):
        return run
    return {k: v for k, v in run.items() if k != "data_record"}


def check_distributed_resume_data(args, train_data, comm):
    """``check_resume_data`` for a ``--distributed --resume`` run, before the
    model is sharded: the newest manifest's record, read on rank 0."""
    if not (args.checkpoint_dir and args.resume):
        return
    import types
    from sparse_train.distributed import DistributedCheckpointManager
    probe = DistributedCheckpointManager(types.SimpleNamespace(comm=comm), [], None,
                                         args.checkpoint_dir)
    candidates = comm.bcast(probe._candidates() if comm.rank == 0 else None)
    if candidates:
        check_resume_data(probe.manifest(candidates[0])["metadata"], train_data, candidates[0])


def export_vocabulary(args, train_data):
    """``--export-vocabulary``: the vocabularies the exported graph maps raw
    tokens with; every categorical feature must have one (an error naming
    the first that does not). None without the flag."""
    if not args.export_vocabulary:
        return None
    from sparse_train.data import Vocabulary
    vocabulary = train_data.vocabulary
    for feature in train_data.spec.sparse_features:
        if not isinstance(vocabulary.get(feature.name), Vocabulary):
            how = ("hash buckets" if feature.name in vocabulary
                   else "ids as they are in the data")
            raise UsageError(f"--export-vocabulary: feature {feature.name!r} uses {how}, not a "
                             f"vocabulary (ONNX cannot map its raw tokens); use --ids vocabulary "
                             f"or export without --export-vocabulary")
    return vocabulary


def write_outputs(args, model, train_data, valid_data, say, vocabulary=None):
    """After training: ``--predict-out`` (the validation rows' probabilities,
    one a line in file order) and ``--export-onnx`` (the model; for file
    formats with the training data's numeric transforms inside the graph)."""
    import sparse_train as st
    for key in ("predict_out", "export_onnx"):
        value = getattr(args, key)
        if value:
            os.makedirs(os.path.dirname(os.path.abspath(value)), exist_ok=True)
    if args.predict_out:
        rows = st.models.write_predictions(model, valid_data.batches(), args.predict_out)
        say(f"wrote {rows:,} validation probabilities to {args.predict_out}")
    if args.export_onnx:
        transforms = train_data if args.format != "synthetic" else None
        st.export_onnx(model, args.export_onnx, numeric_transforms=transforms,
                       vocabulary=vocabulary)
        say(f"exported the model to {args.export_onnx} (ONNX)")


def kernel_cache_is_cold(kernels=None):
    """Whether this is a first run: no Numba cache index (``*.py311.nbi``
    for Python 3.11) of the kernels beside their sources in ``kernels``
    (default ``sparse_train/kernels``), nor in NUMBA_CACHE_DIR. A cheap
    look at file names, no import of the kernels."""
    import glob
    tag = f".py{sys.version_info[0]}{sys.version_info[1]}.nbi"
    if kernels is None:
        import sparse_train
        kernels = os.path.join(os.path.dirname(sparse_train.__file__), "kernels")
    places = [os.path.join(kernels, "__pycache__")]
    if os.environ.get("NUMBA_CACHE_DIR"):
        places.append(os.path.join(os.environ["NUMBA_CACHE_DIR"], "**"))
    return not any(glob.glob(os.path.join(place, "*" + tag), recursive=True)
                   for place in places)


#: The closing hint of a run that kept nothing.
KEEP_HINT = ("nothing was saved: --checkpoint-dir DIR keeps the model (and --resume continues "
             "it), --export-onnx PATH exports it, --metrics-out FILE writes these figures as "
             "JSON")


def open_data(args):
    """(train, valid) datasets; everything checkable is checked before training."""
    from sparse_train.data import open_dataset

    common = dict(batch_size=args.batch_size, on_bad_line=args.on_bad_line)
    common.update({key: getattr(args, key) for key in DATA_LIMITS
                   if getattr(args, key) is not None})
    if args.format == "synthetic":
        dataset = open_dataset(format="synthetic", num_examples=args.examples,
                               seed=args.seed, batch_size=args.batch_size,
                               ids="dynamic" if args.ids == "dynamic" else "vocabulary")
        return dataset.split(args.valid_fraction, seed=args.seed)
    paths = file_list(args.data, "--data")
    extra = {k: getattr(args, k) for k in ("num_fields", "featindex", "schema", "label")
             if getattr(args, k) is not None}
    if args.format == "criteo":
        extra["numeric_transform"] = args.numeric_transform
    if args.normalizer is not None:
        extra["normalizer"] = args.normalizer
    dataset = open_dataset(paths, args.format, ids=args.ids, min_count=args.min_count,
                           hash_buckets=args.hash_buckets, max_examples=args.max_examples,
                           **common, **extra)
    if args.valid:
        valid_paths = file_list(args.valid, "--valid")
        return dataset, open_dataset(valid_paths, args.format, like=dataset,
                                     max_examples=args.max_examples, **common, **extra)
    return dataset.split(args.valid_fraction, seed=args.seed)


def file_list(value, flag):
    """Files of a comma-separated list whose items may be glob patterns
    (``day_*.gz``, in sorted order); a pattern matching nothing is an error."""
    import glob
    paths = []
    for item in (p.strip() for p in str(value).split(",")):
        if item and glob.has_magic(item):
            matched = sorted(glob.glob(item))
            if not matched:
                raise FileNotFoundError(f"{flag}: no file matches {item!r}")
            paths += matched
        elif item:
            paths.append(item)
    return paths


def build(args, spec, train_data=None):
    """Model, optimizers and global step from the options; the logit bias
    starts at the log-odds of ``train_data``'s click rate (a checkpoint, if
    resumed, overrides it)."""
    import sparse_train as st

    key = _mlp_option(args.model)
    options = {} if key is None else {key: hidden_units(args.hidden_units)}
    if args.ids == "dynamic":
        options["dynamic"] = dynamic_options(args)
    if args.table_dtype != "float32":
        options.update(table_dtype=args.table_dtype, table_rounding=args.rounding)
    model = st.build_model(args.model, spec, embedding_dim=args.embedding_dim, seed=args.seed,
                           **options)
    if train_data is not None:
        model.init_logit_bias(base_rate(train_data))
    global_step = st.GlobalStep()
    sparse_options = ({"accumulator_decay_step": args.accumulator_decay_step}
                      if args.sparse_optimizer == "adagrad_decay" else {})
    sparse = st.optim.build_optimizer(args.sparse_optimizer, args.sparse_learning_rate,
                                      global_step, name="sparse", **sparse_options,
                                      **_ftrl_options(args, args.sparse_optimizer))
    kind, rate = dense_optimizer_choice(args)
    dense_options = ({"accumulator_decay_step": args.accumulator_decay_step}
                     if kind == "adagrad_decay" else {})
    dense = st.optim.build_optimizer(kind, rate, global_step, name="dense", **dense_options,
                                     **_ftrl_options(args, kind))
    return model, sparse, dense, global_step


def dynamic_options(args):
    """--filter-freq, --steps-to-live, --l2-weight-threshold as the
    ``DynamicEmbeddingTable`` options of every table (``build_model(...,
    dynamic=)``), and --max-vocabulary-size as each table's ``capacity``:
    a stream of ever new keys stops with an error naming the table instead
    of growing until the host runs out of memory."""
    capacity = args.max_vocabulary_size or DATA_LIMITS["max_vocabulary_size"][0]
    return {"filter_freq": args.filter_freq, "steps_to_live": args.steps_to_live,
            "l2_weight_threshold": args.l2_weight_threshold, "capacity": capacity}


def dynamic_fit_options(args, model, global_step):
    """``fit`` keywords of a run with dynamic tables: evict before every
    checkpoint save (``evict``) and show the admitted keys on each epoch's
    line (``status``); {} with static tables."""
    if args.ids != "dynamic":
        return {}

    def status():
        admitted = model.admitted_keys()
        return f"keys admitted {sum(admitted.values()):,} in {len(admitted)} tables"
    return {"evict": model.evict, "status": status}


def dynamic_step(args, model, global_step, step):
    """``step`` followed by an eviction every --evict-every-steps global steps."""
    every = args.evict_every_steps if args.ids == "dynamic" else 0
    if not every:
        return step
    evicted = [0]

    def step_and_evict(batch):
        loss = step(batch)
        if int(global_step) % every == 0:
            evicted[0] += model.evict(int(global_step))
        return loss
    step_and_evict.evicted = evicted
    return step_and_evict


def dynamic_summary(model):
    """Per dynamic table, from ``table.export()``: admitted keys, the
    smallest and largest training count and last-seen step of an admitted
    key (for the metrics JSON)."""
    out = {}
    for table in model.dynamic_tables():
        state = table.export()
        counts, seen = state["counts"], state["last_seen"]
        out[table.name] = {"admitted": int(len(state["keys"])),
                           "min_count": int(counts.min()) if len(counts) else None,
                           "max_count": int(counts.max()) if len(counts) else None,
                           "min_last_seen": int(seen.min()) if len(seen) else None,
                           "max_last_seen": int(seen.max()) if len(seen) else None}
    return out


def _ftrl_options(args, kind):
    """--ftrl-l1 / --ftrl-l2 as the Ftrl constructor's arguments (TF's names)."""
    if kind != "ftrl":
        return {}
    return {"l1_regularization_strength": args.ftrl_l1,
            "l2_regularization_strength": args.ftrl_l2}


def schedules(args, optimizers, state_variables, global_step, checkpoint_state=None):
    """``fit`` keywords for early stopping and plateau decay from the flags:
    ``early_stopping``, ``lr_schedule``, ``best_state`` (the best state is
    a ``best-<step>.ckpt`` file in --checkpoint-dir when there is one, so
    --resume finds it; else a copy in memory), ``eval_every_steps``."""
    from sparse_train.training import CheckpointState, EarlyStopping, MemoryState
    from sparse_train.training import ReduceLROnPlateau

    options = {"eval_every_steps": args.eval_every_steps}
    if args.lr_decay_factor:
        options["lr_schedule"] = ReduceLROnPlateau(
            optimizers, args.lr_decay_factor, args.lr_decay_patience, args.min_learning_rate,
            args.early_stopping_metric, args.early_stopping_min_delta)
    if args.early_stopping_patience:
        options["early_stopping"] = EarlyStopping(
            args.early_stopping_patience, args.early_stopping_metric,
            args.early_stopping_min_delta, args.early_stopping_patience_steps)
        options["best_state"] = (MemoryState(state_variables, global_step)
                                 if checkpoint_state is None else checkpoint_state)
    return options


def distributed_options(args):
    """The keywords of ``distributed.train_distributed`` for L2, early
    stopping, plateau decay and incremental checkpoints (the flags of the
    same names)."""
    keys = ("l2_embedding", "l2_dense", "eval_every_steps", "early_stopping_patience",
            "early_stopping_patience_steps", "early_stopping_metric", "early_stopping_min_delta",
            "lr_decay_factor", "lr_decay_patience", "min_learning_rate", "incremental_every")
    return {key: getattr(args, key) for key in keys}


def saved_learning_rates(path):
    """The learning rates a plateau schedule had reached in the checkpoint
    at ``path`` (None if it has none): set before restoring, so a resumed
    run uses them (and the restore sees the hyperparameters it saved)."""
    import sparse_train as st
    try:
        metadata = st.checkpoint.load_checkpoint(path).header["metadata"]
    except st.checkpoint.CheckpointError:  # corrupt: restore_latest falls back and says so
        return None
    schedule = (metadata.get("schedules") or {}).get("lr_schedule")
    return None if schedule is None else schedule["learning_rates"]


def base_rate(dataset, rows=200_000):
    """Click rate of the first ``rows`` training examples."""
    clicks = count = 0
    for batch in dataset.batches():
        clicks, count = clicks + float(batch.labels.sum()), count + batch.size
        if count >= rows:
            break
    return clicks / count if count else 0.5


def batches_options(args):
    """The options that decide which batches a step trains on (saved in
    checkpoints: a mid-epoch resume must not change them)."""
    keys = ["format", "batch_size", "seed"]
    keys += (["examples"] + (["ids"] if args.ids == "dynamic" else [])
             if args.format == "synthetic" else
             ["data", "max_examples", "valid", "ids", "min_count", "hash_buckets"]
             + (["label", "schema"] if args.format == "parquet" else []))
    keys += [] if args.valid else ["valid_fraction"]
    options = {key: getattr(args, key) for key in keys}
    for key in ("data", "valid"):  # the files, wherever the run starts from
        if options.get(key):
            options[key] = [os.path.abspath(p) for p in file_list(options[key], _flag(key))]
    return options


def printers(args, lead=True):
    """(say, warn): ``say`` prints progress messages (not with --quiet, nor
    on ranks other than 0); ``warn`` prints on rank 0 whatever --quiet says
    (skipped lines, a resume that found nothing)."""
    def warn(*a):
        if lead:
            print(*a, file=sys.stderr, flush=True)
    return ((lambda *a: None) if args.quiet else warn), warn


def train(args):
    import sparse_train as st
    from sparse_train.training import check_resume, resume_point

    if args.threads:
        import numba
        numba.set_num_threads(args.threads)
    say, warn = printers(args)
    train_data, valid_data = open_data(args)
    train_data.build_ids(progress=None if args.quiet else sys.stderr)
    valid_data.check(progress=None if args.quiet else sys.stderr)  # a bad line fails now
    spec = train_data.spec
    args.batches["data_record"] = data_record(train_data)
    vocabulary = export_vocabulary(args, train_data)
    model, sparse_opt, dense_opt, global_step = build(args, spec, train_data)
    tables = (f"{len(model.dynamic_tables())} dynamic tables (filter_freq {args.filter_freq}, "
              f"steps_to_live {args.steps_to_live}, l2_weight_threshold "
              f"{args.l2_weight_threshold})" if args.ids == "dynamic" else
              f"{sum(v.value.size for v in model.sparse_variables()):,} embedding")
    say(f"model {args.model}: {tables} "
        f"and {sum(v.value.size for v in model.dense_variables()):,} dense parameters; "
        f"{len(spec.sparse_features)} categorical and {spec.num_dense} numeric features")
    manager, start, best = None, {}, None
    if args.checkpoint_dir:
        checkpoint = st.Checkpoint(model.variables(), [sparse_opt, dense_opt], global_step)
        manager = st.CheckpointManager(checkpoint, args.checkpoint_dir,
                                       max_to_keep=args.keep_checkpoints,
                                       incremental_every=args.incremental_every)
        best = st.training.CheckpointState(
            args.checkpoint_dir, lambda prefix: checkpoint.save(prefix + ".ckpt"),
            lambda prefix: checkpoint.restore(prefix + ".ckpt"))
        if args.resume:
            latest = manager.latest_checkpoint
            if latest is not None:  # the data first: nothing is restored into a wrong model
                check_resume_data(st.checkpoint.load_checkpoint(latest).header["metadata"],
                                  train_data, latest)
            rates = saved_learning_rates(latest) if latest and args.lr_decay_factor else None
            if rates is not None:
                sparse_opt.learning_rate, dense_opt.learning_rate = rates
            path = manager.restore_latest()
            if path is None:
                warn(f"no checkpoint in {args.checkpoint_dir}: starting afresh")
            else:
                metadata = st.checkpoint.load_checkpoint(path).header["metadata"]
                check_resume_data(metadata, train_data, path)
                check_resume(metadata, comparable_run(args.batches, metadata), _flag)
                start = resume_point(metadata)
                say(f"resumed from {path} at epoch {start['start_epoch'] + 1}, batch "
                    f"{start['skip_batches']}, global step {int(global_step)}")

    transform = None
    if args.clip_norm:
        transform = lambda grads: st.clip_gradients(grads, args.clip_norm)[0]  # noqa: E731
    optimizers = [sparse_opt, dense_opt]
    step = dynamic_step(args, model, global_step, lambda batch: st.train_step(
        model, batch, sparse_opt, dense_opt, global_step, transform,
        l2_embedding=args.l2_embedding, l2_dense=args.l2_dense))
    result = st.training.fit(
        train_data, valid_data, step,
        lambda batches: st.training.evaluate(model, batches), global_step,
        epochs=args.epochs, seed=args.seed, **start, manager=manager,
        checkpoint_every=args.checkpoint_every, max_steps=args.max_steps,
        run=args.batches, say=say, progress=None if args.quiet else sys.stderr,
        stop_on_signals=True, blas_threads=args.blas_threads,
        **schedules(args, optimizers, lambda: model.variables() + [
            v for opt in optimizers for v in opt.variables()], global_step, best),
        **dynamic_fit_options(args, model, global_step))
    result.update(model=args.model, format=args.format)
    if args.ids == "dynamic":
        result["evicted_keys"] = (result.get("evicted_keys", 0)
                                  + getattr(step, "evicted", [0])[0])
        result["dynamic_tables"] = dynamic_summary(model)
    write_outputs(args, model, train_data, valid_data, say, vocabulary)
    st.training.report(result, say, args.metrics_out, warn=warn)
    return result


def train_distributed(args):
    """``train`` on every rank of an MPI job (``--distributed``): every rank
    opens the same data and builds the same model (so every flag means what
    it means in one process), then ``distributed.train_distributed`` trains
    it sharded. Rank 0 prints and writes the metrics JSON. Any error on any
    rank ends the job (exit code 2 for a user error, 1 otherwise)."""
    from sparse_train.checkpoint import CheckpointError
    from sparse_train.data import DataError
    from sparse_train.distributed import DistributedError, fail_fast, world
    from sparse_train.distributed import train_distributed as train_sharded
    from sparse_train.training import report

    comm = world()
    expected = (DataError, CheckpointError, FileNotFoundError, ValueError, DistributedError)
    with fail_fast(comm, expected=expected):
        if args.threads:
            import numba
            numba.set_num_threads(args.threads)
        lead = comm.rank == 0
        say, warn = printers(args, lead)
        claim_checkpoint_dir(args, warn, comm)
        progress = None if args.quiet or not lead else sys.stderr
        train_data, valid_data = open_data(args)
        train_data.build_ids(progress=progress)
        valid_data.check(progress=progress)  # a bad line fails now, not after an epoch
        args.batches["data_record"] = data_record(train_data)
        check_distributed_resume_data(args, train_data, comm)
        model, sparse_opt, dense_opt, global_step = build(args, train_data.spec, train_data)
        result = train_sharded(
            model, train_data, valid_data, sparse_opt, dense_opt, global_step,
            epochs=args.epochs, seed=args.seed, clip_norm=args.clip_norm or None,
            checkpoint_dir=args.checkpoint_dir, keep_checkpoints=args.keep_checkpoints,
            resume=args.resume, checkpoint_every=args.checkpoint_every,
            max_steps=args.max_steps, run=args.batches, say=say, warn=warn,
            progress=progress, flag=_flag, comm=comm, **distributed_options(args))
        result.update(model=args.model, format=args.format)
        report(result, say, args.metrics_out if lead else None, f" on {comm.size} ranks", warn)
        return result


def main(argv=None):
    """Run the script; returns the exit code (0, 2 for bad input, 130 when
    interrupted)."""
    threads_note = share_cores_between_ranks()
    from sparse_train.checkpoint import CheckpointError
    from sparse_train.data import DataError
    from sparse_train.training import Interrupted
    try:
        args = parse_args(argv)
    except UsageError as error:
        if _launcher_rank() == 0:  # under mpirun every rank finds it: say it once
            print(f"error: {error}", file=sys.stderr)
        return 2
    if threads_note and args.distributed and not args.quiet and _launcher_rank() == 0:
        print(threads_note, file=sys.stderr)
    lead = _launcher_rank() == 0
    try:
        args.batches = batches_options(args)
        if not args.quiet and lead and kernel_cache_is_cold():
            print("compiling kernels, about 10 s on a first run; cached afterwards",
                  file=sys.stderr, flush=True)
        if args.distributed:  # every rank runs this; a failing rank ends the whole job
            train_distributed(args)
        else:
            claim_checkpoint_dir(args, printers(args)[1])
            train(args)
        if not (args.quiet or args.checkpoint_dir or args.metrics_out or args.export_onnx) \
                and lead:
            print(KEEP_HINT, file=sys.stderr)
    except (DataError, CheckpointError, FileNotFoundError, ValueError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    except Interrupted as stop:
        hint = ": continue with --resume" if stop.checkpoint else " (no --checkpoint-dir)"
        print(f"\n{stop}{hint}", file=sys.stderr)
        return 130
    except KeyboardInterrupt:
        print("\ninterrupted", file=sys.stderr)
        return 130
    finally:
        if getattr(args, "lock", None) is not None:
            args.lock.release()
    return 0


#: Thread pools of a process: Numba's, OpenBLAS's, OpenMP's, MKL's.
THREAD_VARIABLES = ("NUMBA_NUM_THREADS", "OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS",
                    "MKL_NUM_THREADS")


def share_cores_between_ranks():
    """Under an MPI launcher with several ranks on this host, give each rank
    its share of the cores: every thread pool left unset gets ``cores //
    ranks`` threads (as torchrun sets OMP_NUM_THREADS=1). Otherwise each
    rank's Numba and OpenBLAS pools take every core and the ranks fight over
    them: the default run on 2 ranks x 2 cores took 59 s, not 25 s. Must run
    before NumPy is imported; returns a note to print, or None."""
    local = next((int(os.environ[v]) for v in ("OMPI_COMM_WORLD_LOCAL_SIZE", "MPI_LOCALNRANKS",
                                                "MV2_COMM_WORLD_LOCAL_SIZE")
                  if os.environ.get(v, "").isdigit()), 1)
    unset = [v for v in THREAD_VARIABLES if v not in os.environ]
    if local <= 1 or not unset or "numpy" in sys.modules:
        return None
    cores = os.cpu_count() or 1
    mine = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else cores
    # bound by the launcher to fewer cores than the host's: those are this
    # rank's; else the ranks share them all
    share = mine if mine < cores else max(1, cores // local)
    for name in unset:
        os.environ[name] = str(share)
    return (f"{local} ranks on this host of {cores} cores: {share} thread(s) a rank "
            f"({', '.join(unset)}; set them to choose)")


def _launcher_rank():
    """This process's rank as an MPI launcher set it (0 without one)."""
    for name in ("OMPI_COMM_WORLD_RANK", "PMI_RANK", "PMIX_RANK"):
        if os.environ.get(name, "").isdigit():
            return int(os.environ[name])
    return 0


if __name__ == "__main__":
    sys.exit(main())
