"""Inference throughput of DeepFM: ``models.predict`` against onnxruntime on
the exported graph, in the same process, rounds alternating A B A B.

    python scripts/bench_predict.py                     # Criteo-shaped DeepFM, a minute
    python scripts/bench_predict.py --quick             # a few seconds
    python scripts/bench_predict.py --batch-sizes 1,256,4096 --threads 2 --rounds 7

Needs the ``onnx`` extra (``pip install -e .[onnx]``). Rows/s are medians over
rounds; the first call of each (Numba compile or cache load, onnxruntime's
session warm-up) is kept out. "onnxruntime" times ``session.run`` on a ready
feed; "+ padding" adds ``export.onnx_inputs`` (the Ragged ids padded to
[B, max_bag]), which a server holding ragged ids would pay too.
"""
import argparse
import os
import statistics
import sys
import tempfile
import time

import sparse_train as st  # noqa: F401  first: sets the thread pools' spin limits
import numpy as np

from sparse_train import Ragged
from sparse_train.data import Batch, DataSpec, FeatureSpec
from sparse_train.export import export_onnx, onnx_inputs
from sparse_train.models import build_model, predict


def make_batch(rng, spec, size):
    sparse = {}
    for f in spec.sparse_features:
        if f.multi_hot:
            lengths = rng.integers(0, 6, size)
            sparse[f.name] = Ragged.from_lengths(rng.integers(0, f.num_embeddings, lengths.sum()),
                                                 lengths)
        else:
            sparse[f.name] = Ragged.from_dense(rng.integers(0, f.num_embeddings, size))
    return Batch(np.zeros(size, np.float32),
                 rng.standard_normal((size, spec.num_dense)).astype(np.float32), sparse)


def rows_per_second(fn, rows, rounds):
    times = []
    for _ in range(rounds):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return rows / statistics.median(times)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch-sizes", default="1,64,1024,8192")
    parser.add_argument("--rows", type=int, default=100_000, help="rows of each table")
    parser.add_argument("--embedding-dim", type=int, default=16)
    parser.add_argument("--hidden-units", default="400,400,400")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--quick", action="store_true", help="small tables and batches")
    args = parser.parse_args(argv)
    try:
        import onnxruntime as ort
    except ImportError:
        print("onnxruntime is not installed: pip install -e '.[onnx]'", file=sys.stderr)
        return 2
    if args.quick:
        args.batch_sizes, args.rows, args.rounds, args.hidden_units = "1,256", 1000, 3, "64,64"
    import numba
    numba.set_num_threads(min(args.threads, numba.config.NUMBA_NUM_THREADS))
    # Criteo's shape: 13 numeric, 26 categorical features; one multi-hot to
    # exercise padding.
    features = [FeatureSpec(f"C{i}", args.rows) for i in range(1, 26)]
    features.append(FeatureSpec("tags", args.rows, multi_hot=True))
    spec = DataSpec(tuple(features), tuple(f"I{i}" for i in range(1, 14)))
    hidden = tuple(int(h) for h in args.hidden_units.split(","))
    model = build_model("deepfm", spec, embedding_dim=args.embedding_dim, hidden_units=hidden,
                        scope="bench_predict")
    path = export_onnx(model, os.path.join(tempfile.mkdtemp(), "deepfm.onnx"))
    options = ort.SessionOptions()
    options.intra_op_num_threads = args.threads
    options.inter_op_num_threads = 1
    session = ort.InferenceSession(path, options, providers=["CPUExecutionProvider"])
    rng = np.random.default_rng(0)
    print(f"DeepFM: 26 tables x {args.rows} rows x D={args.embedding_dim}, 13 numeric, "
          f"MLP {hidden}, {args.threads} threads; rows/s, median of {args.rounds} rounds")
    print(f"{'batch':>7} {'predict':>12} {'onnxruntime':>12} {'+ padding':>12} {'max |diff|':>11}")
    for size in (int(b) for b in args.batch_sizes.split(",")):
        batch = make_batch(rng, spec, size)
        feed = onnx_inputs(batch, spec)
        ours = predict(model, batch)  # warm-up, kept out of the rounds
        theirs = session.run(["probability"], feed)[0]
        results = {"predict": [], "ort": [], "ort_pad": []}
        for _ in range(args.rounds):  # A B C A B C: the same load for each
            results["predict"].append(rows_per_second(lambda: predict(model, batch), size, 1))
            results["ort"].append(rows_per_second(
                lambda: session.run(["probability"], feed), size, 1))
            results["ort_pad"].append(rows_per_second(
                lambda: session.run(["probability"], onnx_inputs(batch, spec)), size, 1))
        med = {k: statistics.median(v) for k, v in results.items()}
        print(f"{size:>7} {med['predict']:>12,.0f} {med['ort']:>12,.0f} {med['ort_pad']:>12,.0f} "
              f"{float(np.abs(ours - theirs).max()):>11.1e}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
