"""Reference models on the same split and features as ours (needs scikit-learn).

``sklearn_lr`` fits scikit-learn's ``LogisticRegression`` on the rows our
reader yields, so both see identical features: every sparse feature one-hot
(a multi-hot bag as bag-of-words indicators; the missing id 0 and the
out-of-vocabulary id 1 are columns like the others), numeric features as the
reader gives them (``sklearn_lr_csv`` opens the files with
``normalizer="standard"``: z-scores with the training mean and std).

    PYTHONPATH=. python scripts/baselines.py --data train.csv --valid test.csv \\
        --schema schema.toml
"""
import argparse
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from sparse_train.data import open_dataset  # noqa: E402

__all__ = ["design_matrix", "sklearn_lr", "sklearn_lr_csv"]


def design_matrix(dataset, spec=None):
    """(X, y) of every row of ``dataset``: X a scipy CSR [n, sum V_f +
    num_dense] float64 (the one-hot / bag-of-words indicator blocks of the
    sparse features in ``spec`` order, then the numeric columns), y [n].

    Args:
        dataset: a ``Dataset`` (a validation set opened ``like=`` the
            training one, so ids and statistics agree).
        spec: the ``DataSpec`` fixing the column blocks (default: the
            dataset's own).
    """
    import scipy.sparse as sp
    spec = dataset.spec if spec is None else spec
    starts = np.cumsum([0] + [f.num_embeddings for f in spec.sparse_features])
    blocks, labels = [], []
    for batch in dataset.batches(batch_size=8192):
        n = batch.size
        rows, cols = [], []
        for f, start in zip(spec.sparse_features, starts):
            bag = batch.sparse[f.name]
            rows.append(np.repeat(np.arange(n), np.diff(bag.offsets)))
            cols.append(start + bag.values)
        rows, cols = np.concatenate(rows), np.concatenate(cols)
        onehot = sp.csr_matrix((np.ones(rows.shape[0]), (rows, cols)), shape=(n, starts[-1]))
        onehot.sum_duplicates()
        onehot.data[:] = 1.0  # indicators: a word twice in a bag is still 1
        dense = sp.csr_matrix(np.asarray(batch.dense, np.float64).reshape(n, -1))
        blocks.append(sp.hstack([onehot, dense], format="csr"))
        labels.append(batch.labels)
    return sp.vstack(blocks, format="csr"), np.concatenate(labels).astype(np.float64)


def sklearn_lr(train, valid, C=1.0, max_iter=5000):
    """Fit ``LogisticRegression(C=C, max_iter=max_iter)`` (lbfgs, L2) on
    ``train`` and score ``valid`` (two ``Dataset``s, valid ``like=train``).

    Returns dict with ``auc`` and ``logloss`` on valid, ``train_rows``,
    ``valid_rows``, ``columns``.
    """
    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import log_loss, roc_auc_score
    spec = train.spec
    x_train, y_train = design_matrix(train, spec)
    x_valid, y_valid = design_matrix(valid, spec)
    model = LogisticRegression(C=C, max_iter=max_iter).fit(x_train, y_train)
    p = model.predict_proba(x_valid)[:, 1]
    return {"auc": float(roc_auc_score(y_valid, p)), "logloss": float(log_loss(y_valid, p)),
            "train_rows": int(x_train.shape[0]), "valid_rows": int(x_valid.shape[0]),
            "columns": int(x_train.shape[1])}


def sklearn_lr_csv(train_path, valid_path, schema, C=1.0, max_iter=5000, normalizer="standard",
                   **options):
    """``sklearn_lr`` on CSV files read through ``schema`` (numeric columns
    that declare no normalizer get ``normalizer``: "standard" as scikit-learn's
    usual ``StandardScaler``). ``options`` go to ``open_dataset``."""
    train = open_dataset(train_path, "csv", schema=schema, normalizer=normalizer, **options)
    valid = open_dataset(valid_path, "csv", schema=schema, like=train, normalizer=normalizer,
                         **options)
    return sklearn_lr(train, valid, C, max_iter)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data", required=True)
    parser.add_argument("--valid", required=True)
    parser.add_argument("--schema", required=True)
    parser.add_argument("--normalizer", default="standard")
    parser.add_argument("--C", type=float, default=1.0)
    args = parser.parse_args(argv)
    result = sklearn_lr_csv(args.data, args.valid, args.schema, args.C,
                            normalizer=args.normalizer)
    print(f"sklearn LR: AUC {result['auc']:.4f}  logloss {result['logloss']:.4f}  "
          f"({result['train_rows']} -> {result['valid_rows']} rows, {result['columns']} columns)")


if __name__ == "__main__":
    main()
