"""Model quality with the DEFAULT flags of scripts/train.py on real data,
against scikit-learn's LogisticRegression (C=1, lbfgs) on the same split and
the same features (``scripts/baselines.py``): issue 11's bar.

Needs ../shared/datasets and scikit-learn (extra ``compare``); skips without.
"""
import importlib.util
import tempfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared" / "datasets"

pytest.importorskip("sklearn", reason="the baseline needs scikit-learn: pip install -e '.[compare]'")
if not SHARED.exists():
    pytest.skip(f"{SHARED} is absent (real data samples)", allow_module_level=True)


def _load(name):
    spec = importlib.util.spec_from_file_location(name, ROOT / "scripts" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


sweep = _load("sweep")
train_script = sweep._load("train")
baselines = sweep._load("baselines")

_BASELINES = {}


def _figures(data, model):
    """(our, sklearn's) mean {auc, logloss} on data set ``data`` of
    sweep.DATASETS (over its random splits for the small samples)."""
    flags, splits = sweep.DATASETS[data]
    seeds = range(splits or 1)
    if data not in _BASELINES:
        _BASELINES[data] = _mean([sweep.baseline(train_script, baselines, flags, s)
                                  for s in seeds])
    with tempfile.TemporaryDirectory() as tmp:
        ours = _mean([sweep.run(train_script, flags, model, s, tmp) for s in seeds])
    return ours, _BASELINES[data]


def _mean(figures):
    return {k: sum(f[k] for f in figures) / len(figures) for k in ("auc", "logloss")}


#: Our LR's AUC must be >= sklearn's - 0.005 (issue 11), on every real sample.
#: Taobao and the MovieLens sample met it once early stopping counted steps
#: too (--early-stopping-patience-steps; they train one step an epoch).
LR_SETS = ["clothing", "ipinyou", "xlearn_criteo", "taobao", "criteo_sample", "avazu_sample",
           "movielens_sample"]


@pytest.mark.parametrize("data", LR_SETS)
def test_lr_with_default_flags_is_within_0005_auc_of_sklearn(data):
    ours, theirs = _figures(data, "lr")
    assert ours["auc"] >= theirs["auc"] - 0.005, (data, ours["auc"], theirs["auc"])


#: FM at or above sklearn's LR where the data shows it (issue 11).
@pytest.mark.parametrize("data", ["clothing", "ipinyou", "xlearn_criteo", "taobao",
                                  "avazu_sample"])
def test_fm_with_default_flags_is_at_least_sklearn(data):
    ours, theirs = _figures(data, "fm")
    assert ours["auc"] >= theirs["auc"], (data, ours["auc"], theirs["auc"])


def test_deepfm_with_default_flags_beats_sklearn_on_clothing_reviews():
    ours, theirs = _figures("clothing", "deepfm")
    assert ours["auc"] >= theirs["auc"], (ours["auc"], theirs["auc"])
