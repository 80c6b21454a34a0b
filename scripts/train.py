#!/usr/bin/env python
"""Train a logistic regression over embedding-bag features on a synthetic
click log generated in memory (placeholder main job until the model zoo
lands): shows progress and the falling loss, exits 0."""
import argparse
import sys

import numpy as np

import sparse_train as st
from sparse_train.progress import Progress


def synthetic_log(num_examples, num_features, vocab, seed):
    """Ids (one bag of 1-3 ids per feature) and labels from a planted LR."""
    rng = np.random.default_rng(seed)
    planted = rng.normal(0.0, 1.0, (num_features, vocab)).astype(np.float32)
    lengths = rng.integers(1, 4, (num_examples, num_features))
    ids = [rng.zipf(1.3, lengths[:, f].sum()) % vocab for f in range(num_features)]
    offsets = [np.concatenate([[0], np.cumsum(lengths[:, f])]) for f in range(num_features)]
    logit = sum(st.functional.embedding_bag(planted[f][:, None].copy(), ids[f], offsets[f],
                                            combiner="mean")[:, 0] for f in range(num_features))
    labels = (rng.random(num_examples) < 1 / (1 + np.exp(-logit))).astype(np.float32)
    return ids, offsets, labels


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--examples", type=int, default=200_000)
    parser.add_argument("--batch-size", type=int, default=4096)
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--learning-rate", type=float, default=0.5)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    num_features, vocab = 8, 10_000
    ids, offsets, labels = synthetic_log(args.examples, num_features, vocab, args.seed)
    tables = [st.EmbeddingTable(vocab, 1, f"lr/feature_{f}", initializer="zeros")
              for f in range(num_features)]
    global_step = st.GlobalStep()
    optimizer = st.optim.AdagradDecay(args.learning_rate, global_step, accumulator_decay_step=20)
    for epoch in range(args.epochs):
        bar = Progress(args.examples, f"epoch {epoch + 1}", unit="ex")
        total = 0.0
        for start in range(0, args.examples, args.batch_size):
            stop = min(start + args.batch_size, args.examples)
            bags = []
            for f in range(num_features):
                lo, hi = offsets[f][start], offsets[f][stop]
                bags.append((ids[f][lo:hi], offsets[f][start:stop + 1] - lo))
            logits = sum(t.lookup(v, o, combiner="mean")[:, 0] for t, (v, o) in zip(tables, bags))
            y = labels[start:stop]
            loss = np.mean(np.logaddexp(0, logits) - y * logits)
            d_logits = ((1 / (1 + np.exp(-logits)) - y) / len(y)).astype(np.float32)[:, None]
            grads = [(t.lookup_grad(d_logits, v, o, combiner="mean"), t.weight)
                     for t, (v, o) in zip(tables, bags)]
            optimizer.apply_gradients(grads, global_step=global_step)
            total += loss * len(y)
            bar.update(len(y), loss=total / stop)
        bar.close()
        print(f"epoch {epoch + 1}: mean loss {total / args.examples:.4f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
