"""The synthetic click log: seeded, well formed, with a reported planted optimum."""
import numpy as np
import pytest

from sparse_train.data import SyntheticClickLog, open_dataset
from sparse_train.metrics import auc

from _data_reference import assert_same_batches, collect


def brute_force_auc(labels, scores):
    """P(score of a random positive > a random negative), ties count half."""
    pos = scores[labels > 0.5]
    neg = scores[labels <= 0.5]
    greater = (pos[:, None] > neg[None, :]).sum()
    ties = (pos[:, None] == neg[None, :]).sum()
    return (greater + 0.5 * ties) / (pos.size * neg.size)


def test_auc_the_log_scores_with_against_pairwise_count():
    # the synthetic log's planted AUC is metrics.auc (one AUC in the package)
    rng = np.random.default_rng(0)
    labels = (rng.random(300) < 0.3).astype(np.float32)
    scores = np.round(rng.normal(size=300) + labels, 1)  # many ties
    assert auc(labels, scores) == pytest.approx(brute_force_auc(labels, scores), abs=1e-12)


@pytest.fixture(scope="module")
def log():
    return SyntheticClickLog(30_000, seed=7)


def test_planted_auc_is_reported_and_well_above_chance(log):
    assert 0.7 < log.planted_auc < 1.0
    assert 0.0 < log.planted_logloss < np.log(2)
    assert 0.1 < log.click_rate < 0.5
    labels = collect(log)[0]
    assert log.click_rate == pytest.approx(labels.mean())


def test_interactions_carry_signal(log):
    # without its pairwise term the planted logit ranks clearly worse, so a
    # model with interactions (FM, DeepFM) has room to beat LR
    assert log.planted_auc - log.planted_linear_auc > 0.02


def test_batches_are_well_formed(log):
    spec = log.spec
    assert [f.name for f in spec.sparse_features] == [f"c{i}" for i in range(8)] + ["m0", "m1"]
    assert spec.dense_features == ("x0", "x1", "x2", "x3")
    sizes = []
    for batch in log.batches(batch_size=4096):
        sizes.append(batch.size)
        assert batch.dense.shape == (batch.size, 4) and batch.dense.dtype == np.float32
        assert set(np.unique(batch.labels)) <= {0.0, 1.0}
        for feature in spec.sparse_features:
            ragged = batch.sparse[feature.name]
            assert ragged.values.min() >= 0 and ragged.values.max() < feature.num_embeddings
            lengths = ragged.lengths
            if feature.multi_hot:
                assert lengths.min() >= 1 and lengths.max() <= 5
            else:
                assert (lengths == 1).all()
    assert sizes == [4096] * 7 + [30_000 - 7 * 4096]


def test_zipf_frequencies(log):
    values = collect(log)[2]["c0"][0]
    counts = np.sort(np.bincount(values, minlength=100))[::-1]
    # rank 1 vs rank 10 ~ 10 ** 1.1 under Zipf(1.1)
    assert 6 < counts[0] / counts[9] < 20


def test_seeded_reproducibility():
    a = SyntheticClickLog(2000, seed=3)
    b = SyntheticClickLog(2000, seed=3)
    c = SyntheticClickLog(2000, seed=4)
    assert_same_batches(list(a.batches(batch_size=500)), list(b.batches(batch_size=500)))
    assert a.planted_auc == b.planted_auc
    assert not np.array_equal(collect(a)[0], collect(c)[0])
    # shuffling is seeded too, and a permutation of the rows
    s1 = collect(a, shuffle=True, seed=1)
    assert_same_batches(list(a.batches(shuffle=True, seed=1)), list(b.batches(shuffle=True, seed=1)))
    np.testing.assert_array_equal(np.sort(s1[1][:, 0]), np.sort(collect(a)[1][:, 0]))


def test_split_views(log):
    train, valid = log.split(0.2, seed=0)
    assert train.num_examples + valid.num_examples == 30_000
    assert abs(valid.num_examples / 30_000 - 0.2) < 0.02
    assert train.spec == valid.spec == log.spec
    assert 0.7 < valid.planted_auc < 1.0 and valid.planted_auc != train.planted_auc
    all_dense = collect(log)[1]
    np.testing.assert_array_equal(np.sort(np.concatenate([collect(train)[1][:, 0],
                                                          collect(valid)[1][:, 0]])),
                                  np.sort(all_dense[:, 0]))


def test_open_dataset_synthetic():
    ds = open_dataset(format="synthetic", num_examples=1000, seed=1, batch_size=300,
                      categorical_sizes=(5, 6), multi_hot_sizes=(), num_dense=0)
    assert [b.size for b in ds] == [300, 300, 300, 100]
    assert ds.spec.num_dense == 0 and len(ds.spec.sparse_features) == 2
    with pytest.raises(ValueError, match="num_examples must be a positive integer"):
        open_dataset(format="synthetic", num_examples=0)
    with pytest.raises(ValueError, match="path must be None"):
        open_dataset("x", "synthetic")
