"""16-bit tables in layers, models and checkpoints (SPEC §7): lookups read
the widened rows and accumulate in float32 (against a float64 reference of
SPEC §3 on the widened table); checkpoints keep the 16-bit bits."""
import numpy as np
import pytest

from sparse_train import GlobalStep, Variable, optim
from sparse_train import functional as F
from sparse_train.checkpoint import Checkpoint, CheckpointError
from sparse_train.data import DataSpec, FeatureSpec
from sparse_train.models import build_model
from sparse_train.nn import EmbeddingBagCollection, EmbeddingTable
from sparse_train.training import train_step

D = 8


def _widened(table):
    bits = table.weight.value.view(np.uint16)
    if table.dtype == "bfloat16":
        return (bits.astype(np.uint32) << 16).view(np.float32).astype(np.float64)
    return bits.view(np.float16).astype(np.float64)


def _reference_lookup(table64, values, offsets, weights, combiner, padding_idx):
    out = np.zeros((len(offsets) - 1, table64.shape[1]))
    for b in range(len(offsets) - 1):
        ids = values[offsets[b]:offsets[b + 1]]
        w = np.ones(len(ids)) if weights is None else weights[offsets[b]:offsets[b + 1]]
        keep = ids != padding_idx
        ids, w = ids[keep], w[keep].astype(np.float64)
        divisor = {"sum": 1.0, "mean": w.sum(), "sqrtn": np.sqrt((w * w).sum())}[combiner]
        if len(ids) and divisor != 0:
            out[b] = (w[:, None] * table64[ids]).sum(axis=0) / divisor
    return out


@pytest.mark.parametrize("dtype", ["bfloat16", "float16"])
@pytest.mark.parametrize("combiner", ["sum", "mean", "sqrtn"])
def test_lookup_matches_float64_reference(dtype, combiner):
    rng = np.random.default_rng(0)
    table = EmbeddingTable(40, D, f"t_{dtype}", initializer="normal", padding_idx=3,
                           dtype=dtype)
    assert table.weight.value.dtype == {"bfloat16": np.uint16, "float16": np.float16}[dtype]
    assert table.weight.value.nbytes == 40 * D * 2
    lengths = rng.integers(0, 6, 9)
    offsets = np.concatenate([[0], np.cumsum(lengths)])
    values = rng.integers(0, 40, offsets[-1])
    values[::4] = 3  # padding ids
    for weights in (None, rng.random(offsets[-1]).astype(np.float32)):
        got = table.lookup(values, offsets, weights, combiner)
        want = _reference_lookup(_widened(table), values, offsets, weights, combiner, 3)
        assert got.dtype == np.float32
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)
    # the padding row is +0 in 16 bits and the float32 lookup of the widened
    # table gives the same bits (same float32 operations, same order)
    assert (table.weight.value[3].view(np.uint16) == 0).all()
    float_table = np.asarray(table.weight)
    assert float_table.dtype == np.float32
    assert (F.embedding_bag(float_table, values, offsets, None, combiner, 3)
            == table.lookup(values, offsets, None, combiner)).all()


def test_bad_dtype_and_raw_bits_are_refused():
    with pytest.raises(ValueError, match="dtype must be one of"):
        EmbeddingTable(4, D, "t", dtype="int8")
    with pytest.raises(ValueError, match="rounding must be one of"):
        EmbeddingTable(4, D, "t", dtype="bfloat16", rounding="up")
    bits = np.zeros((4, D), np.uint16)
    with pytest.raises(ValueError, match="bfloat16 table's uint16 bits"):
        F.embedding_bag(bits, [1], [0, 1])


def _spec():
    return DataSpec((FeatureSpec("user", 30), FeatureSpec("item", 20, multi_hot=True)), ("x",))


def _batch(rng, size=16):
    from sparse_train import Ragged
    from sparse_train.data import Batch
    items = Ragged.from_lengths(rng.integers(0, 20, 3 * size), np.full(size, 3))
    return Batch(rng.integers(0, 2, size).astype(np.float32),
                 rng.standard_normal((size, 1)).astype(np.float32),
                 {"user": Ragged.from_dense(rng.integers(0, 30, size)), "item": items})


def test_collection_stacks_16_bit_tables():
    ebc = EmbeddingBagCollection(_spec(), D, "half_ebc", dtype="bfloat16", init_scale=0.5)
    full = EmbeddingBagCollection(_spec(), D, "half_ebc", init_scale=0.5)
    assert ebc.weight.storage == "bfloat16" and ebc.weight.shape == (50, D)
    # the same initial values, narrowed (twice: drawn, then scaled) to one unit
    diff = np.abs(np.asarray(ebc.weight) - full.weight.value)
    assert (diff <= 2 * 2**-8 * np.abs(full.weight.value) + 1e-30).all()
    batch = _batch(np.random.default_rng(1))
    got = ebc.stacked(batch).data
    want = np.stack([_reference_lookup(np.asarray(ebc.weight, np.float64), *_feature(
        ebc, batch, f)) for f in ebc.feature_names], axis=1)
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)


def _feature(ebc, batch, name):
    ragged = batch.sparse[name]
    row = ebc._feature_row[name]
    return (ragged.values + row, ragged.offsets, None, ebc.bags[name].combiner, -1)


@pytest.mark.parametrize("rounding", ["nearest", "stochastic"])
def test_deepfm_trains_and_checkpoints_bit_exact(tmp_path, rounding):
    rng = np.random.default_rng(2)
    batches = [_batch(rng) for _ in range(3)]

    def make():
        model = build_model("deepfm", _spec(), embedding_dim=D, hidden_units=(8,),
                            scope="half_dfm", table_dtype="bfloat16", table_rounding=rounding)
        gs = GlobalStep()
        return model, gs, optim.Adagrad(0.1), optim.Adam(0.01)

    model, gs, tables, dense = make()
    table = model.embedding.weight
    assert table.storage == "bfloat16" and model.get_config()["table_dtype"] == "bfloat16"
    before = table.value.copy()
    losses = [train_step(model, b, tables, dense, gs) for b in batches[:2]]
    assert np.isfinite(losses).all() and (table.value != before).any()
    path = tmp_path / "m.ckpt"
    Checkpoint(model.variables(), [tables, dense], gs).save(path)
    train_step(model, batches[2], tables, dense, gs)
    model2, gs2, tables2, dense2 = make()
    Checkpoint(model2.variables(), [tables2, dense2], gs2).restore(path)
    assert model2.embedding.weight.value.dtype == np.uint16
    train_step(model2, batches[2], tables2, dense2, gs2)
    for a, b in zip(model.variables(), model2.variables()):  # resume == uninterrupted
        assert (a.value == b.value).all(), a.name


def test_checkpoint_refuses_another_storage(tmp_path):
    full = Variable(np.ones((4, D)), "w")
    path = tmp_path / "f.ckpt"
    Checkpoint([full], []).save(path)
    narrow = Variable(np.zeros((4, D)), "w", dtype="bfloat16")
    with pytest.raises(CheckpointError, match="stored as float32 in the checkpoint, bfloat16"):
        Checkpoint([narrow], []).restore(path)
    assert (narrow.value == 0).all()
    narrow.assign(full.value)  # the explicit way: narrow nearest-even
    assert (np.asarray(narrow) == 1.0).all()


def _train_script():
    import importlib.util
    from pathlib import Path
    path = Path(__file__).resolve().parents[2] / "scripts" / "train.py"
    spec = importlib.util.spec_from_file_location("train_script_half", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_train_script_table_dtype_flags(tmp_path, capsys):
    import json
    script = _train_script()
    common = ["--examples", "600", "--batch-size", "100", "--epochs", "1", "--quiet",
              "--embedding-dim", "8", "--hidden-units", "8"]
    assert script.main([*common, "--rounding", "stochastic"]) == 2
    assert "--rounding only applies with --table-dtype" in capsys.readouterr().err
    out = tmp_path / "m.json"
    assert script.main([*common, "--table-dtype", "bfloat16", "--rounding", "stochastic",
                        "--metrics-out", str(out)]) == 0
    assert 0.0 < json.loads(out.read_text())["auc"] <= 1.0


def test_float32_use_compiles_no_16_bit_kernel():
    """Importing the library and training a float32 table leaves every
    16-bit kernel uncompiled (Numba compiles per signature, on first call)."""
    import subprocess
    import sys
    code = """
import numpy as np, sparse_train as st
from sparse_train.kernels import half, update_half
t = st.EmbeddingTable(20, 8, "t")
g = t.lookup_grad(np.ones((2, 8), np.float32), [1, 2, 3], [0, 1, 3])
st.optim.Adagrad(0.1).apply_gradients([(g, t.weight)])
kernels = [half.narrow_rows, half.widen_rows, half.embedding_bag_forward_half] + [
    getattr(update_half, n) for n in dir(update_half) if n.endswith("_apply_half")]
assert len(kernels) == 10, len(kernels)
assert all(not k.signatures for k in kernels), [k for k in kernels if k.signatures]
"""
    subprocess.run([sys.executable, "-c", code], check=True)


def test_onnx_export_widens_16_bit_tables():
    pytest.importorskip("onnx", reason="the 'onnx' extra (onnx) is not installed")
    ort = pytest.importorskip("onnxruntime", reason="the 'onnx' extra is not installed")
    from sparse_train.export import onnx_inputs, onnx_model
    model = build_model("deepfm", _spec(), embedding_dim=D, hidden_units=(8,),
                        scope="half_onnx", table_dtype="float16")
    batch = _batch(np.random.default_rng(4))
    proto = onnx_model(model)
    session = ort.InferenceSession(proto.SerializeToString(), providers=["CPUExecutionProvider"])
    got = session.run(["probability"], onnx_inputs(batch, _spec()))[0]
    np.testing.assert_allclose(got, model.predict(batch), rtol=1e-5, atol=1e-6)


def test_a_shard_of_a_16_bit_table_keeps_its_bits():
    from sparse_train.distributed.sharding import ShardedTable
    table = EmbeddingTable(11, D, "t", dtype="bfloat16", rounding="stochastic")
    shard = ShardedTable(table, 1, 3)
    assert shard.weight.storage == "bfloat16" and shard.weight.rounding == "stochastic"
    assert (shard.weight.value == table.weight.value[1::3]).all()
    assert shard.weight.global_rows == (3, 1)  # local row l is global row 3 l + 1
