"""``DynamicEmbeddingTable(init_scale=)``: an admitted key's row is
``float32(init_scale) * init(seed, key)`` rounded to float32, checked against
a NumPy reference built from the unscaled table's ``initial_rows``; models
give their dynamic tables the static tables' ``embedding_init_scale``."""
import numpy as np
import pytest

import sparse_train as st
from sparse_train import DynamicEmbeddingTable
from sparse_train.data import DataSpec, FeatureSpec

D = 6
KEYS = np.array([0, 7, -3, 2**62 + 11, -2**63, 123456789012], np.int64)


def reference_rows(keys, scale, initializer="truncated_normal"):
    """The unscaled rows (init_scale 1) times the scale: the product of two
    float32 numbers is exact in float64, then rounded once to float32."""
    unscaled = DynamicEmbeddingTable(D, "user", initializer, seed=9).initial_rows(keys)
    return (unscaled.astype(np.float64) * np.float64(np.float32(scale))).astype(np.float32)


def admitted_rows(table, keys):
    """{key: row} read from ``table.export()``."""
    state = table.export()
    return {int(k): state["values"][i] for i, k in enumerate(state["keys"]) if k in keys}


@pytest.mark.parametrize("initializer", ["truncated_normal", "uniform", "normal"])
@pytest.mark.parametrize("scale", [0.1, 3.0])
def test_admitted_rows_are_the_unscaled_rows_times_init_scale(initializer, scale):
    table = DynamicEmbeddingTable(D, "user", initializer, seed=9, filter_freq=2,
                                  steps_to_live=1, init_scale=scale)
    want = reference_rows(KEYS, scale, initializer)
    assert table.initial_rows(KEYS).tobytes() == want.tobytes()
    offsets = np.arange(KEYS.shape[0] + 1)
    table.lookup(KEYS, offsets, global_step=0)          # counted, not admitted
    assert len(table) == 0
    out = table.lookup(KEYS, offsets, global_step=0)    # admitted: reads its row
    got = admitted_rows(table, KEYS.tolist())
    for i, key in enumerate(KEYS.tolist()):
        assert got[key].tobytes() == want[i].tobytes()
        assert out[i].tobytes() == want[i].tobytes()
    table.weight.value[1:] = 5.0                        # a row given again after an
    assert table.evict(2) == KEYS.shape[0]              # eviction is initialized again
    for _ in range(2):
        table.lookup(KEYS[1:2], [0, 1], global_step=4)
    assert admitted_rows(table, [int(KEYS[1])])[int(KEYS[1])].tobytes() == want[1].tobytes()


@pytest.mark.parametrize("bad", [0, -0.5, float("nan"), float("inf"), True, "0.1", None])
def test_init_scale_is_checked(bad):
    with pytest.raises(ValueError, match="'user': init_scale must be a finite number > 0"):
        DynamicEmbeddingTable(D, "user", init_scale=bad)


def test_models_give_dynamic_tables_the_static_tables_scale():
    """``--ids dynamic`` models start like static ones: the embedding tables'
    rows are drawn with the same spread (stddev 0.1 of the initializer's
    1/sqrt(D), truncated at 2 stddevs, against the static tables' values)."""
    static_spec = DataSpec((FeatureSpec("user", 4000), FeatureSpec("item", 4000)), ())
    dynamic_spec = DataSpec((FeatureSpec("user", None), FeatureSpec("item", None)), ())
    static = st.build_model("fm", static_spec, embedding_dim=8, seed=1)
    dynamic = st.build_model("fm", dynamic_spec, embedding_dim=8, seed=1)
    assert dynamic.get_config()["embedding_init_scale"] == 0.1
    tables = [t for t in dynamic.dynamic_tables() if "/embedding/" in t.name]
    assert len(tables) == 2 and all(t.init_scale == 0.1 for t in tables)
    static_values = np.concatenate([v.value.ravel() for v in static.sparse_variables()
                                    if "/embedding/" in v.name]).astype(np.float64)
    keys = np.arange(-4000, 4000, dtype=np.int64) * 1000003
    dynamic_values = np.concatenate([t.initial_rows(keys).ravel() for t in tables])
    static_std, dynamic_std = static_values.std(), dynamic_values.astype(np.float64).std()
    assert abs(dynamic_std / static_std - 1) < 0.03, (static_std, dynamic_std)
    bound = 2 * 0.1 / np.sqrt(8)  # truncated normal: within 2 stddevs
    assert np.abs(dynamic_values).max() <= np.float32(bound) * (1 + 1e-6)
