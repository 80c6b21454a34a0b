"""ONNX export: onnxruntime's probabilities equal ``models.predict`` after a
short training run, for every model, on bags that are empty, padded, hold
ids outside the table, carry weights or several ids; the numeric transforms
in the graph equal their NumPy definitions; big tables go to external data."""
import doctest
import importlib

import numpy as np
import pytest

onnx = pytest.importorskip("onnx", reason="the 'onnx' extra (onnx) is not installed")
ort = pytest.importorskip("onnxruntime", reason="the 'onnx' extra (onnxruntime) is not installed")

from sparse_train import GlobalStep, Ragged, collections, optim  # noqa: E402
from sparse_train.data import Batch, DataSpec, FeatureSpec  # noqa: E402
from sparse_train.export import export_onnx, onnx_inputs, onnx_model  # noqa: E402
from sparse_train.models import build_model, predict, train_step  # noqa: E402

SPEC = DataSpec((FeatureSpec("user", 11), FeatureSpec("item", 13),
                 FeatureSpec("tags", 7, multi_hot=True, weighted=True),
                 FeatureSpec("genres", 5, multi_hot=True)),
                ("age", "price"))
NO_DENSE = DataSpec(SPEC.sparse_features)

SMALL = {"lr": {}, "fm": {}, "wide_deep": {"hidden_units": (6, 5)},
         "deepfm": {"hidden_units": (6, 5)},
         "dcn": {"hidden_units": (6,), "num_cross_layers": 2},
         "dlrm": {"bottom_mlp": (5,), "top_mlp": (6,)}}

#: Ops a lean graph may hold: no Loop, Scan, If, Sequence*.
LEAN_OPS = {"Gather", "Where", "And", "Less", "GreaterOrEqual", "Cast", "Mul", "ReduceSum",
            "Unsqueeze", "Sqrt", "Equal", "Div", "Concat", "Gemm", "MatMul", "Relu", "Tanh",
            "Add", "Sub", "Sigmoid", "Reshape", "Transpose", "Slice", "Greater", "Log", "Clip",
            "LessOrEqual", "IsNaN", "Sign", "Abs"}


@pytest.fixture(autouse=True)
def _fresh_collections():
    collections.reset_collections()
    yield
    collections.reset_collections()


def make_batch(rng, size, spec=SPEC, unknown=False):
    """Random bags: multi-hot ones 0-4 long (empty ones included); with
    ``unknown``, ids outside each table mixed in (returned separately)."""
    sparse, clean = {}, {}
    for feature in spec.sparse_features:
        n = feature.num_embeddings
        lengths = rng.integers(0, 5, size) if feature.multi_hot else np.ones(size, np.int64)
        values = rng.integers(0, n, lengths.sum())
        weights = rng.uniform(0.2, 2.0, lengths.sum()).astype(np.float32) \
            if feature.weighted else None
        clean[feature.name] = Ragged.from_lengths(values, lengths, weights)
        if unknown and feature.multi_hot:  # an id past the table and a negative one
            bad = rng.random(values.shape[0]) < 0.3
            noisy = values.copy()
            noisy[bad] = np.where(rng.random(bad.sum()) < 0.5, n + rng.integers(0, 50, bad.sum()),
                                  -rng.integers(2, 9, bad.sum()))
            sparse[feature.name] = Ragged.from_lengths(noisy, lengths, weights)
            keep = ~bad  # the reference: the same bags without those ids
            bag = np.repeat(np.arange(size), lengths)
            kept_lengths = np.bincount(bag[keep], minlength=size)
            clean[feature.name] = Ragged.from_lengths(values[keep], kept_lengths,
                                                      None if weights is None else weights[keep])
        else:
            sparse[feature.name] = clean[feature.name]
    labels = rng.integers(0, 2, size).astype(np.float32)
    dense = rng.standard_normal((size, spec.num_dense)).astype(np.float32)
    return Batch(labels, dense, clean), Batch(labels, dense, sparse)


def trained(name, spec=SPEC, steps=6, **options):
    model = build_model(name, spec, embedding_dim=4, seed=5, scope=f"export_{name}",
                        **{**SMALL[name], **options})
    gs = GlobalStep()
    sparse_opt, dense_opt = optim.Adagrad(0.2), optim.Adam(0.02)
    rng = np.random.default_rng(1)
    for _ in range(steps):
        train_step(model, make_batch(rng, 16, spec)[0], sparse_opt, dense_opt, gs)
    return model


def session(path_or_proto):
    data = path_or_proto if isinstance(path_or_proto, str) else \
        path_or_proto.SerializeToString()
    return ort.InferenceSession(data, providers=["CPUExecutionProvider"])


def check_parity(model, spec=SPEC, seeds=(11, 12)):
    proto = onnx_model(model)
    onnx.checker.check_model(proto, full_check=True)
    ops = {node.op_type for node in proto.graph.node}
    assert ops <= LEAN_OPS, sorted(ops - LEAN_OPS)
    sess = session(proto)
    for seed in seeds:
        clean, noisy = make_batch(np.random.default_rng(seed), 23, spec, unknown=True)
        expected = predict(model, clean)
        got = sess.run(["probability"], onnx_inputs(noisy, spec))[0]
        assert got.dtype == np.float32 and got.shape == (23,)
        np.testing.assert_allclose(got, expected, rtol=0, atol=1e-5)
        assert np.ptp(expected) > 1e-3  # the model is not constant: the test can fail


@pytest.mark.parametrize("name", sorted(SMALL))
def test_every_model_matches_predict(name):
    check_parity(trained(name))


@pytest.mark.parametrize("name", ["lr", "deepfm", "dcn", "dlrm"])
def test_models_without_numeric_features(name):
    model = trained(name, NO_DENSE)
    assert "dense" not in [i.name for i in onnx_model(model).graph.input]
    check_parity(model, NO_DENSE)


@pytest.mark.parametrize("name", ["fm", "deepfm", "dlrm"])
def test_combiners_and_shared_tables(name):
    # tags: mean of weights (divisor sum w), genres: sqrtn; user and item one table
    model = trained(name, combiner={"tags": "mean", "genres": "sqrtn"},
                    tables={"user": "ids", "item": "ids"})
    check_parity(model)


def test_by_hand_bags():
    """Every edge in one batch, with the expected logit written out for LR."""
    spec = DataSpec((FeatureSpec("g", 4, multi_hot=True),
                     FeatureSpec("w", 3, multi_hot=True, weighted=True)))
    model = build_model("lr", spec, scope="export_hand")
    model.linear.weights.weight.value[:, 0] = [1, 2, 4, 8, 16, 32, 64]  # g: 0-3, w: 4-6
    model.linear.bias.value[...] = -10.0
    ids = {"g": np.array([[0, 2, -1], [-1, -1, -1], [7, 3, 3], [1, -1, 1]]),
           "w": np.array([[2, 0, 9], [0, -1, -1], [-1, -1, -1], [1, 1, 3]])}
    w = np.array([[0.5, 2, 7], [1, 0, 0], [0, 0, 0], [3, 0.25, 1]], np.float32)
    got = session(onnx_model(model)).run(None, {**ids, "w_weights": w})[0]
    # g: mean over its valid ids; w: weighted sum over valid ids (9 and 3 skipped)
    logits = np.array([(1 + 4) / 2 + 0.5 * 64 + 2 * 16, 0 + 16, (8 + 8) / 2 + 0,
                       2 + 3 * 32 + 0.25 * 32]) - 10.0
    np.testing.assert_allclose(got, 1 / (1 + np.exp(-logits)), rtol=1e-6)


def test_transforms_in_the_graph_equal_numpy():
    spec = DataSpec((FeatureSpec("user", 11), FeatureSpec("age_bucket", 6)),
                    ("count", "price", "score"))
    transforms = [
        {"feature": "count", "kind": "log1p"},
        {"feature": "age", "kind": "bucketize", "boundaries": [18, 25, 40, 65], "first_id": 1},
        {"feature": "price", "kind": "standard", "mean": 3.5, "std": 2.0, "log1p": True,
         "clip": [-1.0, 1.5]},
        {"feature": "score", "kind": "minmax", "min": -2.0, "max": 6.0},
    ]
    transforms[1]["feature"] = "age_bucket"
    model = build_model("deepfm", spec, embedding_dim=4, hidden_units=(5,), scope="export_tr")
    rng = np.random.default_rng(3)
    raw = np.stack([rng.choice([-3.0, 0.0, 2.0, 150.0], 40),
                    rng.choice([10, 18, 25, 30, 40, 65, 80], 40),
                    rng.uniform(-5, 60, 40), rng.uniform(-4, 9, 40)], 1).astype(np.float32)
    x = raw.astype(np.float64)  # float64 NumPy definitions of each transform
    count = np.where(x[:, 0] > 0, np.log1p(np.maximum(x[:, 0], 0)), 0.0)
    bucket = 1 + np.searchsorted([18, 25, 40, 65], x[:, 1], side="right")
    price = np.clip((np.where(x[:, 2] > 0, np.log1p(np.maximum(x[:, 2], 0)), 0) - 3.5) / 2.0,
                    -1.0, 1.5)
    score = (x[:, 3] + 2.0) / 8.0
    users = rng.integers(0, 11, 40)
    reference = Batch(np.zeros(40, np.float32),
                      np.stack([count, price, score], 1).astype(np.float32),
                      {"user": Ragged.from_dense(users), "age_bucket": Ragged.from_dense(bucket)})
    feed = onnx_inputs(reference, spec, dense=raw, numeric_transforms=transforms)
    assert sorted(feed) == ["dense", "user"]
    got = session(onnx_model(model, numeric_transforms=transforms)).run(None, feed)[0]
    np.testing.assert_allclose(got, predict(model, reference), rtol=0, atol=1e-6)
    assert {int(b) for b in bucket} == {1, 2, 3, 4, 5}  # every bucket, edges included


def test_bad_transforms_are_named():
    spec = DataSpec((FeatureSpec("user", 11),), ("a", "b"))
    model = build_model("lr", spec, scope="export_badtr")
    with pytest.raises(ValueError, match=r"numeric_transforms\[1\] \('b'\): std must be > 0"):
        onnx_model(model, numeric_transforms=[{"feature": "a"},
                                              {"feature": "b", "kind": "standard",
                                               "mean": 0, "std": 0}])
    with pytest.raises(ValueError, match="model's numeric features are"):
        onnx_model(model, numeric_transforms=[{"feature": "b"}, {"feature": "a"}])
    with pytest.raises(ValueError, match="increasing"):
        onnx_model(model, numeric_transforms=[{"feature": "a"}, {"feature": "b"},
                                              {"feature": "user", "kind": "bucketize",
                                               "boundaries": [3, 1]}])


def test_external_data_round_trip(tmp_path):
    model = trained("deepfm", steps=2)
    path = export_onnx(model, tmp_path / "deepfm.onnx", external_data_threshold=0)
    assert (tmp_path / "deepfm.onnx.data").stat().st_size > model.embedding.weight.value.nbytes
    inline = export_onnx(model, tmp_path / "inline.onnx")
    assert not (tmp_path / "inline.onnx.data").exists()
    onnx.checker.check_model(path)
    clean, noisy = make_batch(np.random.default_rng(4), 9, unknown=True)
    feed = onnx_inputs(noisy, SPEC)
    a = session(path).run(None, feed)[0]
    np.testing.assert_array_equal(a, session(inline).run(None, feed)[0])
    np.testing.assert_allclose(a, predict(model, clean), rtol=0, atol=1e-5)


def test_rejects_what_it_cannot_export(tmp_path):
    with pytest.raises(TypeError, match="CTRModel"):
        onnx_model(object())
    model = build_model("lr", SPEC, scope="export_bad")
    with pytest.raises(ValueError, match="opset"):
        onnx_model(model, opset=11)
    with pytest.raises(FileNotFoundError):
        export_onnx(model, tmp_path / "missing" / "m.onnx")
    spec = DataSpec((FeatureSpec("dense", 3),))
    with pytest.raises(ValueError, match="collides"):
        onnx_model(build_model("lr", spec, scope="export_clash"))


def test_docstring_examples_run():
    result = doctest.testmod(importlib.import_module("sparse_train.export"))
    assert result.attempted > 0 and result.failed == 0


def test_dataset_transforms_let_the_graph_read_raw_file_values(tmp_path):
    """A model trained on a CSV whose numeric columns the reader log1p's,
    exported with ``numeric_transforms=dataset``, takes the file's values."""
    from sparse_train.data import Schema, open_dataset
    schema = Schema.from_dict({"label": {"column": "y"}, "features": [
        {"name": "user", "type": "categorical"}, {"name": "n", "type": "numeric",
                                                  "transform": "log1p"},
        {"name": "m", "type": "numeric"}]})
    rng = np.random.default_rng(0)
    raw = np.stack([rng.choice([-2.0, 0.0, 1.5, 40.0, 900.0], 60),
                    np.round(rng.standard_normal(60), 4)], 1)
    lines = ["y,user,n,m"] + [f"{rng.integers(0, 2)},u{rng.integers(0, 7)},{a!r},{b!r}"
                              for a, b in raw.tolist()]
    (tmp_path / "d.csv").write_text("\n".join(lines) + "\n")
    data = open_dataset(tmp_path / "d.csv", "csv", schema=schema, batch_size=60)
    model = build_model("wide_deep", data.spec, embedding_dim=3, hidden_units=(4,),
                        scope="export_raw")
    batch = next(iter(data))
    feed = onnx_inputs(batch, data.spec, dense=raw.astype(np.float32))
    got = session(onnx_model(model, numeric_transforms=data)).run(None, feed)[0]
    np.testing.assert_allclose(got, predict(model, batch), rtol=0, atol=1e-6)
    assert not np.array_equal(batch.dense, raw.astype(np.float32))  # log1p did something


def test_vocabulary_in_the_graph_maps_raw_tokens_as_the_reader(tmp_path):
    """Raw CSV tokens through LabelEncoder give the reader's ids: unseen
    tokens out of vocabulary, empty cells missing, empty items dropped."""
    from sparse_train.data import Schema, open_dataset
    schema = Schema.from_dict({"label": {"column": "y"}, "features": [
        {"name": "user", "type": "categorical"},
        {"name": "tags", "type": "multi_hot", "separator": "|"}]})
    rng = np.random.default_rng(2)

    def write(name, n, pool):
        users, tags = [], []
        for _ in range(n):
            users.append("" if rng.random() < 0.15 else f"u{rng.integers(0, pool)}")
            tags.append("|".join("" if rng.random() < 0.1 else f"t{x}"
                                 for x in rng.integers(0, pool, rng.integers(0, 4))))
        lines = ["y,user,tags"] + [f"{rng.integers(0, 2)},{u},{t}" for u, t in zip(users, tags)]
        (tmp_path / name).write_text("\n".join(lines) + "\n")
        return users, tags

    write("train.csv", 200, 8)
    users, tags = write("valid.csv", 40, 12)  # tokens 8-11 unseen in training
    train = open_dataset(tmp_path / "train.csv", "csv", schema=schema, batch_size=50,
                         min_count=2)
    model = trained_on(train)
    valid = next(iter(open_dataset(tmp_path / "valid.csv", "csv", schema=schema,
                                   batch_size=40, like=train)))
    split = [t.split("|") for t in tags]
    width = max(len(s) for s in split)
    feed = {"user": np.array(users, object)[:, None],
            "tags": np.array([s + [""] * (width - len(s)) for s in split], object)}
    proto = onnx_model(model, vocabulary=train.vocabulary)
    onnx.checker.check_model(proto, full_check=True)
    assert {n.op_type for n in proto.graph.node} <= LEAN_OPS | {"LabelEncoder"}
    got = session(proto).run(None, feed)[0]
    np.testing.assert_allclose(got, predict(model, valid), rtol=0, atol=1e-5)
    assert (valid.sparse["user"].values == 0).any() and (valid.sparse["tags"].values == 1).any()
    hashed = open_dataset(tmp_path / "train.csv", "csv", schema=schema, ids="hash",
                          hash_buckets=8)
    with pytest.raises(ValueError, match="'user' has HashBuckets ids"):
        onnx_model(build_model("lr", hashed.spec, scope="export_hashed"),
                   vocabulary=hashed.vocabulary)


def trained_on(data):
    model = build_model("deepfm", data.spec, embedding_dim=4, hidden_units=(5,), seed=2,
                        scope="export_vocab")
    sparse_opt, dense_opt = optim.Adagrad(0.3), optim.Adam(0.02)
    for batch in data:
        train_step(model, batch, sparse_opt, dense_opt)
    return model


def test_fitted_encoders_in_the_graph_equal_their_numpy_rules():
    """``numeric_transform_of_encoder``: the data layer's normalizers (NaN =
    a missing cell) written from their definitions in float64 NumPy."""
    from types import SimpleNamespace as Encoder

    from sparse_train.export import numeric_transform_of_encoder
    encoders = {"a": Encoder(kind="log_standard", mean=1.5, std=2.0),
                "b": Encoder(kind="minmax", min=-1.0, max=3.0, mean=0.5),
                "c": Encoder(kind="standard", mean=10.0, std=0.0),  # zero spread: 1
                "d": Encoder(kind="none"),
                "k": Encoder(kind="bucketize", boundaries=[0.0, 2.5, 7.0])}
    spec = DataSpec((FeatureSpec("k", 5),), ("a", "b", "c", "d"))
    transforms = [numeric_transform_of_encoder(name, e) for name, e in encoders.items()]
    model = build_model("lr", spec, scope="export_encoders")
    model.linear.weights.weight.value[:, 0] = [0.1, -0.2, 0.3, -0.4, 0.5]
    rng = np.random.default_rng(8)
    raw = rng.choice([np.nan, -40.0, -1.0, 0.0, 2.5, 6.0, 7.0, 1e4], (50, 5))
    x = raw.astype(np.float32).astype(np.float64)
    missing = np.isnan(x)
    t = np.sign(x[:, 0]) * np.log1p(np.abs(x[:, 0]))
    dense = np.stack([np.where(missing[:, 0], 0, (t - 1.5) / 2.0),
                      np.where(missing[:, 1], (0.5 + 1) / 4, (x[:, 1] + 1) / 4),
                      np.where(missing[:, 2], 0, x[:, 2] - 10.0),
                      np.where(missing[:, 3], 0, x[:, 3])], 1)
    ids = np.where(missing[:, 4], 0, 1 + np.searchsorted([0.0, 2.5, 7.0], x[:, 4], side="right"))
    reference = Batch(np.zeros(50, np.float32), dense.astype(np.float32),
                      {"k": Ragged.from_dense(ids)})
    proto = onnx_model(model, numeric_transforms=transforms)
    got = session(proto).run(None, {"dense": raw.astype(np.float32)})[0]
    np.testing.assert_allclose(got, predict(model, reference), rtol=0, atol=1e-6)
    assert set(ids.tolist()) == {0, 1, 2, 3, 4}


def test_a_dataset_with_fitted_encoders_gives_their_transforms():
    """A reader that fits numeric encoders (``parser.numeric_columns``, the
    encoders beside the vocabulary) gives them to the export in column order."""
    from types import SimpleNamespace as Namespace

    from sparse_train.export import _numeric_transforms_of_dataset
    dataset = Namespace(parser=Namespace(numeric_columns=(("x", "standard", None),
                                                          ("k", "bucketize", 3))),
                        vocabulary={"user": object(),
                                    "x": Namespace(kind="standard", mean=1.0, std=2.0),
                                    "k": Namespace(kind="bucketize", boundaries=[1.0, 2.0])})
    assert _numeric_transforms_of_dataset(dataset) == [
        {"feature": "x", "kind": "standard", "mean": 1.0, "std": 2.0, "missing": 0.0},
        {"feature": "k", "kind": "bucketize", "boundaries": [1.0, 2.0], "first_id": 1,
         "missing_id": 0}]
