"""scripts/baselines.py: the scikit-learn LR baseline sees our reader's features."""
import importlib.util
from pathlib import Path

import numpy as np
import pytest

from sparse_train.data import Schema, open_dataset

ROOT = Path(__file__).resolve().parents[1]
_spec = importlib.util.spec_from_file_location("baselines", ROOT / "scripts" / "baselines.py")
baselines = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(baselines)

SCHEMA = Schema.from_dict({"data": {"header": True}, "label": {"column": "y"}, "features": [
    {"name": "c", "type": "categorical"},
    {"name": "w", "type": "multi_hot", "separator": "|"},
    {"name": "x", "type": "numeric", "normalizer": "standard"}]})
TEXT = "y,c,w,x\n1,a,p|q|p,1\n0,b,,3\n1,a,q,\n0,b,r|p,8\n"


def test_design_matrix_against_brute_force(tmp_path):
    pytest.importorskip("scipy")
    path = tmp_path / "d.csv"
    path.write_text(TEXT)
    ds = open_dataset(path, "csv", schema=SCHEMA, batch_size=3)
    x, y = baselines.design_matrix(ds)
    c, w = ds.vocabulary["c"], ds.vocabulary["w"]
    vc = c.num_embeddings
    expected = np.zeros((4, vc + w.num_embeddings + 1))
    for row, (cat, words) in enumerate([("a", "pq"), ("b", ""), ("a", "q"), ("b", "rp")]):
        expected[row, c.lookup([cat])[0]] = 1.0
        ids = w.lookup(list(words)) if words else [0]  # empty bag: the missing id
        expected[row, vc + np.asarray(ids)] = 1.0      # indicators: p twice is still 1
    seen = np.array([1.0, 3.0, 8.0])
    expected[:, -1] = (np.array([1.0, 3.0, seen.mean(), 8.0]) - seen.mean()) / seen.std()
    np.testing.assert_allclose(x.toarray(), expected, rtol=1e-6, atol=1e-7)
    np.testing.assert_array_equal(y, [1, 0, 1, 0])


def test_sklearn_lr_scores_the_valid_rows(tmp_path):
    pytest.importorskip("sklearn", reason="the baseline needs the optional scikit-learn")
    (tmp_path / "t.csv").write_text(TEXT)
    (tmp_path / "v.csv").write_text("y,c,w,x\n1,a,p,2\n0,b,r,9\n")
    result = baselines.sklearn_lr_csv(tmp_path / "t.csv", tmp_path / "v.csv", SCHEMA)
    assert result["auc"] == 1.0 and result["valid_rows"] == 2 and 0 < result["logloss"] < 0.7
