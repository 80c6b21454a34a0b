#!/usr/bin/env python
"""The defaults sweep: train candidate flag sets on every real sample in
``../shared/datasets`` plus the synthetic log, beside scikit-learn's
LogisticRegression on the same split and features, and print the table the
defaults of ``scripts/train.py`` were chosen from.

    python scripts/sweep.py                       # every data set, the candidates below
    python scripts/sweep.py --data clothing,ipinyou --models lr --json sweep.json
    python scripts/sweep.py --data movielens_sample --candidates defaults,previous --seeds 20

A candidate is a list of ``scripts/train.py`` flags added to each data set's
own flags (``[]`` is the script's defaults). Small samples (a few hundred
rows) are scored over several random train/validation splits (``--seeds``)
and averaged, since one split of 20 validation rows says little. Each row
gives AUC and logloss at the end of the run (what the flags deliver, early
stopping included) and sklearn's LR (one-hot categoricals, standardized
numerics, C=1) on the same rows; "sklearn LR AUC" of several splits is
their mean +- the standard deviation of one split's AUC (the noise of a
single split: a gap smaller than it says little).
"""
import argparse
import contextlib
import importlib.util
import io
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared" / "datasets"
SCHEMAS = ROOT / "datasets"


def _load(name):
    spec = importlib.util.spec_from_file_location(name, ROOT / "scripts" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


#: Data sets: name -> (flags, random splits or None for a fixed train -> test split).
DATASETS = {
    "clothing": (["--format", "csv", "--schema", str(SHARED / "clothing_reviews/schema.toml"),
                  "--data", str(SHARED / "clothing_reviews/train.csv"),
                  "--valid", str(SHARED / "clothing_reviews/test.csv")], None),
    "ipinyou": (["--format", "libsvm", "--num-fields", "16",
                 "--data", str(SHARED / "ipinyou_deepctr/train.fm.txt"),
                 "--valid", str(SHARED / "ipinyou_deepctr/test.fm.txt")], None),
    "xlearn_criteo": (["--format", "libffm", "--num-fields", "18",
                       "--data", str(SHARED / "xlearn/criteo_ctr_small_train.txt"),
                       "--valid", str(SHARED / "xlearn/criteo_ctr_small_test.txt")], None),
    "taobao": (["--format", "csv", "--schema", str(SCHEMAS / "taobao_schema.toml"),
                "--data", str(SHARED / "fuxictr_taobao_tiny/train_sample.csv"),
                "--valid", str(SHARED / "fuxictr_taobao_tiny/test_sample.csv")], None),
    "criteo_sample": (["--format", "criteo", "--data", str(SHARED / "deepctr/criteo_sample.txt"),
                       "--valid-fraction", "0.3"], 5),
    "avazu_sample": (["--format", "csv", "--schema", str(SCHEMAS / "avazu_schema.toml"),
                      "--data", str(SHARED / "deepctr/avazu_sample.txt"),
                      "--valid-fraction", "0.3"], 5),
    "movielens_sample": (["--format", "csv", "--schema", str(SCHEMAS / "movielens_schema.toml"),
                          "--data", str(SHARED / "deepctr/movielens_sample.txt"),
                          "--valid-fraction", "0.3"], 5),
    "synthetic": (["--examples", "100000"], None),
}

#: Candidate flag sets; [] is the script's defaults. The named ones are those
#: the current defaults were chosen against (README, How the defaults were
#: chosen); run them with --candidates defaults,previous,...
CANDIDATES = {
    "defaults": [],
    # the defaults before: an epoch cap of 20, patience counted in evaluations only
    "previous": ["--epochs", "20", "--early-stopping-patience-steps", "0"],
    "patience_steps_25": ["--early-stopping-patience-steps", "25"],
    "patience_steps_100": ["--early-stopping-patience-steps", "100", "--epochs", "300"],
    "epochs_100": ["--epochs", "100"],
    # no early stopping, so no pick of the best evaluation on the scored rows
    "fixed_120_epochs": ["--early-stopping-patience", "0", "--epochs", "120"],
}
DEFAULT_CANDIDATES = ("defaults",)


def run(train_script, flags, model, seed, workdir):
    """One ``scripts/train.py`` run in this process; its metrics dict."""
    out = Path(workdir) / "metrics.json"
    argv = [*flags, "--model", model, "--seed", str(seed), "--quiet", "--metrics-out", str(out)]
    with contextlib.redirect_stderr(io.StringIO()) as err:
        code = train_script.main(argv)
    if code:
        raise SystemExit(f"train.py {' '.join(argv)} failed ({code}):\n{err.getvalue()[-2000:]}")
    return json.loads(out.read_text())


def baseline(train_script, baselines, flags, seed):
    """scikit-learn's LR on the split and features that ``flags`` give."""
    args = train_script.parse_args([*flags, "--seed", str(seed)])
    train_data, valid_data = train_script.open_data(args)
    train_data.build_ids()
    return baselines.sklearn_lr(train_data, valid_data)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data", default=",".join(DATASETS), help="data sets, comma-separated")
    p.add_argument("--models", default="lr,fm,deepfm")
    p.add_argument("--candidates", default=",".join(DEFAULT_CANDIDATES),
                   help="names from CANDIDATES, comma-separated")
    p.add_argument("--candidate", action="append", default=[], metavar="NAME=FLAGS",
                   help="an extra candidate, e.g. 'long=--epochs 10' (repeatable)")
    p.add_argument("--seeds", type=int, default=None, help="splits of the small samples")
    p.add_argument("--json", help="write every figure here")
    a = p.parse_args(argv)
    for item in a.candidate:
        name, _, flags = item.partition("=")
        CANDIDATES[name] = flags.split()
    if a.candidate and a.candidates == ",".join(DEFAULT_CANDIDATES):
        a.candidates = ",".join([*DEFAULT_CANDIDATES, *(c.partition("=")[0] for c in a.candidate)])
    train_script, baselines = _load("train"), _load("baselines")
    rows, table = [], ["| data | candidate | model | AUC | logloss | sklearn LR AUC | "
                       "sklearn LR logloss | epochs run | best epoch's AUC |",
                       "|---|---|---|---|---|---|---|---|---|"]
    with tempfile.TemporaryDirectory() as tmp:
        for name in a.data.split(","):
            flags, splits = DATASETS[name]
            if not SHARED.exists() and name != "synthetic":
                print(f"skipping {name}: {SHARED} is absent", file=sys.stderr)
                continue
            seeds = range(a.seeds or splits or 1)
            base = [baseline(train_script, baselines, flags, s) for s in seeds]
            base_auc = sum(b["auc"] for b in base) / len(base)
            spread = (f" +- {statistics.stdev(b['auc'] for b in base):.4f}" if len(base) > 1
                      else "")
            base_ll = sum(b["logloss"] for b in base) / len(base)
            for cand in a.candidates.split(","):
                for model in a.models.split(","):
                    started = time.perf_counter()
                    ms = [run(train_script, flags + CANDIDATES[cand], model, s, tmp) for s in seeds]
                    auc = sum(m["auc"] for m in ms) / len(ms)
                    ll = sum(m["logloss"] for m in ms) / len(ms)
                    epochs = sum(len(m["history"]) for m in ms) / len(ms)
                    best = sum(max((h["auc"] for h in m["history"] if h["auc"] is not None),
                                   default=float("nan")) for m in ms) / len(ms)
                    rows.append(dict(data=name, candidate=cand, model=model, auc=auc, logloss=ll,
                                     sklearn_auc=base_auc, sklearn_logloss=base_ll,
                                     history=[m["history"] for m in ms]))
                    table.append(f"| {name} | {cand} | {model} | {auc:.4f} | {ll:.4f} | "
                                 f"{base_auc:.4f}{spread} | {base_ll:.4f} | {epochs:.1f} | "
                                 f"{best:.4f} |")
                    print(f"{table[-1]}  ({time.perf_counter() - started:.0f} s)",
                          file=sys.stderr, flush=True)
    if a.json:
        Path(a.json).write_text(json.dumps(rows, indent=1))
    print("\n".join(table))


if __name__ == "__main__":
    main()
