"""Each update rule of SPEC §1-§2 against the float64 reference.

After each step the reference restarts from the library's float32 state, so
the comparison is per step (SPEC §5: relative error <= 1e-5 per step).
"""
import numpy as np
import pytest

from sparse_train import GlobalStep, RowSparseGrad, Variable, optim

import reference as ref
from reference import assert_close, f32

OPTIMIZERS = ["GradientDescent", "Adagrad", "AdagradDecay", "Adam", "LazyAdam", "RowwiseAdagrad"]
ADAMS = ("Adam", "LazyAdam")
V, D = 9, 3


def _assert_state(var, slots, w_ref, slots_ref, what):
    assert_close(var.value, w_ref, err_msg=f"{what}: weight")
    assert sorted(slots) == sorted(slots_ref), what
    for name, value in slots_ref.items():
        if name == "accumulator_decay_power":
            assert slots[name].dtype == np.int64
            np.testing.assert_array_equal(slots[name], value, err_msg=f"{what}: {name}")
        else:
            assert slots[name].dtype == np.float32
            assert_close(slots[name], value, err_msg=f"{what}: {name}")


@pytest.mark.parametrize("kind", OPTIMIZERS)
def test_rule_matches_reference_over_steps(kind, make_optimizer, hyper, slots_of, beta_powers):
    """A table (row-sparse gradient with duplicates, rows absent in some steps)
    and a dense variable, updated together for 5 steps."""
    rng = np.random.default_rng(100 + OPTIMIZERS.index(kind))
    table = Variable(rng.standard_normal((V, D)), "table")
    dense = Variable(rng.standard_normal((3, 4)), "dense")
    gs = GlobalStep()
    opt = make_optimizer(kind, gs)
    hp = hyper[kind]
    state = {v.name: ref.initial_slots(kind, hp, v.shape) for v in (table, dense)}
    powers = (f32(hp["beta1"]), f32(hp["beta2"])) if kind in ADAMS else None
    for t in range(5):
        ids = rng.integers(0, V - 2, 8)          # duplicates; rows V-2, V-1 never touched
        ids[:2] = [0, 0] if t % 2 == 0 else [1, 1]  # rows 0 and 1 take turns being absent
        values = rng.standard_normal((8, D)).astype(np.float32)
        g_dense = rng.standard_normal((3, 4)).astype(np.float32)
        grads = {"table": (ids, values), "dense": (np.arange(3), g_dense)}
        before = {v.name: v.value.copy() for v in (table, dense)}
        opt.apply_gradients([(RowSparseGrad(ids, values, (V, D)), table), (g_dense, dense)],
                            global_step=gs)
        assert int(gs) == t + 1
        for var in (table, dense):
            w_ref, slots_ref = ref.step(kind, hp, before[var.name], state[var.name],
                                        *grads[var.name], beta_powers=powers, global_step=t)
            slots = slots_of(opt, var)
            _assert_state(var, slots, w_ref, slots_ref, f"{kind} step {t} {var.name}")
            state[var.name] = slots          # restart the reference from float32
        if kind in ADAMS:
            after = beta_powers(opt)
            assert_close(after, [powers[0] * f32(hp["beta1"]), powers[1] * f32(hp["beta2"])])
            powers = after


@pytest.mark.parametrize("kind", OPTIMIZERS)
def test_scalar_and_vector_variables(kind, make_optimizer, hyper, slots_of, beta_powers):
    """Dense variables of other ranks are seen as rows [shape[0], rest]; a
    scalar as one row of one value."""
    rng = np.random.default_rng(200 + OPTIMIZERS.index(kind))
    variables = [Variable(np.float32(1.5), "scalar"), Variable(rng.standard_normal(5), "bias")]
    gs = GlobalStep()
    opt = make_optimizer(kind, gs)
    hp = hyper[kind]
    state = {v.name: ref.initial_slots(kind, hp, v.shape) for v in variables}
    powers = (f32(hp["beta1"]), f32(hp["beta2"])) if kind in ADAMS else None
    for t in range(3):
        grads = [rng.standard_normal(v.shape).astype(np.float32) for v in variables]
        before = [v.value.copy() for v in variables]
        opt.apply_gradients(list(zip(grads, variables)), global_step=gs)
        for var, g, w0 in zip(variables, grads, before):
            rows = 1 if var.value.ndim == 0 else var.shape[0]
            w_ref, slots_ref = ref.step(kind, hp, w0, state[var.name], np.arange(rows),
                                        np.reshape(g, (rows,)), beta_powers=powers,
                                        global_step=t)
            slots = slots_of(opt, var)
            shapes = {n: a.shape for n, a in ref.initial_slots(kind, hp, var.shape).items()}
            assert {n: a.shape for n, a in slots.items()} == shapes
            _assert_state(var, slots, np.reshape(w_ref, var.shape),
                          {n: np.reshape(a, shapes[n]) for n, a in slots_ref.items()},
                          f"{kind} step {t} {var.name}")
            state[var.name] = slots
        if kind in ADAMS:
            powers = beta_powers(opt)


@pytest.mark.parametrize("kind", OPTIMIZERS)
def test_slot_names_shapes_and_dtypes(kind, make_optimizer, hyper, slots_of):
    table = Variable(np.zeros((V, D)), "t")
    opt = make_optimizer(kind, GlobalStep())
    expected = ref.initial_slots(kind, hyper[kind], (V, D))
    assert opt.get_slot_names() == sorted(expected)
    for name in expected:
        assert opt.get_slot(table, name) is None       # created on the first apply
    opt.apply_gradients([(RowSparseGrad([1], np.ones((1, D)), (V, D)), table)])
    slots = slots_of(opt, table)
    for name, value in expected.items():
        assert slots[name].shape == value.shape, name
        assert slots[name].dtype == (np.int64 if name == "accumulator_decay_power" else np.float32)
        # Rows the gradient did not touch still hold the SPEC initial value.
        np.testing.assert_array_equal(slots[name][2:], value[2:].astype(slots[name].dtype))
        assert opt.get_slot(table, name).name.startswith("t/")


@pytest.mark.parametrize("kind", OPTIMIZERS)
def test_global_step_incremented_once_per_call_and_only_when_passed(kind, make_optimizer):
    a, b = Variable(np.ones((4, 2)), "a"), Variable(np.ones((3,)), "b")
    gs = GlobalStep(5)
    opt = make_optimizer(kind, gs)
    grads = [(RowSparseGrad([0, 3, 0], np.ones((3, 2)), (4, 2)), a), (np.ones(3), b)]
    opt.apply_gradients(grads, global_step=gs)
    assert int(gs) == 6
    opt.apply_gradients(grads)
    assert int(gs) == 6
    opt.apply_gradients(grads, global_step=gs)
    assert int(gs) == 7


# ------------------------------------------------------------ AdagradDecay
def _run_decay(touch_plan, decay_step, rate, initial=0.1, lr=0.1, start=0, pass_step=True,
               global_step="shared", seed=0):
    """Apply AdagradDecay for len(touch_plan) calls; call k touches the rows in
    touch_plan[k] (with a duplicate of its first row). After each call, check
    weight and slots against the reference restarted from the float32 state.
    Returns the list of decay-power arrays after each call."""
    rng = np.random.default_rng(seed)
    var = Variable(rng.standard_normal((6, 2)), "emb")
    gs = GlobalStep(start)
    opt = optim.AdagradDecay(lr, gs if global_step == "shared" else None,
                             initial_accumulator_value=initial, accumulator_decay_step=decay_step,
                             accumulator_decay_rate=rate)
    hp = dict(learning_rate=lr, initial_accumulator_value=initial,
              accumulator_decay_step=decay_step, accumulator_decay_rate=rate)
    slots = ref.initial_slots("AdagradDecay", hp, var.shape)
    powers = []
    for rows in touch_plan:
        ids = np.array(list(rows) + [rows[0]], np.int64)
        values = rng.uniform(0.2, 1.0, (ids.shape[0], 2)).astype(np.float32)
        before, step_before = var.value.copy(), int(gs)
        opt.apply_gradients([(RowSparseGrad(ids, values, var.shape), var)],
                            global_step=gs if pass_step else None)
        read = step_before if global_step == "shared" else None
        w_ref, slots_ref = ref.step("AdagradDecay", hp, before, slots, ids, values,
                                    global_step=read)
        slots = {n: opt.get_slot(var, n).value.copy() for n in slots_ref}
        _assert_state(var, slots, w_ref, slots_ref, f"call {len(powers) + 1}")
        powers.append(slots["accumulator_decay_power"].copy())
    return powers, slots


def test_decay_happens_at_steps_k_times_decay_step():
    # gs = global_step + 1, read before the increment: with decay_step 3 the
    # 3rd and 6th calls decay (1-based), not the 4th/7th nor the 2nd/5th.
    powers, _ = _run_decay([[0]] * 7, decay_step=3, rate=0.5)
    assert [int(p[0]) for p in powers] == [0, 0, 1, 1, 1, 2, 2]


def test_decay_reads_step_before_increment_from_a_nonzero_start():
    powers, _ = _run_decay([[0], [0]], decay_step=3, rate=0.5, start=1)   # gs = 2, 3
    assert [int(p[0]) for p in powers] == [0, 1]


def test_untouched_rows_never_decay():
    powers, slots = _run_decay([[0, 1]] * 6, decay_step=2, rate=0.5, initial=0.25)
    assert [int(p[0]) for p in powers] == [0, 1, 1, 2, 2, 3]
    np.testing.assert_array_equal(powers[-1][2:], 0)
    np.testing.assert_array_equal(slots["accumulator"][2:], np.float32(0.25))


def test_missed_periods_catch_up_one_per_touch():
    # Row 1 is touched at call 1, then not until call 8 (gs = 8: 4 periods
    # due), then at every call: its power rises by one per touch, never jumps.
    plan = [[0, 1]] + [[0]] * 6 + [[0, 1]] * 4
    powers, _ = _run_decay(plan, decay_step=2, rate=0.5)
    assert [int(p[1]) for p in powers] == [0, 0, 0, 0, 0, 0, 0, 1, 2, 3, 4]
    assert [int(p[0]) for p in powers] == [0, 1, 1, 2, 2, 3, 3, 4, 4, 5, 5]


def test_floor_applies_when_decaying():
    # Small gradients: a * rate falls below the initial value, so it is floored.
    powers, slots = _run_decay([[0]] * 4, decay_step=2, rate=0.1, initial=0.5)
    assert int(powers[-1][0]) == 2
    assert (slots["accumulator"][0] >= np.float32(0.5)).all()


def test_floor_applies_only_when_decaying():
    var = Variable(np.ones((3, 2)), "emb")
    gs = GlobalStep()
    opt = optim.AdagradDecay(0.1, gs, initial_accumulator_value=0.5, accumulator_decay_step=10,
                             accumulator_decay_rate=0.5)
    grad = RowSparseGrad([0], np.full((1, 2), 0.1, np.float32), (3, 2))
    opt.apply_gradients([(grad, var)], global_step=gs)
    accumulator = opt.get_slot(var, "accumulator").value
    accumulator[0] = 0.01                 # below the floor, e.g. restored from elsewhere
    before = var.value.copy()
    opt.apply_gradients([(grad, var)], global_step=gs)   # gs = 2: no decay
    w_ref = before[0] - f32(0.1) * f32(0.1) / np.sqrt(f32(0.01) + f32(0.1) ** 2)
    assert_close(accumulator[0], [f32(0.01) + f32(0.1) ** 2] * 2)
    assert_close(var.value[0], w_ref)


def test_no_global_step_never_decays():
    powers, slots = _run_decay([[0, 1]] * 5, decay_step=1, rate=0.5, global_step=None,
                               pass_step=False)
    assert all(not p.any() for p in powers)


def test_global_step_not_passed_is_not_incremented_so_step_stays():
    # The optimizer reads its global step but only apply_gradients(global_step=)
    # increments it: gs stays 0, so gs + 1 = 1 decays once and never again.
    powers, _ = _run_decay([[0]] * 4, decay_step=1, rate=0.5, pass_step=False)
    assert [int(p[0]) for p in powers] == [1, 1, 1, 1]


def test_dense_variable_decays_as_a_whole():
    var = Variable(np.random.default_rng(1).standard_normal((4, 3)), "dense")
    gs = GlobalStep()
    hp = dict(learning_rate=0.2, initial_accumulator_value=0.1, accumulator_decay_step=2,
              accumulator_decay_rate=0.5)
    opt = optim.AdagradDecay(global_step=gs, **hp)
    slots = ref.initial_slots("AdagradDecay", hp, var.shape)
    rng = np.random.default_rng(2)
    for t in range(5):
        g = rng.standard_normal((4, 3)).astype(np.float32)
        before = var.value.copy()
        opt.apply_gradients([(g, var)], global_step=gs)
        w_ref, slots_ref = ref.step("AdagradDecay", hp, before, slots, np.arange(4), g,
                                    global_step=t)
        slots = {n: opt.get_slot(var, n).value.copy() for n in slots_ref}
        _assert_state(var, slots, w_ref, slots_ref, f"step {t}")
        assert len(set(slots["accumulator_decay_power"].tolist())) == 1


def test_shared_global_step_across_optimizers():
    # Dense layers on Adam, tables on AdagradDecay; the step is passed to the
    # second call only, so it moves once per training step and AdagradDecay
    # reads it before that increment.
    gs = GlobalStep()
    table, dense = Variable(np.ones((5, 2)), "table"), Variable(np.ones((2, 2)), "dense")
    adam = optim.Adam(0.01)
    decay = optim.AdagradDecay(0.1, gs, accumulator_decay_step=2, accumulator_decay_rate=0.5)
    for t in range(4):
        adam.apply_gradients([(np.ones((2, 2)), dense)])
        decay.apply_gradients([(RowSparseGrad([1], np.ones((1, 2)), (5, 2)), table)],
                              global_step=gs)
        assert int(gs) == t + 1
    # Calls at gs = 1..4 with decay_step 2 decay at gs = 2 and 4.
    assert decay.get_slot(table, "accumulator_decay_power").value.tolist() == [0, 2, 0, 0, 0]


# ------------------------------------------------------------------- Adam
def test_adam_moves_rows_absent_from_this_step_lazy_adam_does_not(hyper, make_optimizer,
                                                                  slots_of, beta_powers):
    rng = np.random.default_rng(7)
    init = rng.standard_normal((5, 2))
    first = ([0, 1, 1], rng.standard_normal((3, 2)).astype(np.float32))
    second = ([1, 3], rng.standard_normal((2, 2)).astype(np.float32))
    results = {}
    for kind in ADAMS:
        var = Variable(init, "emb")
        opt = make_optimizer(kind)
        opt.apply_gradients([(RowSparseGrad(*first, (5, 2)), var)])
        before, slots, powers = var.value.copy(), slots_of(opt, var), beta_powers(opt)
        opt.apply_gradients([(RowSparseGrad(*second, (5, 2)), var)])
        w_ref, slots_ref = ref.step(kind, hyper[kind], before, slots, *second, beta_powers=powers)
        _assert_state(var, slots_of(opt, var), w_ref, slots_ref, kind)
        results[kind] = (before, var.value.copy(), slots, slots_of(opt, var))
    # Row 0 (touched before, absent now): Adam moves it and decays m, v ...
    before, after, slots_before, slots_after = results["Adam"]
    assert np.abs(after[0] - before[0]).min() > 1e-4
    assert_close(slots_after["m"][0], f32(hyper["Adam"]["beta1"]) * slots_before["m"][0])
    # ... LazyAdam leaves it, and its m and v, exactly as they were.
    before, after, slots_before, slots_after = results["LazyAdam"]
    np.testing.assert_array_equal(after[0], before[0])
    for name in ("m", "v"):
        np.testing.assert_array_equal(slots_after[name][0], slots_before[name][0])
    # Rows never touched have m = v = 0 and stay put in both.
    for kind in ADAMS:
        np.testing.assert_array_equal(results[kind][1][[2, 4]], np.float32(init[[2, 4]]))


@pytest.mark.parametrize("kind", ADAMS)
def test_beta_powers_multiplied_once_per_call_after_all_variables(kind, hyper, make_optimizer,
                                                                   slots_of, beta_powers):
    hp = hyper[kind]
    b1, b2 = f32(hp["beta1"]), f32(hp["beta2"])
    opt = make_optimizer(kind)
    rng = np.random.default_rng(8)
    names = ["a", "b", "c"]
    variables = [Variable(np.ones((4, 2)), n) for n in names]
    slots = {n: ref.initial_slots(kind, hp, (4, 2)) for n in names}
    powers = (b1, b2)
    for t in range(3):
        grad = (np.array([0, 2, 0]), rng.standard_normal((3, 2)).astype(np.float32))
        before = variables[0].value.copy()
        opt.apply_gradients([(RowSparseGrad(*grad, (4, 2)), v) for v in variables])
        w_ref, slots_ref = ref.step(kind, hp, before, slots["a"], *grad, beta_powers=powers)
        for v in variables:      # identical inputs: identical results, same lr_t for all
            _assert_state(v, slots_of(opt, v), w_ref, slots_ref, f"{v.name} step {t}")
            np.testing.assert_array_equal(v.value, variables[0].value)
        slots = {n: slots_of(opt, v) for n, v in zip(names, variables)}
        powers = (powers[0] * b1, powers[1] * b2)
    assert_close(beta_powers(opt), [b1 ** 4, b2 ** 4])   # start at beta, x beta per call


def test_lazy_adam_bias_correction_uses_shared_powers_not_a_row_count():
    # A row first touched at the 3rd call uses beta powers beta^3 (TF contrib),
    # not a per-row count of 1 (torch SparseAdam).
    opt = optim.LazyAdam(0.1, beta1=0.5, beta2=0.75, epsilon=1e-30)
    var = Variable(np.zeros((3, 1)), "emb")
    for _ in range(2):
        opt.apply_gradients([(RowSparseGrad([0], np.ones((1, 1)), (3, 1)), var)])
    opt.apply_gradients([(RowSparseGrad([2], np.full((1, 1), 2.0), (3, 1)), var)])
    # m = 0.5 * 2, v = 0.25 * 4, lr_t = 0.1 * sqrt(1 - 0.75^3) / (1 - 0.5^3)
    lr_t = 0.1 * np.sqrt(1 - 0.75 ** 3) / (1 - 0.5 ** 3)
    assert_close(var.value[2], [-lr_t * 1.0 / 1.0])


# --------------------------------------------------------------- defaults
def test_default_hyperparameters():
    gs = GlobalStep()
    assert optim.Adagrad(0.1).get_config()["initial_accumulator_value"] == pytest.approx(0.1)
    assert optim.Adagrad(0.1).get_config()["epsilon"] == 0.0
    config = optim.AdagradDecay(0.1, gs).get_config()
    assert config["initial_accumulator_value"] == pytest.approx(0.1)
    assert config["accumulator_decay_step"] == 100000
    assert config["accumulator_decay_rate"] == pytest.approx(0.9)
    config = optim.Adam().get_config()
    assert [config[k] for k in ("learning_rate", "beta1", "beta2", "epsilon")] == \
        pytest.approx([0.001, 0.9, 0.999, 1e-8])
    config = optim.LazyAdam().get_config()
    assert [config[k] for k in ("learning_rate", "beta1", "beta2", "epsilon")] == \
        pytest.approx([0.001, 0.9, 0.999, 1e-8])
    assert optim.RowwiseAdagrad(0.1).get_config()["epsilon"] == pytest.approx(1e-8)


@pytest.mark.parametrize("kind, make", [
    ("Adagrad", lambda gs: optim.Adagrad(0.2)),
    ("AdagradDecay", lambda gs: optim.AdagradDecay(0.2, gs)),
    ("Adam", lambda gs: optim.Adam()),
    ("LazyAdam", lambda gs: optim.LazyAdam()),
    ("RowwiseAdagrad", lambda gs: optim.RowwiseAdagrad(0.2)),
])
def test_default_hyperparameters_behave_as_spec(kind, make, slots_of):
    # Start at global step 99998 so AdagradDecay's default period (100000)
    # ends on the 2nd call, with the default rate 0.9 and floor 0.1.
    gs = GlobalStep(99998)
    opt = make(gs)
    hp = {} if kind in ADAMS else dict(learning_rate=0.2)
    var = Variable(np.random.default_rng(9).standard_normal((4, 2)), "w")
    slots = ref.initial_slots(kind, hp, var.shape)
    powers = (f32(0.9), f32(0.999))
    rng = np.random.default_rng(10)
    for t in range(3):
        ids, values = np.array([1, 3, 1]), rng.standard_normal((3, 2)).astype(np.float32)
        before, step_before = var.value.copy(), int(gs)
        opt.apply_gradients([(RowSparseGrad(ids, values, (4, 2)), var)], global_step=gs)
        w_ref, slots_ref = ref.step(kind, hp, before, slots, ids, values, beta_powers=powers,
                                    global_step=step_before)
        slots = slots_of(opt, var)
        _assert_state(var, slots, w_ref, slots_ref, f"{kind} step {t}")
        powers = (powers[0] * f32(0.9), powers[1] * f32(0.999))
    if kind == "AdagradDecay":
        assert slots["accumulator_decay_power"].tolist() == [0, 1, 0, 1]


# ----------------------------------------------------- invalid arguments
@pytest.mark.parametrize("make", [
    lambda: optim.GradientDescent(-0.1),
    lambda: optim.GradientDescent(float("nan")),
    lambda: optim.GradientDescent(1e39),     # inf in float32
    lambda: optim.Adagrad(-1.0),
    lambda: optim.Adagrad(0.1, initial_accumulator_value=-0.1),
    lambda: optim.Adagrad(0.1, initial_accumulator_value=0.0),          # and epsilon 0
    lambda: optim.Adagrad(0.1, epsilon=-1e-8),
    lambda: optim.AdagradDecay(-0.1, None),
    lambda: optim.AdagradDecay(0.1, None, initial_accumulator_value=0.0),
    lambda: optim.AdagradDecay(0.1, None, initial_accumulator_value=-1.0),
    lambda: optim.AdagradDecay(0.1, None, accumulator_decay_step=0),
    lambda: optim.AdagradDecay(0.1, None, accumulator_decay_step=-5),
    lambda: optim.AdagradDecay(0.1, None, accumulator_decay_rate=0.0),
    lambda: optim.AdagradDecay(0.1, None, accumulator_decay_rate=1.0),
    lambda: optim.AdagradDecay(0.1, None, accumulator_decay_rate=1.5),
    lambda: optim.AdagradDecay(0.1, None, accumulator_decay_rate=-0.5),
    lambda: optim.Adam(-0.001),
    lambda: optim.Adam(beta1=1.0),
    lambda: optim.Adam(beta1=-0.1),
    lambda: optim.Adam(beta2=1.5),
    lambda: optim.Adam(epsilon=-1.0),
    lambda: optim.Adam(epsilon=0.0),       # 0 / 0 on rows with v = 0 (see below)
    lambda: optim.LazyAdam(epsilon=0.0),
    lambda: optim.Adam(epsilon=1e-50),     # 0 in float32, where the rules run
    lambda: optim.RowwiseAdagrad(0.1, epsilon=1e-50),
    lambda: optim.Adagrad(0.1, initial_accumulator_value=1e-50, epsilon=1e-50),
    lambda: optim.AdagradDecay(0.1, None, initial_accumulator_value=1e-50),
    lambda: optim.LazyAdam(beta2=1.0),
    lambda: optim.RowwiseAdagrad(-0.1),
    lambda: optim.RowwiseAdagrad(0.1, epsilon=-1e-8),
])
def test_invalid_hyperparameters_raise_value_error(make):
    with pytest.raises(ValueError):
        make()


def test_adagrad_zero_initial_is_allowed_with_epsilon():
    # SPEC: initial_accumulator_value > 0 only when epsilon is 0 (torch: 0, 1e-10).
    opt = optim.Adagrad(0.5, initial_accumulator_value=0.0, epsilon=1e-10)
    var = Variable(np.zeros((2, 1)), "w")
    opt.apply_gradients([(RowSparseGrad([1], [[2.0]], (2, 1)), var)])
    assert_close(var.value[:, 0], [0.0, -0.5 * 2.0 / (2.0 + 1e-10)])


def test_adagrad_decay_refuses_a_global_step_other_than_the_one_it_reads():
    # AdagradDecay(lr, gs_a) then apply_gradients(global_step=gs_b): gs_a would
    # never move, so the decay would silently stop. Refused, nothing changed.
    from sparse_train.models.training import train_step
    gs_a, gs_b = GlobalStep(), GlobalStep()
    opt = optim.AdagradDecay(0.1, gs_a, accumulator_decay_step=1)
    var = Variable(np.ones((3, 2)), "emb")
    grad = RowSparseGrad([1], np.ones((1, 2)), (3, 2))
    with pytest.raises(ValueError, match="AdagradDecay reads GlobalStep.*another counter"):
        opt.apply_gradients([(grad, var)], global_step=gs_b)
    assert int(gs_a) == int(gs_b) == 0 and opt.get_slot(var, "accumulator") is None
    np.testing.assert_array_equal(var.value, 1.0)
    opt.apply_gradients([(grad, var)], global_step=gs_a)   # its own counter: fine
    opt.apply_gradients([(grad, var)])                       # or none
    assert int(gs_a) == 1

    class OneTable:   # the least a model needs for train_step
        def loss(self, batch):
            from sparse_train import autodiff as ad
            return ad.embedding_bag(var, [0, 1], [0, 2]).sum()

        def sparse_variables(self):
            return [var]

        def dense_variables(self):
            return []
    with pytest.raises(ValueError, match="another counter"):
        train_step(OneTable(), None, opt, optim.Adam(), gs_b)
    assert int(gs_b) == 0


def test_adam_epsilon_must_be_positive_else_untouched_rows_become_nan():
    # Why epsilon = 0 is refused: TF Adam steps every row of a table for a
    # sparse gradient, and m / (sqrt(v) + 0) is 0 / 0 on each row never
    # touched. With the smallest positive epsilon those rows stay put.
    with pytest.raises(ValueError, match="epsilon must be > 0.0, got 0.0"):
        optim.Adam(0.1, epsilon=0.0)
    var = Variable(np.ones((3, 2)), "emb")
    optim.Adam(0.1, epsilon=1e-30).apply_gradients(
        [(RowSparseGrad([0], np.ones((1, 2)), (3, 2)), var)])
    assert np.isfinite(var.value).all()
    np.testing.assert_array_equal(var.value[1:], 1.0)
