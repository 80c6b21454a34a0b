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
    # FeatureLinear sums a bag (sparse_combiner "sum"): g sums its valid ids,
    # w its valid ids times their weights (9 and 3 skipped)
    logits = np.array([1 + 4 + 0.5 * 64 + 2 * 16, 0 + 16, 8 + 8 + 0,
                       2 + 3 * 32 + 0.25 * 32]) - 10.0
    np.testing.assert_allclose(got, 1 / (1 + np.exp(-logits)), rtol=1e-6)
    # and the model itself, on the same bags without the skipped ids
    clean = Batch(np.zeros(4, np.float32), np.zeros((4, 0), np.float32),
                  {"g": Ragged.from_lengths([0, 2, 3, 3, 1, 1], [2, 0, 2, 2]),
                   "w": Ragged.from_lengths([2, 0, 0, 1, 1], [2, 1, 0, 2],
                                            np.array([0.5, 2, 1, 3, 0.25], np.float32))})
    np.testing.assert_allclose(got, predict(model, clean), rtol=0, atol=1e-6)


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
    raw = np.stack([rng.choice([-3.0, 0.0, 2.0, 150.0], 40), rng.choice([10, 18, 25, 30, 40, 65, 80], 40),
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


def test_encoder_kinds_in_the_graph_equal_numeric_encoder():
    """Every NumericEncoder kind, NaN (missing) included, through the graph
    equals ``NumericEncoder.apply`` / ``ids`` on the float64 raw values."""
    from sparse_train.data.numeric import NumericEncoder, numeric_encoder
    rng = np.random.default_rng(7)
    # float32-exact raw values, heavy tails, negatives, zeros and NaN
    raw = rng.choice([-300.0, -2.5, -0.25, 0.0, 0.5, 1.0, 3.0, 17.0, 950.0, 65536.0, np.nan],
                     (80, 7))
    train = rng.lognormal(1.0, 2.0, 500) * rng.choice([-1, 1, 1, 1], 500)
    encoders = {"a": NumericEncoder("none"), "b": NumericEncoder("log1p"),
                "c": numeric_encoder("standard", train),
                "d": numeric_encoder("minmax", train),
                "e": numeric_encoder("log_standard", train),
                "k": NumericEncoder("bucketize", boundaries=[-2.5, 0.5, 3.0, 950.0]),
                "z": NumericEncoder("standard", mean=1.0, std=0.0)}  # zero spread counts as 1
    spec = DataSpec((FeatureSpec("user", 3), FeatureSpec("k", encoders["k"].num_embeddings)),
                    ("a", "b", "c", "d", "e", "z"))
    model = build_model("wide_deep", spec, embedding_dim=3, hidden_units=(4,), seed=3,
                        scope="export_kinds")
    # a random numeric kernel in the wide part, so every column moves the logit
    model.wide.dense.kernel.value[...] = rng.standard_normal((6, 1)).astype(np.float32)
    order = ["a", "b", "c", "d", "e", "k", "z"]
    state = {name: encoders[name].to_dict() for name in order}
    dense = np.stack([encoders[n].apply(raw[:, j]) for j, n in enumerate(order) if n != "k"], 1)
    assert np.isnan(raw).any(axis=0).all() and np.isfinite(dense).all()
    reference = Batch(np.zeros(80, np.float32), dense,
                      {"user": Ragged.from_dense(rng.integers(0, 3, 80)),
                       "k": Ragged.from_dense(encoders["k"].ids(raw[:, 5]))})
    expected = predict(model, reference)
    assert np.ptp(expected) > 1e-3
    assert set(encoders["k"].ids(raw[:, 5]).tolist()) == {0, 1, 2, 3, 4, 5}  # edges hit too
    for given in (state, {n: encoders[n] for n in order}):
        feed = onnx_inputs(reference, spec, dense=raw.astype(np.float32),
                           numeric_transforms=given)
        assert sorted(feed) == ["dense", "user"]
        got = session(onnx_model(model, numeric_transforms=given)).run(None, feed)[0]
        np.testing.assert_allclose(got, expected, rtol=0, atol=1e-6)
    # column by column: an LR on one numeric column reads it back exactly
    for j, name in enumerate(order):
        if name == "k":
            continue
        one = DataSpec((), (name,))
        lr = build_model("lr", one, scope=f"export_kind_{name}")
        lr.linear.dense.kernel.value[...] = 1.0  # logit = the normalized value
        proto = onnx_model(lr, numeric_transforms={name: state[name]})
        p = session(proto).run(None, {"dense": raw[:, j:j + 1].astype(np.float32)})[0]
        value = encoders[name].apply(raw[:, j]).astype(np.float64)
        np.testing.assert_allclose(p, 1 / (1 + np.exp(-value)), rtol=1e-6, atol=1e-7,
                                   err_msg=name)


def test_csv_dataset_with_missing_cells_and_every_normalizer(tmp_path):
    """``numeric_transforms=dataset``: a CSV with empty numeric cells, each
    column another normalizer (default log_standard, bucketize included);
    the graph on the file's values (NaN for empty cells) equals predict on
    the reader's batch."""
    from sparse_train.data import Schema, open_dataset
    kinds = ["none", "log1p", "standard", "minmax", None]
    features = [{"name": "user", "type": "categorical"}]
    features += [{"name": f"x{i}", "type": "numeric", **({"normalizer": k} if k else {})}
                 for i, k in enumerate(kinds)]
    features.append({"name": "q", "type": "numeric", "bucketize": 4})
    schema = Schema.from_dict({"label": {"column": "y"}, "features": features})
    rng = np.random.default_rng(5)
    raw = rng.choice([-40.0, -1.5, 0.0, 0.25, 2.0, 7.0, 123.0, 4096.0, np.nan], (70, 6))
    cells = [["" if np.isnan(v) else repr(v) for v in row] for row in raw.tolist()]
    names = [f"x{i}" for i in range(5)] + ["q"]
    lines = ["y,user," + ",".join(names)] + [
        f"{rng.integers(0, 2)},u{rng.integers(0, 5)}," + ",".join(c) for c in cells]
    (tmp_path / "d.csv").write_text("\n".join(lines) + "\n")
    data = open_dataset(tmp_path / "d.csv", "csv", schema=schema, batch_size=70)
    model = build_model("deepfm", data.spec, embedding_dim=3, hidden_units=(4,), seed=1,
                        scope="export_csv_kinds")
    model.linear.dense.kernel.value[...] = np.linspace(-1, 1, 5, dtype=np.float32)[:, None]
    batch = next(iter(data))
    assert [d["normalizer"] for d in data.preprocessing_state().values()] == \
        ["none", "log1p", "standard", "minmax", "log_standard", "bucketize"]
    feed = onnx_inputs(batch, data.spec, dense=raw.astype(np.float32), numeric_transforms=data)
    assert "q" not in feed
    got = session(onnx_model(model, numeric_transforms=data)).run(None, feed)[0]
    np.testing.assert_allclose(got, predict(model, batch), rtol=0, atol=1e-6)
    state = data.preprocessing_state()
    got2 = session(onnx_model(model, numeric_transforms=state)).run(None, feed)[0]
    np.testing.assert_array_equal(got, got2)


def test_schema_transforms_need_statistics():
    from sparse_train.data import Schema
    from sparse_train.export import numeric_transforms_from_schema
    schema = Schema.from_dict({"label": {"column": "y"}, "features": [
        {"name": "n", "type": "numeric", "transform": "log1p"},
        {"name": "m", "type": "numeric"}]})
    with pytest.raises(ValueError, match="'m'.*needs training statistics"):
        numeric_transforms_from_schema(schema)
