#!/usr/bin/env python
"""The README's results table: train each (data set, model) with
scripts/train.py and print AUC, logloss and samples/s as Markdown.

    python scripts/results.py            # needs ../shared/datasets for iPinYou

Each run prints a line to stderr when it starts and its row when it ends
(under a minute in all on 2 cores); the table goes to stdout.
"""
import importlib.util
import json
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
IPINYOU = ROOT.parent / "shared" / "datasets" / "ipinyou_deepctr"

spec = importlib.util.spec_from_file_location("train_script", ROOT / "scripts" / "train.py")
train_script = importlib.util.module_from_spec(spec)
spec.loader.exec_module(train_script)

IPINYOU_ARGS = ["--format", "libsvm", "--data", str(IPINYOU / "train.fm.txt"),
                "--valid", str(IPINYOU / "test.fm.txt"), "--num-fields", "16",
                "--sparse-optimizer", "adagrad", "--sparse-learning-rate", "0.2",
                "--dense-learning-rate", "0.01", "--epochs", "2"]
RUNS = [
    ("iPinYou sample (train -> test)", "lr", IPINYOU_ARGS),
    ("iPinYou sample (train -> test)", "fm", IPINYOU_ARGS),
    ("synthetic (default, 400k rows)", "lr", []),
    ("synthetic (default, 400k rows)", "fm", []),
    ("synthetic (default, 400k rows)", "deepfm", []),
]


def main():
    rows = ["| data | model | AUC | logloss | best possible AUC | train samples/s |",
            "|---|---|---|---|---|---|"]
    with tempfile.TemporaryDirectory() as tmp:
        for i, (data, model, args) in enumerate(RUNS):
            if args and not IPINYOU.exists():
                print(f"skipping {data}: {IPINYOU} is absent", file=sys.stderr)
                continue
            out = Path(tmp) / f"{i}.json"
            print(f"[{i + 1}/{len(RUNS)}] {data}, {model} ...", file=sys.stderr, flush=True)
            started = time.perf_counter()
            code = train_script.main([*args, "--model", model, "--quiet",
                                      "--metrics-out", str(out)])
            if code:
                raise SystemExit(f"{data} / {model} failed (exit {code})")
            m = json.loads(out.read_text())
            planted = f"{m['planted_auc']:.4f}" if "planted_auc" in m else "-"
            rows.append(f"| {data} | {model} | {m['auc']:.4f} | {m['logloss']:.4f} | "
                        f"{planted} | {m['samples_per_second']:,.0f} |")
            print(f"{rows[-1]}  ({time.perf_counter() - started:.0f} s)", file=sys.stderr)
    print("\n".join(rows))


if __name__ == "__main__":
    main()
