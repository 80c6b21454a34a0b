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
