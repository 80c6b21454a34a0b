#!/usr/bin/env python
"""The README's results table: every data set of ``scripts/sweep.py`` (the
real samples in ``../shared/datasets`` and the synthetic log) trained with
the DEFAULT flags of ``scripts/train.py``, beside scikit-learn's
LogisticRegression on the same split and features.

    pip install -e '.[compare]'          # scikit-learn, for the baseline
    python scripts/results.py            # about 5 minutes on 2 cores
    python scripts/results.py --data clothing,ipinyou --models lr

Each run prints a line to stderr when it ends; the Markdown table goes to
stdout. Small samples (a few hundred rows) are averaged over several random
train/validation splits (``sweep.DATASETS``); "best possible" is the
synthetic log's planted model on the same validation rows.
"""
import argparse
import importlib.util
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _load(name):
    spec = importlib.util.spec_from_file_location(name, ROOT / "scripts" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


sweep = _load("sweep")
train_script = sweep._load("train")

#: The synthetic log of the results table: the main job's default size.
SYNTHETIC = ([], None)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data", default=",".join(sweep.DATASETS), help="data sets, comma-separated")
    p.add_argument("--models", default="lr,fm,deepfm")
    a = p.parse_args(argv)
    try:
        baselines = sweep._load("baselines")
        import sklearn  # noqa: F401
    except ImportError:
        baselines = None
        print("scikit-learn is absent (pip install -e '.[compare]'): no baseline column",
              file=sys.stderr)
    rows = ["| data | split | model | AUC | logloss | sklearn LR AUC | sklearn LR logloss | "
            "best possible AUC | epochs (best) | train samples/s |",
            "|---|---|---|---|---|---|---|---|---|---|"]
    with tempfile.TemporaryDirectory() as tmp:
        for name in a.data.split(","):
            flags, splits = SYNTHETIC if name == "synthetic" else sweep.DATASETS[name]
            if name != "synthetic" and not sweep.SHARED.exists():
                print(f"skipping {name}: {sweep.SHARED} is absent", file=sys.stderr)
                continue
            seeds = range(splits or 1)
            split = (f"mean of {len(seeds)} random 70/30 splits" if splits else
                     "train -> test" if "--valid" in flags else "90/10")
            base = ([baselines and sweep.baseline(train_script, baselines, flags, s)
                     for s in seeds] if baselines else None)
            for model in a.models.split(","):
                started = time.perf_counter()
                ms = [sweep.run(train_script, flags, model, s, tmp) for s in seeds]
                mean = lambda key: sum(m[key] for m in ms) / len(ms)  # noqa: E731
                planted = f"{mean('planted_auc'):.4f}" if "planted_auc" in ms[0] else "-"
                sk = ((f"{sum(b['auc'] for b in base) / len(base):.4f}",
                       f"{sum(b['logloss'] for b in base) / len(base):.4f}")
                      if base else ("-", "-"))
                epochs = sum(len(m["history"]) for m in ms) / len(ms)
                best = [m.get("best_epoch") for m in ms]
                best = (f" ({sum(best) / len(best):.1f})" if all(b is not None for b in best)
                        else "")
                speed = [m["samples_per_second"] for m in ms if m.get("samples_per_second")]
                rows.append(f"| {name} | {split} | {model} | {mean('auc'):.4f} | "
                            f"{mean('logloss'):.4f} | {sk[0]} | {sk[1]} | {planted} | "
                            f"{epochs:.1f}{best} | "
                            f"{sum(speed) / len(speed) if speed else 0:,.0f} |")
                print(f"{rows[-1]}  ({time.perf_counter() - started:.0f} s)", file=sys.stderr,
                      flush=True)
    print("\n".join(rows))


if __name__ == "__main__":
    main()
