"""Variable and GlobalStep (DESIGN core types; SPEC §1 step counting, §5 dtypes)."""
import numpy as np
import pytest

from sparse_train import GlobalStep, Variable


def test_variable_fixes_dtypes_float32_and_int64():
    assert Variable(np.zeros((2, 3), np.float64), "a").dtype == np.float32
    assert Variable([[1.5, 2.0]], "b").dtype == np.float32
    assert Variable(np.arange(4, dtype=np.int32), "c").dtype == np.int64
    v = Variable(np.arange(6.0).reshape(2, 3), "d")
    assert v.value.flags.c_contiguous and v.shape == (2, 3) and v.name == "d"
    np.testing.assert_array_equal(v.value, np.arange(6.0).reshape(2, 3))


def test_variable_float32_contiguous_is_not_copied():
    array = np.ones((4, 2), np.float32)
    v = Variable(array, "t")
    v.value[1, 1] = 7.0
    assert array[1, 1] == 7.0  # same memory: a table is never held twice


def test_variable_asarray_and_assign_in_place():
    v = Variable(np.zeros((2, 2), np.float32), "w")
    before = v.value
    v.assign([[1.0, 2.0], [3.0, 4.0]])
    assert v.value is before
    np.testing.assert_array_equal(np.asarray(v), [[1.0, 2.0], [3.0, 4.0]])
    with pytest.raises(ValueError, match="'w'"):
        v.assign(np.zeros((3, 2)))


@pytest.mark.parametrize("name", ["", None, 3])
def test_variable_needs_a_name(name):
    with pytest.raises(ValueError):
        Variable(np.zeros(2), name)


def test_variable_rejects_non_real_values():
    with pytest.raises((TypeError, ValueError)):
        Variable(np.array(["a", "b"]), "s")


def test_global_step_counts_int64():
    gs = GlobalStep()
    assert int(gs) == 0 and gs.value.dtype == np.int64 and gs.value.shape == ()
    gs.increment()
    gs.increment()
    assert int(gs) == 2
    gs.assign(41)
    assert int(gs.increment()) == 42
    assert int(GlobalStep(7)) == 7


@pytest.mark.parametrize("bad", [-1, -100, 1.5, "3", True, None, np.array([2])])
def test_global_step_rejects_negative(bad):
    with pytest.raises(ValueError):
        GlobalStep(bad)
    with pytest.raises(ValueError):
        GlobalStep().assign(bad)


def test_global_step_takes_whole_numbers_of_any_integer_type():
    assert int(GlobalStep(np.int64(3))) == 3 and int(GlobalStep(4.0)) == 4
    gs = GlobalStep()
    gs.assign(np.array(9))
    assert int(gs) == 9
    with pytest.raises(ValueError, match=r"global step must be an integer >= 0, got 1\.5"):
        gs.assign(1.5)
    assert int(gs) == 9


def test_assign_refuses_strings_and_floats_into_integers_naming_the_variable():
    w = Variable(np.zeros((2,)), "w")
    with pytest.raises(ValueError, match="Variable 'w': cannot assign dtype <U1"):
        w.assign(np.array(["a", "b"]))
    counts = Variable(np.zeros(2, np.int64), "counts")
    with pytest.raises(ValueError, match="'counts': cannot assign dtype float64 to dtype int64"):
        counts.assign(np.array([1.5, 2.0]))
    w.assign([1, 2])
    counts.assign(np.array([3, 4], np.int32))
    assert w.value.tolist() == [1.0, 2.0] and counts.value.tolist() == [3, 4]


def test_a_read_only_array_is_refused_naming_the_variable():
    frozen = np.ones((4, 2), np.float32)
    frozen.flags.writeable = False
    with pytest.raises(ValueError, match=r"Variable 'emb/user': the value array is read-only"):
        Variable(frozen, "emb/user")
    assert Variable(frozen, "constant", trainable=False).value is frozen
    v = Variable(np.zeros((4, 2)), "w")
    with pytest.raises(ValueError, match=r"Variable 'w': the value array is read-only"):
        v.value = frozen
    assert v.value.flags.writeable
