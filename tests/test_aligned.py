"""Tables and optimizer slots start on a 64-byte cache line (``_aligned``):
a row of 16 float32 then occupies one line, not two."""
import numpy as np
import pytest

import sparse_train as st
from sparse_train._aligned import aligned_empty, aligned_full
from sparse_train.data import DataSpec, FeatureSpec
from sparse_train.nn import EmbeddingBagCollection


def _on_a_line(array):
    return array.ctypes.data % 64 == 0


@pytest.mark.parametrize("shape,dtype", [((3,), np.int64), ((1000, 16), np.float32),
                                         ((5, 3), np.float32)])
def test_aligned_arrays(shape, dtype):
    a = aligned_empty(shape, dtype)
    assert a.shape == shape and a.dtype == dtype and a.flags.c_contiguous and a.flags.writeable
    assert _on_a_line(a)
    b = aligned_full(shape, 7, dtype)
    assert _on_a_line(b) and (b == 7).all()


def test_empty_aligned_array():
    a = aligned_empty((0, 4))
    assert a.shape == (0, 4) and a.dtype == np.float32


def test_tables_and_every_optimizers_slots_start_on_a_line():
    table = st.EmbeddingTable(100_000, 16, "aligned_table")
    assert _on_a_line(table.weight.value)
    spec = DataSpec((FeatureSpec("a", 1000), FeatureSpec("b", 30)), ())
    assert _on_a_line(EmbeddingBagCollection(spec, 16, "aligned_ebc").weight.value)
    grad = st.RowSparseGrad([3, 7], np.ones((2, 16)), (100_000, 16))
    step = st.GlobalStep()
    for opt in (st.optim.Adagrad(0.1), st.optim.AdagradDecay(0.1, step), st.optim.Adam(),
                st.optim.LazyAdam(), st.optim.RowwiseAdagrad(0.1)):
        opt.apply_gradients([(grad, table.weight)], global_step=step)
        for name in opt.get_slot_names():
            assert _on_a_line(opt.get_slot(table.weight, name).value), (opt.name, name)


def test_a_table_too_large_for_memory_names_itself_and_its_bytes(monkeypatch):
    from sparse_train import _aligned
    from sparse_train.nn import EmbeddingTable
    with pytest.raises(MemoryError, match=r"embedding table 'user_id' needs 64000000000000 bytes"):
        EmbeddingTable(10 ** 12, 16, "user_id")
    # a table that numpy could reserve (overcommit) but the machine cannot hold:
    # refused before it is filled (the OOM killer would end the process)
    monkeypatch.setattr(_aligned, "available_memory", lambda: 10 << 20)
    with pytest.raises(ValueError, match=r"embedding table 'item' needs 128000000 bytes "
                                         r"\(122.1 MiB\) .* only 10485760 bytes"):
        EmbeddingTable(2_000_000, 16, "item")
    assert aligned_empty((1000, 16)).shape == (1000, 16)  # small: not checked
    with pytest.raises(MemoryError, match=r"the embedding tables of 'ebc' \(c0: 2000000 rows"):
        EmbeddingBagCollection(DataSpec((FeatureSpec("c0", 2_000_000),)), 16, name="ebc")


def test_available_memory_is_a_positive_number():
    from sparse_train._aligned import available_memory
    value = available_memory()
    assert value is None or value > 0
