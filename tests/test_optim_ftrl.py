"""FTRL-Proximal (``optim.Ftrl``, SPEC §2): the kernel against the float64
reference for every term of the rule, TF's own ``ftrl_test.py`` expected
values, and the validation of its arguments. (The properties shared by every
optimizer are in test_optim_conformance.py.)"""
import doctest
import warnings

import numpy as np
import pytest

import sparse_train.optim.ftrl as ftrl_module
from sparse_train import GlobalStep, RowSparseGrad, Variable
from sparse_train import autodiff as ad
from sparse_train.checkpoint import Checkpoint
from sparse_train.optim import OPTIMIZERS, Adagrad, Ftrl, GradientDescent, build_optimizer

import reference as ref
from reference import assert_close

V, D = 9, 8   # D = 8: a compile-time row width (kernels/_jit.STATIC_DIMS)

CASES = {
    "defaults": dict(learning_rate=0.3),
    "l1": dict(learning_rate=0.3, l1_regularization_strength=0.4),
    "l2": dict(learning_rate=0.3, l2_regularization_strength=0.7),
    "shrinkage": dict(learning_rate=0.3, l2_shrinkage_regularization_strength=0.2),
    "beta": dict(learning_rate=0.3, beta=0.5),
    "all": dict(learning_rate=0.3, initial_accumulator_value=0.2, l1_regularization_strength=0.05,
                l2_regularization_strength=0.1, l2_shrinkage_regularization_strength=0.05,
                beta=0.2),
    "power_-0.3": dict(learning_rate=0.3, learning_rate_power=-0.3,
                       l1_regularization_strength=0.05, l2_regularization_strength=0.1),
    "power_0": dict(learning_rate=0.3, learning_rate_power=0.0, l1_regularization_strength=0.05),
    "power_-1": dict(learning_rate=0.3, learning_rate_power=-1.0, beta=0.1),
    "zero_initial": dict(learning_rate=0.3, initial_accumulator_value=0.0,
                         l1_regularization_strength=0.05),
    "zero_initial_shrinkage": dict(learning_rate=0.3, initial_accumulator_value=0.0,
                                   l2_regularization_strength=0.1,
                                   l2_shrinkage_regularization_strength=0.2),
}


def _slots(opt, var):
    return {name: opt.get_slot(var, name).value.copy() for name in ("accum", "linear")}


@pytest.mark.parametrize("case", sorted(CASES))
def test_rule_matches_reference_sparse_and_dense(case):
    """A table (row-sparse gradients with duplicates, rows 0 and 1 absent in
    turn, rows V-2 and V-1 never touched) and a dense variable, 5 steps; the
    reference restarts from the float32 state after each step. Gradient
    entries are zeroed at random, so with a zero initial accumulator some
    elements still have accum = 0 (quad = a**p / lr + 2 l2 may be 0)."""
    hyper = CASES[case]
    rng = np.random.default_rng(sorted(CASES).index(case))
    table = Variable(rng.standard_normal((V, D)), "table")
    dense = Variable(rng.standard_normal((3, 4)), "dense")
    opt = Ftrl(**hyper)
    state = {v.name: ref.initial_slots("Ftrl", hyper, v.shape) for v in (table, dense)}
    zeroed = 0
    for t in range(5):
        ids = rng.integers(0, V - 2, 10)
        ids[:2] = [0, 0] if t % 2 == 0 else [1, 1]
        values = rng.standard_normal((10, D)).astype(np.float32)
        values[rng.random((10, D)) < 0.1] = 0.0
        g_dense = rng.standard_normal((3, 4)).astype(np.float32)
        g_dense[rng.random((3, 4)) < 0.1] = 0.0
        grads = {"table": (ids, values), "dense": (np.arange(3), g_dense)}
        before = {v.name: v.value.copy() for v in (table, dense)}
        opt.apply_gradients([(RowSparseGrad(ids, values, (V, D)), table), (g_dense, dense)])
        for var in (table, dense):
            w_ref, slots_ref = ref.step("Ftrl", hyper, before[var.name], state[var.name],
                                        *grads[var.name])
            slots = _slots(opt, var)
            what = f"{case} step {t} {var.name}"
            assert np.isfinite(var.value).all(), what
            assert_close(var.value, w_ref, err_msg=f"{what}: weight")
            for name in ("accum", "linear"):
                assert slots[name].dtype == np.float32
                assert_close(slots[name], slots_ref[name], err_msg=f"{what}: {name}")
            # The l1 rule's zeros are exact, and match the reference's.
            np.testing.assert_array_equal(var.value == 0, w_ref == 0, err_msg=what)
            zeroed += int((w_ref == 0).sum())
            state[var.name] = slots
        np.testing.assert_array_equal(table.value[V - 2:], before["table"][V - 2:])
    if "l1" in case or case in ("all", "power_0", "power_-0.3"):
        assert zeroed > 0, "l1 zeroed no weight: the case tests nothing"


def test_scalar_and_vector_variables():
    hyper = CASES["all"]
    rng = np.random.default_rng(3)
    variables = [Variable(np.float32(1.5), "scalar"), Variable(rng.standard_normal(5), "bias")]
    opt = Ftrl(**hyper)
    state = {v.name: ref.initial_slots("Ftrl", hyper, v.shape) for v in variables}
    for _ in range(3):
        grads = [rng.standard_normal(v.shape).astype(np.float32) for v in variables]
        before = [v.value.copy() for v in variables]
        opt.apply_gradients(list(zip(grads, variables)))
        for var, g, w0 in zip(variables, grads, before):
            ids = np.arange(1 if var.value.ndim == 0 else var.shape[0])
            w_ref, slots_ref = ref.step("Ftrl", hyper, w0, state[var.name], ids,
                                        np.reshape(g, (ids.shape[0], -1)))
            assert var.value.shape == var.shape
            assert_close(var.value, w_ref)
            state[var.name] = _slots(opt, var)
            for name in slots_ref:
                assert state[var.name][name].shape == var.shape
                assert_close(state[var.name][name], slots_ref[name])


def test_zero_gradient_at_zero_accumulator_sets_the_weight_to_zero():
    # TF's select: quad = 0 there, linear = 0 <= l1, so w = 0 (not 0/0).
    var = Variable(np.full((2, 3), 5.0), "w")
    opt = Ftrl(1.0, initial_accumulator_value=0.0)
    opt.apply_gradients([(np.array([[1.0, 0.0, -2.0], [0.0, 0.0, 0.0]], np.float32), var)])
    np.testing.assert_array_equal(opt.get_slot(var, "accum").value, [[1, 0, 4], [0, 0, 0]])
    # linear = g - (sqrt(a) - 0) / 1 * 5 = -4 and -12; w = -linear / sqrt(a).
    np.testing.assert_array_equal(opt.get_slot(var, "linear").value, [[-4, 0, -12], [0, 0, 0]])
    np.testing.assert_array_equal(var.value, [[4.0, 0.0, 6.0], [0.0, 0.0, 0.0]])


def test_untouched_rows_and_slots_of_a_table_keep_their_bits():
    hyper = CASES["all"]
    table = Variable(np.random.default_rng(4).standard_normal((V, D)), "table")
    opt = Ftrl(**hyper)
    opt.apply_gradients([(RowSparseGrad([0, 1, 2], np.ones((3, D)), (V, D)), table)])
    before = table.value.copy(), _slots(opt, table)
    opt.apply_gradients([(RowSparseGrad([1, 1], np.ones((2, D)), (V, D)), table)])
    keep = [0, *range(2, V)]
    np.testing.assert_array_equal(table.value[keep], before[0][keep])
    for name in ("accum", "linear"):
        np.testing.assert_array_equal(_slots(opt, table)[name][keep], before[1][name][keep])
    assert (table.value[1] != before[0][1]).all()


# ------------------------------------------------- TF's own ftrl_test.py
# Expected values from tensorflow/python/training/ftrl_test.py
# (FtrlOptimizerTest), float32 cases; TF asserts them with
# assertAllCloseAccordingToType, i.e. rtol = atol = 1e-6 for float32.
TF_TOL = dict(rtol=1e-6, atol=1e-6)
TF_GRADS = ([0.1, 0.2], [0.01, 0.02])


def _tf_run(opt, inits, grads, steps, sparse=False):
    """TF's test layout: two variables in one ``apply_gradients`` per step.
    Dense: [2] variables, constant gradients. Sparse: [2, 1] variables,
    an IndexedSlices of one row each (``grads`` = [(index, value)])."""
    variables = [Variable(np.array(v, np.float32), f"var{k}") for k, v in enumerate(inits)]
    for _ in range(steps):
        if sparse:
            pairs = [(RowSparseGrad([i], [[g]], (2, 1)), v) for (i, g), v in zip(grads, variables)]
        else:
            pairs = [(np.array(g, np.float32), v) for g, v in zip(grads, variables)]
        opt.apply_gradients(pairs)
    return [v.value for v in variables]


@pytest.mark.parametrize("name, hyper, inits, steps, expected", [
    ("testFtrlwithoutRegularization", {}, ([0.0, 0.0], [0.0, 0.0]), 3,
     ([-2.60260963, -4.29698515], [-0.28432083, -0.56694895])),
    ("testFtrlwithoutRegularization2", {}, ([1.0, 2.0], [4.0, 3.0]), 3,
     ([-2.55607247, -3.98729396], [-0.28232238, -0.56096673])),
    ("testFtrlWithL1", dict(l1_regularization_strength=0.001), ([1.0, 2.0], [4.0, 3.0]), 10,
     ([-7.66718769, -10.91273689], [-0.93460727, -1.86147261])),
    ("testFtrlWithL1_L2", dict(l1_regularization_strength=0.001, l2_regularization_strength=2.0),
     ([1.0, 2.0], [4.0, 3.0]), 10,
     ([-0.24059935, -0.46829352], [-0.02406147, -0.04830509])),
    ("testFtrlWithL1_L2_L2Shrinkage",
     dict(l1_regularization_strength=0.001, l2_regularization_strength=2.0,
          l2_shrinkage_regularization_strength=0.1), ([1.0, 2.0], [4.0, 3.0]), 10,
     ([-0.22578995, -0.44345796], [-0.14378493, -0.13229476])),
])
def test_tf_ftrl_test_dense_cases(name, hyper, inits, steps, expected):
    opt = Ftrl(3.0, initial_accumulator_value=0.1, **hyper)
    got = _tf_run(opt, inits, TF_GRADS, steps)
    for g, e in zip(got, expected):
        np.testing.assert_allclose(g, e, err_msg=name, **TF_TOL)


def test_tf_ftrl_test_sparse_l1_l2_shrinkage():
    # testFtrlWithL1_L2_L2ShrinkageSparse: the untouched rows keep 2 and 4.
    opt = Ftrl(3.0, initial_accumulator_value=0.1, l1_regularization_strength=0.001,
               l2_regularization_strength=2.0, l2_shrinkage_regularization_strength=0.1)
    var0, var1 = _tf_run(opt, ([[1.0], [2.0]], [[4.0], [3.0]]), [(0, 0.1), (1, 0.02)], 10,
                         sparse=True)
    np.testing.assert_allclose(var0, [[-0.22578995], [2.0]], **TF_TOL)
    np.testing.assert_allclose(var1, [[4.0], [-0.13229476]], **TF_TOL)


def test_tf_ftrl_test_l2_shrinkage_does_not_change_the_lr_schedule():
    # testFtrlWithL2ShrinkageDoesNotChangeLrSchedule.
    hyper = dict(initial_accumulator_value=0.1, l1_regularization_strength=0.001,
                 l2_regularization_strength=2.0)
    opt0 = Ftrl(3.0, l2_shrinkage_regularization_strength=0.1, **hyper)
    opt1 = Ftrl(3.0, **hyper)
    var0, var1 = Variable(np.array([1.0, 2.0]), "var0"), Variable(np.array([1.0, 2.0]), "var1")
    for _ in range(10):
        opt0.apply_gradients([(np.array([0.1, 0.2], np.float32), var0)])
        opt1.apply_gradients([(np.array([0.1, 0.2], np.float32), var1)])
    assert (var0.value ** 2 < var1.value ** 2).all()
    np.testing.assert_array_equal(opt0.get_slot(var0, "accum").value,
                                  opt1.get_slot(var1, "accum").value)


def test_tf_ftrl_test_minimize_sparse_resource_variable():
    # testMinimizeSparseResourceVariable: loss = (lookup(var0, [0]) @ x)**2,
    # one step of Ftrl(1.0) with TF's defaults; TF asserts [[0, 1]], atol 0.01.
    var0 = Variable(np.array([[1.0, 2.0]]), "var0")
    x = np.array([[4.0], [5.0]], np.float32)
    pred = ad.matmul(ad.embedding_bag(var0, [0], [0, 1]), x)
    opt = Ftrl(1.0)
    grads = opt.compute_gradients(ad.reduce_sum(ad.mul(pred, pred)), [var0])
    assert isinstance(grads[0][0], RowSparseGrad)
    opt.apply_gradients(grads)
    np.testing.assert_allclose(var0.value, [[0.0, 1.0]], atol=0.01)


def _tf_equivalence_run(opt, sparse):
    """TF's applyOptimizer: zero variables, 5 steps."""
    if sparse:
        return _tf_run(opt, ([[0.0], [0.0]], [[0.0], [0.0]]), [(0, 0.1), (1, 0.02)], 5,
                       sparse=True)
    return _tf_run(opt, ([0.0, 0.0], [0.0, 0.0]), TF_GRADS, 5)


@pytest.mark.parametrize("sparse", [False, True])
@pytest.mark.parametrize("power, other", [
    (-0.5, lambda: Adagrad(3.0, initial_accumulator_value=0.1)),
    (-0.0, lambda: GradientDescent(3.0)),
])
def test_tf_ftrl_test_equivalences_from_zero(power, other, sparse):
    # testEquiv[Sparse]AdagradwithoutRegularization and
    # testEquiv[Sparse]GradientDescentwithoutRegularization: from zero
    # weights, FTRL without l1/l2 takes Adagrad's (p = 0.5) or SGD's (p = 0) steps.
    got = _tf_equivalence_run(Ftrl(3.0, learning_rate_power=power,
                                   initial_accumulator_value=0.1), sparse)
    expected = _tf_equivalence_run(other(), sparse)
    assert np.abs(expected[0]).max() > 0.1                # the runs did move
    for g, e in zip(got, expected):
        np.testing.assert_allclose(g, e, **TF_TOL)


# --------------------------------------------------- arguments and config
@pytest.mark.parametrize("kwargs", [
    dict(learning_rate=0.0),              # the rule divides by it
    dict(learning_rate=-0.1),
    dict(learning_rate=1e-50),            # 0 in float32
    dict(learning_rate=float("nan")),
    dict(learning_rate=0.1, learning_rate_power=0.5),
    dict(learning_rate=0.1, learning_rate_power=-1e39),                   # inf in float32
    dict(learning_rate=0.1, initial_accumulator_value=-0.1),
    dict(learning_rate=0.1, l1_regularization_strength=-1.0),
    dict(learning_rate=0.1, l2_regularization_strength=-1.0),
    dict(learning_rate=0.1, l2_shrinkage_regularization_strength=-1.0),
    dict(learning_rate=0.1, beta=-1.0),
    dict(learning_rate=0.1, beta=float("inf")),
    dict(learning_rate=0.1, l1_regularization_strength=1e39),             # inf in float32
    dict(learning_rate=0.1, l2_shrinkage_regularization_strength=1e39),
    dict(learning_rate=1e-40, beta=1.0),  # beta / (2 lr), folded into l2, is inf in float32
    # quad = 0 for a zero gradient at accum 0, and linear = 2 s w != 0: w = inf
    dict(learning_rate=0.1, initial_accumulator_value=0.0,
         l2_shrinkage_regularization_strength=0.1),
])
def test_invalid_arguments_raise_value_error_naming_them(kwargs):
    bad = [k for k in kwargs if k != "learning_rate"] or ["learning_rate"]
    with pytest.raises(ValueError, match=bad[-1]):
        Ftrl(**kwargs)


def test_zero_initial_with_shrinkage_is_allowed_with_l2_beta_or_a_fixed_rate():
    for extra in (dict(l2_regularization_strength=0.1), dict(beta=0.1),
                  dict(learning_rate_power=0.0)):
        opt = Ftrl(0.5, initial_accumulator_value=0.0,
                   l2_shrinkage_regularization_strength=0.1, **extra)
        var = Variable(np.ones((2, 2)), "w")
        opt.apply_gradients([(np.array([[1.0, 0.0], [0.0, 0.0]], np.float32), var)])
        assert np.isfinite(var.value).all(), extra


def test_config_names_and_registration():
    hyper = CASES["all"]
    opt = Ftrl(**hyper, learning_rate_power=-0.4, name="wide")
    assert opt.get_config() == {**hyper, "learning_rate_power": -0.4, "name": "wide"}
    assert opt.get_slot_names() == ["accum", "linear"]
    assert Ftrl(0.1).get_config() == {
        "name": "Ftrl", "learning_rate": 0.1, "learning_rate_power": -0.5,
        "initial_accumulator_value": 0.1, "l1_regularization_strength": 0.0,
        "l2_regularization_strength": 0.0, "l2_shrinkage_regularization_strength": 0.0,
        "beta": 0.0}
    assert OPTIMIZERS["ftrl"] is Ftrl
    built = build_optimizer("ftrl", 0.2, global_step=GlobalStep(), l1_regularization_strength=0.3)
    assert isinstance(built, Ftrl) and built.get_config()["l1_regularization_strength"] == 0.3
    var = Variable(np.zeros((2, 2)), "emb")
    opt.apply_gradients([(np.ones((2, 2), np.float32), var)])
    assert opt.get_slot(var, "linear").name == "emb/wide/linear"


def test_checkpoint_carries_the_hyperparameters(tmp_path):
    var, step = Variable(np.ones((3, 2)), "w"), GlobalStep()
    opt = Ftrl(0.1, l1_regularization_strength=0.01)
    opt.apply_gradients([(np.ones((3, 2), np.float32), var)], global_step=step)
    path = Checkpoint([var], [opt], step).save(tmp_path / "c.ckpt")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        Checkpoint([Variable(np.zeros((3, 2)), "w")], [Ftrl(0.1, l1_regularization_strength=0.01)],
                   GlobalStep()).restore(path)
    with pytest.warns(UserWarning, match=r"l1_regularization_strength=0.01 in the checkpoint, "
                                         r"0.02 now"):
        Checkpoint([Variable(np.zeros((3, 2)), "w")], [Ftrl(0.1, l1_regularization_strength=0.02)],
                   GlobalStep()).restore(path)


def test_docstring_example():
    result = doctest.testmod(ftrl_module)
    assert result.attempted > 0 and result.failed == 0, result
