"""One scan of a batch's bags before the fused lookup
(``kernels.bag_checks.bags_look_valid``): against a brute-force check, and
each bad input still raises the per-feature message of ``check_bags``."""
import numpy as np
import pytest

from sparse_train import collections
from sparse_train.data import Batch, DataSpec, FeatureSpec
from sparse_train.functional import check_bags
from sparse_train.kernels.bag_checks import bags_look_valid
from sparse_train.nn import EmbeddingBagCollection
from sparse_train.ragged import Ragged


@pytest.fixture(autouse=True)
def _fresh_collections():
    collections.reset_collections()
    yield
    collections.reset_collections()


def _brute_valid(features, sizes, weights):
    for (values, offsets), size in zip(features, sizes):
        if len(offsets) < 1 or offsets[0] != 0 or offsets[-1] != len(values):
            return False
        if any(b < a for a, b in zip(offsets[:-1], offsets[1:])):
            return False
        if any(not 0 <= i < size for i in values):
            return False
    return all(np.isfinite(w) for w in weights)


def _random_features(rng, sizes, bags):
    features = []
    for size in sizes:
        lengths = rng.integers(0, 4, bags)
        offsets = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)
        features.append((rng.integers(0, size, offsets[-1]).astype(np.int64), offsets))
    return features


def _scan(features, sizes, weights):
    counts = np.array([0] + [len(v) for v, _ in features], np.int64)
    return bool(bags_look_valid(np.concatenate([v for v, _ in features]), np.cumsum(counts),
                                np.stack([o for _, o in features]),
                                np.array(sizes, np.int64), weights))


MUTATIONS = [
    ("valid", lambda f, w: None),
    ("negative id", lambda f, w: f[1][0].__setitem__(0, -1)),
    ("id == size", lambda f, w: f[2][0].__setitem__(-1, 7)),
    ("huge id", lambda f, w: f[0][0].__setitem__(0, 2 ** 62)),
    ("first offset", lambda f, w: f[1][1].__setitem__(0, 1)),
    ("decrease", lambda f, w: f[2][1].__setitem__(3, f[2][1][2] - 1)),
    ("last offset", lambda f, w: f[0][1].__setitem__(-1, f[0][1][-1] - 1)),
    ("nan weight", lambda f, w: w.__setitem__(3, np.nan)),
    ("inf weight", lambda f, w: w.__setitem__(-1, -np.inf)),
]


# every mutation with weights; those that spoil a weight need some, so
# only the others also run without weights
CASES = [pytest.param(name, mutate, weighted, id=f"{name}-{'weighted' if weighted else 'plain'}")
         for weighted in (False, True) for name, mutate in MUTATIONS
         if weighted or "weight" not in name]


@pytest.mark.parametrize("name, mutate, weighted", CASES)
def test_scan_agrees_with_brute_force(name, mutate, weighted):
    rng = np.random.default_rng(3)
    sizes = [5, 11, 7]
    features = _random_features(rng, sizes, 9)
    for _, offsets in features:   # every feature has ids (the mutations need some)
        offsets[1:] += np.arange(1, offsets.shape[0])
    features = [(np.resize(v, o[-1]) if len(v) else np.zeros(o[-1], np.int64), o)
                for v, o in features]
    features = [(np.minimum(v, s - 1), o) for (v, o), s in zip(features, sizes)]
    total = sum(len(v) for v, _ in features)
    weights = (rng.random(total).astype(np.float32) if weighted
               else np.empty(0, np.float32))
    mutate(features, weights)
    assert _scan(features, sizes, weights) == _brute_valid(
        [(list(v), list(o)) for v, o in features], sizes, weights)
    assert _scan(features, sizes, weights) == (name == "valid")


SPEC = DataSpec((FeatureSpec("user", 6), FeatureSpec("item", 9),
                 FeatureSpec("tags", 9, multi_hot=True, weighted=True)), ("age",))


def _sparse():
    return {"user": Ragged(np.array([1, 5, 1]), np.array([0, 1, 2, 3])),
            "item": Ragged(np.array([8, 0, 3]), np.array([0, 1, 2, 3])),
            "tags": Ragged(np.array([2, 3, 8, 2]), np.array([0, 2, 2, 4]),
                           np.array([1.0, 0.5, 2.0, 1.0], np.float32))}


def _batch(sparse):
    return Batch(np.zeros(3, np.float32), np.zeros((3, 1), np.float32), sparse)


BAD = [
    ("user", lambda r: r.values.__setitem__(1, 6)),
    ("item", lambda r: r.values.__setitem__(0, -3)),
    ("tags", lambda r: r.offsets.__setitem__(1, 5)),
    ("tags", lambda r: r.offsets.__setitem__(0, 1)),
    ("user", lambda r: r.offsets.__setitem__(3, 2)),
    ("tags", lambda r: r.weights.__setitem__(2, np.inf)),
]


@pytest.mark.parametrize("feature, spoil", BAD)
def test_a_bad_feature_raises_the_per_feature_message(feature, spoil):
    ebc = EmbeddingBagCollection(SPEC, 2, "scan/emb", combiner={"tags": "mean"})
    sparse = _sparse()
    spoil(sparse[feature])
    bag = ebc.bags[feature]
    ragged = sparse[feature]
    with pytest.raises(ValueError) as expected:  # the per-feature check, as today
        check_bags(ragged.values, ragged.offsets, ragged.weights, bag.table.num_embeddings,
                   bag.combiner, None, feature)
    with pytest.raises(ValueError) as got:
        ebc.stacked(_batch(sparse))
    assert str(got.value) == str(expected.value) and repr(feature) in str(got.value)


@pytest.mark.parametrize("combiner", ["sum", "mean", {"tags": "sqrtn"}])
def test_the_screened_fuse_is_the_checked_one(monkeypatch, combiner):
    ebc = EmbeddingBagCollection(SPEC, 2, "scan/emb2", combiner=combiner)
    sparse = _sparse()
    screened = ebc._fused_bags(sparse)
    assert ebc._screened_bags(sparse) is not None
    monkeypatch.setattr(ebc, "_screened_bags", lambda *a: None)
    checked = ebc._fused_bags(sparse)
    for a, b in zip(screened, checked):
        if isinstance(a, np.ndarray):
            np.testing.assert_array_equal(a, b)
        else:
            assert a == b
