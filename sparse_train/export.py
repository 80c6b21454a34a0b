"""ONNX export of a trained CTR model: one file from raw inputs to a probability.

ONNX has no EmbeddingBag (onnx#3685), and exporters that emulate one emit a
Loop per bag or sequence ops. Here every bag is a padded [batch, max_bag]
int64 tensor (padding -1) and is pooled with plain tensor ops::

    valid  = (ids >= 0) & (ids < V)               an id outside the table is padding
    rows   = Gather(table, Where(valid, ids, 0))  [B, L, D]
    coef   = Where(valid, weights or 1, 0)        [B, L]
    sum    = ReduceSum(rows * coef[..., None], axis=1)
    mean   = sum / ReduceSum(coef)                sqrtn: sum / sqrt(ReduceSum(coef^2))
                                                  (0 where the divisor is 0, SPEC §3)

then Gemm / MatMul for the dense layers, and ``probability = Sigmoid(logit)``.
No Loop, Scan, If or Sequence op appears.

Graph inputs (``B`` and each feature's bag width are dynamic):

- one int64 [B, L_f] tensor per categorical feature, named by the feature;
- ``{feature}_weights`` float32 [B, L_f] for features with per-id weights;
- ``dense`` float32 [B, C]: the numeric columns as they appear in the data,
  absent when there are none. ``numeric_transforms`` puts the training
  pipeline's numeric preprocessing inside the graph (the fitted
  ``NumericEncoder``s of a dataset: none, log1p, standard, minmax,
  log_standard, and bucketize, which turns a column into the ids of a
  categorical feature); NaN marks a missing value and gives what the reader
  gives for an empty cell. The transforms run in float64 (Cast), as
  ``NumericEncoder.apply`` does, so only the float32 input rounds.

Output: ``probability`` float32 [B].

Tables whose total size passes ONNX's 2 GB protobuf limit are written as
external data, in one file ``{path}.data`` beside the model
(``onnx.save_model(..., save_as_external_data=True)``); onnxruntime finds it
through the relative location stored in the model.
"""
import os
from pathlib import Path

import numpy as np

from .data.batch import Batch
from .data.schema import Schema
from .models.base import CTRModel

__all__ = ["export_onnx", "onnx_model", "onnx_inputs", "numeric_transforms_from_schema",
           "numeric_transforms_from_state", "NUMERIC_TRANSFORMS", "PROTOBUF_LIMIT"]

#: ``kind`` values of a ``numeric_transforms`` entry.
NUMERIC_TRANSFORMS = ("none", "log1p", "standard", "minmax", "log_standard", "bucketize")

#: Initializer bytes beyond which tables go to an external data file (protobuf's
#: 2 GiB message limit, less room for the graph itself).
PROTOBUF_LIMIT = (1 << 31) - (64 << 20)

_IR_VERSION = 8  # onnxruntime >= 1.17 reads IR 8 at opset 17
_RESERVED = ("dense", "probability")
_WEIGHT_HINTS = ("table", "kernel", "bias")


def _onnx():
    try:
        import onnx
    except ImportError:  # pragma: no cover - exercised without the extra
        raise ImportError("ONNX export needs the onnx package: pip install "
                          "'sparse_train[onnx]'") from None
    return onnx


# ------------------------------------------------------------------ public API
def export_onnx(model, path, *, opset=17, numeric_transforms=None, vocabulary=None,
                external_data_threshold=PROTOBUF_LIMIT):
    """Write ``model`` as an ONNX file that maps raw features to click
    probabilities (see the module docstring for the inputs and the graph)::

        probability[b] = sigmoid(model's logit of example b)

    An id outside ``[0, num_embeddings)`` of its table (e.g. -1 padding, or
    an id of a newer vocabulary) is skipped in the sum and in a mean's
    divisor, never an error.

    Args:
        model: a ``CTRModel`` of ``build_model`` (lr, fm, wide_deep, deepfm,
            dcn, dlrm).
        path: the ``.onnx`` file to write (its directory must exist).
        opset: ONNX opset of the default domain (>= 17).
        numeric_transforms: the numeric preprocessing to put in the graph,
            so that ``dense`` takes raw values (NaN = missing). Preferred: the
            training ``Dataset`` (its fitted ``NumericEncoder``s, as
            ``preprocessing_state()`` gives them, in the reader's column
            order; a dataset without numeric columns to fit, e.g. the
            synthetic log, gives None); or that ``preprocessing_state()``
            dict (feature -> ``NumericEncoder.to_dict()``, in column order,
            as saved in a checkpoint); or a list, one entry a column of
            ``dense`` in order, of dicts ``{"feature": name, "kind": kind,
            ...}`` (``NUMERIC_TRANSFORMS``): ``"none"``; ``"log1p"``
            (log(1 + x) for x > 0, else 0); ``"standard"`` (``(x - mean) /
            std``, keys ``mean``, ``std``); ``"minmax"`` (``(x - min) / (max
            - min)``, keys ``min``, ``max``); ``"log_standard"`` (``t =
            sign(x) log(1 + |x|)``, then ``(t - mean) / std``);
            ``"bucketize"`` (key ``boundaries``, increasing: the id
            ``first_id + #{boundaries <= x}`` of the categorical feature
            ``feature``, default ``first_id`` 0). Optional keys on any
            entry: ``"missing"``, what a NaN input gives (a value, or the id
            for bucketize; default 0, the readers' choice for every kind
            but minmax, whose encoder gives the mean's image); ``"log1p":
            true`` applies log1p first; ``"clip": [lo, hi]`` clips last (not
            for bucketize). Non-bucketized entries must name the model's
            numeric features in order. A ``Schema`` gives the transforms of
            its numeric features when they need no statistics
            (``numeric_transforms_from_schema``). None: the ``dense`` input
            holds the model's numeric features as they are.
        vocabulary: optional ``{feature: Vocabulary}`` (a dataset's
            ``.vocabulary``): those features' inputs are then the raw tokens,
            string [B, L] tensors padded with ``""``, mapped to ids in the
            graph by ``ai.onnx.ml.LabelEncoder`` as the readers do (a token
            not in the vocabulary: the out-of-vocabulary id; ``""``
            dropped, and a bag left without a token holds the missing id,
            like an empty CSV cell). Hash-bucket features cannot be mapped
            (ONNX has no 64-bit FNV hash) and are refused.
        external_data_threshold: initializer bytes beyond which the tables
            go to ``{path}.data`` (default: just under protobuf's 2 GB).

    Returns:
        the path written (str).

    >>> import os, tempfile
    >>> from sparse_train.data import DataSpec, FeatureSpec
    >>> from sparse_train.models import build_model
    >>> spec = DataSpec((FeatureSpec("user", 10), FeatureSpec("tags", 5, multi_hot=True)),
    ...                 ("age",))
    >>> model = build_model("deepfm", spec, embedding_dim=4, hidden_units=(8,),
    ...                     scope="doc_export")
    >>> path = export_onnx(model, os.path.join(tempfile.mkdtemp(), "deepfm.onnx"))
    >>> import onnx
    >>> [i.name for i in onnx.load(path).graph.input]
    ['user', 'tags', 'dense']
    """
    onnx = _onnx()
    proto = onnx_model(model, opset=opset, numeric_transforms=numeric_transforms,
                       vocabulary=vocabulary)
    path = Path(path)
    if not path.parent.is_dir():
        raise FileNotFoundError(f"export_onnx: directory not found: {path.parent}")
    size = sum(_tensor_bytes(t) for t in proto.graph.initializer)
    if size > external_data_threshold:
        # the weights (tables, kernels, biases) go out; shape constants stay
        # inline, where onnxruntime's shape inference reads them
        location = path.name + ".data"
        if (path.parent / location).exists():
            os.remove(path.parent / location)  # the writer appends to an existing file
        for tensor in proto.graph.initializer:
            if tensor.name.rsplit("_", 1)[-1] in _WEIGHT_HINTS:
                onnx.external_data_helper.set_external_data(tensor, location)
    onnx.save_model(proto, str(path))
    return str(path)


def onnx_model(model, *, opset=17, numeric_transforms=None, vocabulary=None):
    """The ``onnx.ModelProto`` that ``export_onnx`` writes (same arguments),
    checked by ``onnx.checker`` when under the protobuf limit."""
    onnx = _onnx()
    if not isinstance(model, CTRModel):
        raise TypeError(f"export_onnx: model must be a CTRModel, got {type(model).__name__}")
    if model.name not in _MODEL_GRAPHS or type(model).forward is not _forward_of(model.name):
        raise ValueError(f"export_onnx: no ONNX graph for model {type(model).__name__} "
                         f"(exportable: {sorted(_MODEL_GRAPHS)})")
    if isinstance(opset, bool) or not isinstance(opset, int) or opset < 17:
        raise ValueError(f"export_onnx: opset must be an integer >= 17, got {opset!r}")
    transforms = _check_transforms(numeric_transforms, model.spec)
    graph = _Graph(onnx, model.spec, transforms, _check_vocabulary(vocabulary, model.spec))
    logit = _MODEL_GRAPHS[model.name](graph, model)
    graph.node("Sigmoid", [logit], "probability")
    proto = graph.model(f"sparse_train {model.name}", opset)
    if sum(_tensor_bytes(t) for t in proto.graph.initializer) < PROTOBUF_LIMIT:
        onnx.checker.check_model(proto, full_check=True)
    return proto


def onnx_inputs(batch, spec, dense=None, numeric_transforms=None):
    """The feed of an exported model for a ``Batch``: each feature's bags
    padded with -1 to the batch's longest bag (at least 1 wide), weights
    padded with 0, and ``dense``.

    Args:
        batch: a ``Batch``.
        spec: the model's ``DataSpec`` (which features carry weights).
        dense: optional [B, C] raw numeric columns to feed as ``dense``
            (with ``numeric_transforms``); default ``batch.dense``.
        numeric_transforms: the export's (a list, a ``Dataset`` or a
            ``preprocessing_state()``); features it bucketizes are not fed
            (their ids come from ``dense``).

    Returns:
        dict input name -> array.

    >>> from sparse_train import Ragged
    >>> from sparse_train.data import DataSpec, FeatureSpec
    >>> spec = DataSpec((FeatureSpec("tags", 9, multi_hot=True),))
    >>> b = Batch(np.zeros(3, np.float32), np.zeros((3, 0), np.float32),
    ...           {"tags": Ragged.from_lengths([4, 5, 6], [2, 0, 1])})
    >>> onnx_inputs(b, spec)["tags"].tolist()
    [[4, 5], [-1, -1], [6, -1]]
    """
    if not isinstance(batch, Batch):
        raise TypeError(f"onnx_inputs: expected a Batch, got {type(batch).__name__}")
    feed = {}
    entries = _transform_entries(numeric_transforms) or ()
    bucketized = {e["feature"] for e in entries if e.get("kind") == "bucketize"}
    for feature in spec.sparse_features:
        if feature.name in bucketized:
            continue
        ragged = batch.sparse[feature.name]
        lengths = ragged.lengths
        width = max(int(lengths.max(initial=0)), 1)
        rows = np.repeat(np.arange(ragged.num_bags), lengths)
        cols = np.arange(ragged.values.shape[0]) - np.repeat(ragged.offsets[:-1], lengths)
        ids = np.full((ragged.num_bags, width), -1, np.int64)
        ids[rows, cols] = ragged.values
        feed[feature.name] = ids
        if feature.weighted:
            weights = np.zeros((ragged.num_bags, width), np.float32)
            weights[rows, cols] = 1.0 if ragged.weights is None else ragged.weights
            feed[f"{feature.name}_weights"] = weights
    dense = batch.dense if dense is None else dense
    if dense is not None and np.asarray(dense).shape[1:] != (0,):
        feed["dense"] = np.ascontiguousarray(dense, dtype=np.float32)
    return feed


def numeric_transforms_from_schema(schema):
    """``numeric_transforms`` of a TOML ``Schema``'s numeric features whose
    normalizer needs no training statistics ("none", "log1p"), in the
    readers' column order; a feature with another one (or none declared:
    the readers' default is "log_standard") needs the fitted statistics of
    the training ``Dataset``: pass that instead (ValueError).

    >>> from sparse_train.data import criteo_schema
    >>> numeric_transforms_from_schema(criteo_schema())[0]
    {'feature': 'I1', 'kind': 'log1p'}
    """
    entries = []
    for f in schema.dense_features:
        kind = "bucketize" if f.bucketize is not None else f.normalizer
        if kind not in ("none", "log1p"):
            raise ValueError(f"numeric_transforms: numeric feature {f.name!r} of the schema "
                             f"is normalized with {kind or 'the default normalizer'}, which "
                             f"needs training statistics: pass the training Dataset (or its "
                             f"preprocessing_state()) as numeric_transforms")
        entries.append({"feature": f.name, "kind": kind})
    return entries


def numeric_transforms_from_state(state):
    """``numeric_transforms`` entries of fitted numeric encoders: a
    ``Dataset.preprocessing_state()`` dict (feature -> ``NumericEncoder``
    dict) or feature -> ``NumericEncoder``, in column order. Each entry
    computes ``NumericEncoder.apply`` (or ``ids``: ``first_id`` 1, missing
    id 0) of the raw value, a missing one (NaN) included; a zero spread
    counts as 1, as in the encoder.

    >>> numeric_transforms_from_state({"price": {"type": "numeric", "normalizer": "minmax",
    ...                                          "mean": 3.0, "min": 1.0, "max": 5.0}})
    [{'feature': 'price', 'kind': 'minmax', 'min': 1.0, 'max': 5.0, 'missing': 0.5}]
    """
    from .data.numeric import NumericEncoder
    entries = []
    for name, encoder in dict(state).items():
        if not isinstance(encoder, NumericEncoder):
            encoder = NumericEncoder.from_dict(encoder)
        entry = {"feature": name, "kind": encoder.kind}
        if encoder.kind in ("standard", "log_standard"):
            entry.update(mean=encoder.mean, std=encoder.std or 1.0)
        elif encoder.kind == "minmax":
            spread = (encoder.max - encoder.min) or 1.0
            entry.update(min=encoder.min, max=encoder.min + spread,
                         missing=(encoder.mean - encoder.min) / spread)
        elif encoder.kind == "bucketize":
            entry.update(boundaries=encoder.boundaries.tolist(), first_id=1, missing=0)
        entries.append(entry)
    return entries


def _transform_entries(transforms):
    """The list form of a ``numeric_transforms`` argument (unchecked), or None."""
    if transforms is None or isinstance(transforms, list):
        return transforms
    if isinstance(transforms, Schema):
        return numeric_transforms_from_schema(transforms)
    if callable(getattr(transforms, "preprocessing_state", None)):  # a Dataset
        state = transforms.preprocessing_state()
        return numeric_transforms_from_state(state) if state else None
    if isinstance(transforms, dict):
        return numeric_transforms_from_state(transforms)
    return list(transforms)


# ------------------------------------------------------- numeric transforms
_TRANSFORM_KEYS = {"none": (), "log1p": (), "standard": ("mean", "std"),
                   "minmax": ("min", "max"), "log_standard": ("mean", "std"),
                   "bucketize": ("boundaries",)}
_OPTIONAL_KEYS = {"feature", "kind", "log1p", "clip", "first_id", "missing"}


def _check_transforms(transforms, spec):
    """Validated copies of the entries (ValueError naming entry and feature)."""
    transforms = _transform_entries(transforms)
    if transforms is None:
        return None
    entries = []
    for i, entry in enumerate(transforms):
        where = f"numeric_transforms[{i}]"
        if not isinstance(entry, dict):
            raise ValueError(f"{where} must be a dict, got {type(entry).__name__}")
        kind, feature = entry.get("kind", "none"), entry.get("feature")
        if kind not in NUMERIC_TRANSFORMS:
            raise ValueError(f"{where} ({feature!r}): kind must be one of "
                             f"{', '.join(NUMERIC_TRANSFORMS)}, got {kind!r}")
        unknown = set(entry) - _OPTIONAL_KEYS - set(_TRANSFORM_KEYS[kind])
        missing = [k for k in _TRANSFORM_KEYS[kind] if k not in entry]
        if unknown or missing or not isinstance(feature, str):
            raise ValueError(f"{where} ({feature!r}): needs 'feature' (a name) and "
                             f"{list(_TRANSFORM_KEYS[kind])}; unknown keys "
                             f"{sorted(unknown)}, missing {missing}")
        checked = dict(entry, kind=kind)
        for key in ("mean", "std", "min", "max"):
            if key in entry:
                checked[key] = _finite(entry[key], f"{where} ({feature!r}) {key}")
        if "missing" in entry:
            checked["missing"] = _finite(entry["missing"], f"{where} ({feature!r}) missing")
            if kind == "bucketize" and checked["missing"] != int(checked["missing"]):
                raise ValueError(f"{where} ({feature!r}): missing must be an id, got "
                                 f"{entry['missing']!r}")
        if kind in ("standard", "log_standard") and not checked["std"] > 0:
            raise ValueError(f"{where} ({feature!r}): std must be > 0, got {checked['std']}")
        if kind == "minmax" and not checked["max"] > checked["min"]:
            raise ValueError(f"{where} ({feature!r}): max must be > min, got "
                             f"{checked['min']}, {checked['max']}")
        if kind == "bucketize":
            checked["boundaries"] = _boundaries(entry["boundaries"], f"{where} ({feature!r})")
            if "clip" in entry:
                raise ValueError(f"{where} ({feature!r}): clip does not apply to bucketize")
        if "clip" in entry:
            lo, hi = (_finite(v, f"{where} ({feature!r}) clip") for v in entry["clip"])
            if not lo <= hi:
                raise ValueError(f"{where} ({feature!r}): clip needs lo <= hi, got {lo}, {hi}")
            checked["clip"] = (lo, hi)
        entries.append(checked)
    numeric = [e["feature"] for e in entries if e["kind"] != "bucketize"]
    if tuple(numeric) != tuple(spec.dense_features):
        raise ValueError(f"numeric_transforms: the non-bucketized entries name {numeric}, "
                         f"the model's numeric features are {list(spec.dense_features)}")
    for e in entries:
        if e["kind"] == "bucketize":
            target = spec.feature(e["feature"])  # KeyError names a missing one
            if target.multi_hot or target.weighted:
                raise ValueError(f"numeric_transforms: bucketized {e['feature']!r} must be a "
                                 f"one-id categorical feature")
    return entries


def _finite(value, where):
    if isinstance(value, bool) or not isinstance(value, (int, float, np.number)) \
            or not np.isfinite(value):
        raise ValueError(f"{where} must be a finite number, got {value!r}")
    return float(value)


def _boundaries(values, where):
    """float64 [K] (compared with the float64 value, as ``NumericEncoder.ids``;
    K = 0: one bucket, as an encoder fitted without values)."""
    b = np.asarray(values, np.float64).reshape(-1) if np.ndim(values) <= 1 else None
    if b is None or not np.isfinite(b).all() or (np.diff(b) <= 0).any():
        raise ValueError(f"{where}: boundaries must be finite and increasing, got {values!r}")
    return b


def _check_vocabulary(vocabulary, spec):
    """``{feature: Vocabulary}`` checked against the spec, or None."""
    if vocabulary is None:
        return None
    from .data.vocabulary import Vocabulary
    checked = {}
    for name, encoder in dict(vocabulary).items():
        feature = spec.feature(name)  # KeyError names an unknown feature
        if not isinstance(encoder, Vocabulary):
            raise ValueError(f"export_onnx: feature {name!r} has {type(encoder).__name__} ids; "
                             f"only a Vocabulary maps raw tokens in ONNX (no 64-bit FNV hash)")
        if feature.weighted:
            raise ValueError(f"export_onnx: feature {name!r} is weighted; raw tokens carry "
                             f"no weights")
        if encoder.num_embeddings != feature.num_embeddings:
            raise ValueError(f"export_onnx: the vocabulary of {name!r} has "
                             f"{encoder.num_embeddings} ids, the model's table "
                             f"{feature.num_embeddings}")
        checked[name] = encoder
    return checked


# ------------------------------------------------------------ graph building
def _tensor_bytes(tensor):
    return len(tensor.raw_data) if tensor.raw_data else 0


class _Graph:
    """Nodes, initializers and inputs of one graph; names internal values
    ``_{n}_{hint}`` so they cannot meet a feature's name."""

    def __init__(self, onnx, spec, transforms, vocabulary=None):
        self.onnx, self.spec, self.transforms = onnx, spec, transforms
        self.vocabulary = vocabulary or {}
        self.nodes, self.initializers, self.inputs = [], [], []
        self._count, self._consts, self._pools = 0, {}, {}
        names = [f.name for f in spec.sparse_features]
        for name in names:
            if name in _RESERVED or name.endswith("_weights") and name[:-8] in names:
                raise ValueError(f"export_onnx: feature name {name!r} collides with an "
                                 f"input name of the graph")
        self.dense, self.bucket_ids = self._numeric_inputs()

    # -- plumbing
    def name(self, hint):
        self._count += 1
        return f"_{self._count}_{hint}"

    def node(self, op, inputs, output=None, **attrs):
        output = output or self.name(op.lower())
        self.nodes.append(self.onnx.helper.make_node(op, list(inputs), [output], **attrs))
        return output

    def const(self, array, hint="const"):
        """An initializer holding ``array`` (small constants shared by value)."""
        array = np.asarray(array)
        key = None
        if array.size <= 16:
            key = (array.dtype.str, array.shape, array.tobytes())
            if key in self._consts:
                return self._consts[key]
        name = self.name(hint)
        self.initializers.append(self.onnx.numpy_helper.from_array(np.ascontiguousarray(array),
                                                                   name))
        if key is not None:
            self._consts[key] = name
        return name

    def add_input(self, name, elem_type, shape):
        self.inputs.append(self.onnx.helper.make_tensor_value_info(name, elem_type, shape))
        return name

    def model(self, graph_name, opset):
        helper = self.onnx.helper
        output = helper.make_tensor_value_info("probability", self.onnx.TensorProto.FLOAT,
                                               ["batch"])
        order = [n for f in self.spec.sparse_features for n in (f.name, f"{f.name}_weights")]
        order = {name: i for i, name in enumerate(order + ["dense"])}
        inputs = sorted(self.inputs, key=lambda value: order[value.name])
        graph = helper.make_graph(self.nodes, graph_name, inputs, [output],
                                  self.initializers)
        opsets = [helper.make_opsetid("", opset)]
        if self.vocabulary:
            opsets.append(helper.make_opsetid("ai.onnx.ml", 2))
        proto = helper.make_model(graph, opset_imports=opsets,
                                  producer_name="sparse_train", ir_version=_IR_VERSION)
        return proto

    # -- numeric columns
    def _numeric_inputs(self):
        """(model's dense [B, num_dense] value name or None, {feature: ids [B, 1]})."""
        spec, transforms = self.spec, self.transforms
        columns = spec.num_dense if transforms is None else len(transforms)
        if not columns:
            return None, {}
        raw = self.add_input("dense", self.onnx.TensorProto.FLOAT, ["batch", columns])
        if transforms is None:
            return raw, {}
        dense, buckets = [], {}
        for j, entry in enumerate(transforms):
            x = self.node("Slice", [raw, self.const(np.array([j], np.int64)),
                                    self.const(np.array([j + 1], np.int64)),
                                    self.const(np.array([1], np.int64))])
            if entry["kind"] == "bucketize":
                buckets[entry["feature"]] = self._bucketize(x, entry)
            else:
                dense.append(self._transform(x, entry))
        if not dense:
            return None, buckets
        return (dense[0] if len(dense) == 1 else self.node("Concat", dense, axis=1)), buckets

    def _double(self, x):
        """x [B, 1] float64 and its missing mask (NaN)."""
        x = self.node("Cast", [x], to=self.onnx.TensorProto.DOUBLE)
        return x, self.node("IsNaN", [x])

    def _log1p(self, x):
        """log(1 + x) for x > 0, else 0 (``NumericEncoder.apply``), float64."""
        zero = self.const(np.float64(0))
        positive = self.node("Greater", [x, zero])
        safe = self.node("Where", [positive, x, zero])
        return self.node("Where", [positive, self.node("Log", [
            self.node("Add", [safe, self.const(np.float64(1))])]), zero])

    def _transform(self, x, entry):
        """[B, 1] float32 of a raw column [B, 1] float32, computed in float64."""
        x, missing = self._double(x)
        kind = entry["kind"]
        if entry.get("log1p") or kind == "log1p":
            x = self._log1p(x)
        if kind == "log_standard":  # sign(x) log(1 + |x|)
            x = self.node("Mul", [self.node("Sign", [x]), self.node("Log", [
                self.node("Add", [self.node("Abs", [x]), self.const(np.float64(1))])])])
        if kind in ("standard", "log_standard"):
            x = self.node("Div", [self.node("Sub", [x, self.const(np.float64(entry["mean"]))]),
                                  self.const(np.float64(entry["std"]))])
        elif kind == "minmax":
            x = self.node("Div", [self.node("Sub", [x, self.const(np.float64(entry["min"]))]),
                                  self.const(np.float64(entry["max"] - entry["min"]))])
        x = self.node("Where", [missing, self.const(np.float64(entry.get("missing", 0.0))), x])
        x = self.node("Cast", [x], to=self.onnx.TensorProto.FLOAT)
        if "clip" in entry:
            lo, hi = entry["clip"]
            x = self.node("Clip", [x, self.const(np.float32(lo)), self.const(np.float32(hi))])
        return x

    def _bucketize(self, x, entry):
        """ids [B, 1] int64: ``first_id + #{boundaries <= x}`` (TF ``Bucketize``),
        ``missing`` for NaN; compared in float64."""
        x, missing = self._double(x)
        if entry.get("log1p"):
            x = self._log1p(x)
        first = self.const(np.int64(entry.get("first_id", 0)))
        if entry["boundaries"].size:
            below = self.node("LessOrEqual", [self.const(entry["boundaries"][None, :],
                                                         "boundaries"), x])  # [B, K]
            count = self.node("ReduceSum", [
                self.node("Cast", [below], to=self.onnx.TensorProto.INT64),
                self.const(np.array([1], np.int64))], keepdims=1)
            ids = self.node("Add", [count, first])
        else:  # one bucket: first_id for every present value
            ids = first
        return self.node("Where", [missing, self.const(np.int64(entry.get("missing", 0))), ids])

    # -- embedding bags
    def ids_of(self, feature):
        """(ids [B, L] int64, weights [B, L] float32 or None) of a feature."""
        if feature.name in self.bucket_ids:
            return self.bucket_ids[feature.name], None
        key = ("input", feature.name)
        if key not in self._pools and feature.name in self.vocabulary:
            self._pools[key] = (self._token_ids(feature, self.vocabulary[feature.name]), None)
        if key not in self._pools:
            ids = self.add_input(feature.name, self.onnx.TensorProto.INT64,
                                 ["batch", f"{feature.name}_length"])
            weights = (self.add_input(f"{feature.name}_weights", self.onnx.TensorProto.FLOAT,
                                      ["batch", f"{feature.name}_length"])
                       if feature.weighted else None)
            self._pools[key] = (ids, weights)
        return self._pools[key]

    def _token_ids(self, feature, vocabulary):
        """ids [B, L + 1] of a string input: token r of the vocabulary is
        ``2 + r``, others 1 (out of vocabulary), ``""`` -1 (dropped); the
        last column holds 0 (missing) for a row without any token, else -1."""
        tokens = self.add_input(feature.name, self.onnx.TensorProto.STRING,
                                ["batch", f"{feature.name}_length"])
        from .data.vocabulary import MISSING_ID, OOV_ID
        ids = self.node("LabelEncoder", [tokens], domain="ai.onnx.ml",
                        keys_strings=list(vocabulary.tokens) + [""],
                        values_int64s=list(range(2, 2 + len(vocabulary.tokens))) + [-1],
                        default_int64=OOV_ID)
        present = self.node("Cast", [self.node("GreaterOrEqual", [ids, self.const(np.int64(0))])],
                            to=self.onnx.TensorProto.INT64)
        count = self.node("ReduceSum", [present, self.const(np.array([1], np.int64))], keepdims=1)
        missing = self.node("Where", [self.node("Equal", [count, self.const(np.int64(0))]),
                                      self.const(np.array([[MISSING_ID]], np.int64)),
                                      self.const(np.array([[-1]], np.int64))])
        return self.node("Concat", [ids, missing], axis=1)

    def bag_terms(self, feature, num_embeddings, combiner):
        """(safe ids [B, L], coefficients [B, L, 1], divisor [B, 1] or None),
        shared by every table of this size the feature is pooled from."""
        key = ("bag", feature.name, num_embeddings, combiner)
        if key in self._pools:
            return self._pools[key]
        ids, weights = self.ids_of(feature)
        valid = self.node("And", [self.node("GreaterOrEqual", [ids, self.const(np.int64(0))]),
                                  self.node("Less", [ids, self.const(np.int64(num_embeddings))])])
        safe = self.node("Where", [valid, ids, self.const(np.int64(0))])
        zero = self.const(np.float32(0))
        coef = (self.node("Cast", [valid], to=self.onnx.TensorProto.FLOAT) if weights is None
                else self.node("Where", [valid, weights, zero]))
        divisor = None
        axis = self.const(np.array([1], np.int64))
        if combiner == "mean":
            divisor = self.node("ReduceSum", [coef, axis], keepdims=1)
        elif combiner == "sqrtn":
            divisor = self.node("Sqrt", [self.node("ReduceSum", [
                self.node("Mul", [coef, coef]), axis], keepdims=1)])
        coef3 = self.node("Unsqueeze", [coef, self.const(np.array([2], np.int64))])
        self._pools[key] = (safe, coef3, divisor)
        return self._pools[key]

    def collection(self, ebc):
        """[B, D] pooled value per feature of an ``EmbeddingBagCollection``."""
        tables, pooled = {}, []
        for name, bag in ebc.bags.items():
            table = bag.table
            if table.name not in tables:
                # a 16-bit table is exported widened: float32, the same values
                tables[table.name] = self.const(np.asarray(table.weight.widened(), np.float32),
                                                "table")
            feature = self.spec.feature(name)
            safe, coef, divisor = self.bag_terms(feature, table.num_embeddings, bag.combiner)
            rows = self.node("Gather", [tables[table.name], safe], axis=0)  # [B, L, D]
            total = self.node("ReduceSum", [self.node("Mul", [rows, coef]),
                                            self.const(np.array([1], np.int64))], keepdims=0)
            if divisor is not None:  # an empty (or zero-weight) bag pools to zeros
                zero = self.const(np.float32(0))
                empty = self.node("Equal", [divisor, zero])
                safe_divisor = self.node("Where", [empty, self.const(np.float32(1)), divisor])
                total = self.node("Where", [empty, zero,
                                            self.node("Div", [total, safe_divisor])])
            pooled.append(total)
        return pooled

    def flat(self, pooled):
        """[B, F * D] from F values [B, D]."""
        return pooled[0] if len(pooled) == 1 else self.node("Concat", pooled, axis=1)

    def stacked(self, pooled):
        """[B, F, D] from F values [B, D]."""
        axis = self.const(np.array([1], np.int64))
        parts = [self.node("Unsqueeze", [p, axis]) for p in pooled]
        return parts[0] if len(parts) == 1 else self.node("Concat", parts, axis=1)

    # -- dense layers
    def linear(self, x, layer, activation=None):
        inputs = [x, self.const(np.asarray(layer.kernel.value, np.float32), "kernel")]
        if layer.bias is not None:
            inputs.append(self.const(np.asarray(layer.bias.value, np.float32), "bias"))
        y = self.node("Gemm", inputs)
        return y if activation is None else self.node(activation, [y])

    def mlp(self, x, mlp):
        act = {"relu": "Relu", "tanh": "Tanh", "sigmoid": "Sigmoid"}[mlp.activation]
        for layer in mlp.hidden:
            x = self.linear(x, layer, act)
        return x if mlp.output is None else self.linear(x, mlp.output)

    def feature_linear(self, layer):
        """[B] of ``FeatureLinear``: bias + sum of width-1 bags + dense @ v."""
        terms = self.collection(layer.weights) if layer.weights.num_features else []
        if layer.dense is not None:
            terms.append(self.linear(self.dense, layer.dense))
        total = self.node("ReduceSum", [self.flat(terms), self.const(np.array([1], np.int64))],
                          keepdims=0)
        return self.node("Add", [total, self.const(np.asarray(layer.bias.value, np.float32),
                                                   "bias")])

    def fm(self, stacked):
        """[B]: 0.5 * sum_d ((sum_f e)^2 - sum_f e^2) (``autodiff.fm_interaction``)."""
        axis = self.const(np.array([1], np.int64))
        total = self.node("ReduceSum", [stacked, axis], keepdims=0)
        squares = self.node("ReduceSum", [self.node("Mul", [stacked, stacked]), axis],
                            keepdims=0)
        diff = self.node("Sub", [self.node("Mul", [total, total]), squares])
        return self.node("Mul", [self.node("ReduceSum", [diff, axis], keepdims=0),
                                 self.const(np.float32(0.5))])

    def dot_pairs(self, stacked, num_vectors, self_interaction):
        """[B, P]: <v_i, v_j> for i < j (i <= j), row-major (``dot_interaction``)."""
        gram = self.node("MatMul", [stacked, self.node("Transpose", [stacked], perm=[0, 2, 1])])
        flat = self.node("Reshape", [gram, self.const(np.array([-1, num_vectors ** 2],
                                                               np.int64))])
        rows, cols = np.triu_indices(num_vectors, 0 if self_interaction else 1)
        return self.node("Gather", [flat, self.const((rows * num_vectors + cols).astype(np.int64),
                                                     "pairs")], axis=1)

    def to_vector(self, x):
        """[B, 1] -> [B]."""
        return self.node("Reshape", [x, self.const(np.array([-1], np.int64))])


def _require_dense(graph, what):
    if graph.dense is None:
        raise ValueError(f"export_onnx: {what} needs the numeric features, but the graph has "
                         f"none")
    return graph.dense


def _lr(graph, model):
    return graph.feature_linear(model.linear)


def _fm(graph, model):
    logit = graph.feature_linear(model.linear)
    if model.embedding is None:
        return logit
    return graph.node("Add", [logit, graph.fm(graph.stacked(graph.collection(model.embedding)))])


def _wide_deep(graph, model):
    wide = graph.feature_linear(model.wide)
    parts = graph.collection(model.embedding) if model.embedding is not None else []
    if model.spec.num_dense:
        parts = parts + [graph.dense]
    deep = graph.to_vector(graph.mlp(graph.flat(parts), model.deep))
    return graph.node("Add", [wide, deep])


def _deepfm(graph, model):
    logit = graph.feature_linear(model.linear)
    parts = []
    if model.embedding is not None:
        pooled = graph.collection(model.embedding)
        logit = graph.node("Add", [logit, graph.fm(graph.stacked(pooled))])
        parts = list(pooled)
    if model.spec.num_dense:
        parts.append(graph.dense)
    deep = graph.to_vector(graph.mlp(graph.flat(parts), model.deep))
    return graph.node("Add", [logit, deep])


def _dcn(graph, model):
    parts = graph.collection(model.embedding) if model.embedding is not None else []
    if model.spec.num_dense:
        parts = parts + [graph.dense]
    x0 = graph.flat(parts)
    x = x0
    for kernel, bias in zip(model.cross.kernels, model.cross.biases):
        xw = graph.node("MatMul", [x, graph.const(np.asarray(kernel.value, np.float32), "kernel")])
        x = graph.node("Add", [graph.node("Mul", [x0, xw]), graph.node("Add", [
            x, graph.const(np.asarray(bias.value, np.float32), "bias")])])
    both = graph.node("Concat", [x, graph.mlp(x0, model.deep)], axis=1)
    return graph.to_vector(graph.linear(both, model.output))


def _dlrm(graph, model):
    pooled = graph.collection(model.embedding) if model.embedding is not None else []
    z = None
    if model.bottom is not None:
        z = graph.mlp(_require_dense(graph, "DLRM's bottom MLP"), model.bottom)
        pooled = [z] + pooled
    pairs = graph.dot_pairs(graph.stacked(pooled), len(pooled), model.self_interaction)
    top_in = pairs if z is None else graph.node("Concat", [z, pairs], axis=1)
    return graph.to_vector(graph.mlp(top_in, model.top))


_MODEL_GRAPHS = {"lr": _lr, "fm": _fm, "wide_deep": _wide_deep, "deepfm": _deepfm,
                 "dcn": _dcn, "dlrm": _dlrm}


def _forward_of(name):
    from .models import MODELS
    return MODELS[name].forward
