"""Every optimizer on a 16-bit table (SPEC §7): widen the row, apply the
rule of SPEC §2 in float32, narrow it back.

Two references: a float64 NumPy version of each rule, narrowed by numpy
(float16) or integer arithmetic (bfloat16), step by step from the
library's state (the weights agree to one 16-bit unit, the slots to 1e-5);
and, bit for bit, the library's float32 optimizer run on the widened table
with the result narrowed by the reference."""
import sys
from pathlib import Path

import numba
import numpy as np
import pytest

from sparse_train import GlobalStep, RowSparseGrad, Variable

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "kernels"))
from test_half import bfloat16_nearest_reference, float16_nearest_reference  # noqa: E402

KINDS = ["GradientDescent", "Adagrad", "AdagradDecay", "Adam", "LazyAdam",
         "RowwiseAdagrad", "Ftrl"]
V, D, STEPS = 12, 8, 4


def _narrow_ref(values64, dtype):
    x = np.asarray(values64, np.float64).astype(np.float32)
    return (bfloat16_nearest_reference(x) if dtype == "bfloat16"
            else float16_nearest_reference(x).view(np.uint16))


def _widen_ref(bits, dtype):
    bits = np.asarray(bits).view(np.uint16)
    if dtype == "bfloat16":
        return (bits.astype(np.uint32) << 16).view(np.float32).astype(np.float64)
    return bits.view(np.float16).astype(np.float64)


def _grads(rng):
    """STEPS row-sparse gradients with duplicate ids; row V-1 never touched."""
    out = []
    for _ in range(STEPS):
        ids = rng.integers(0, V - 1, 9)
        out.append((ids, rng.standard_normal((9, D)).astype(np.float32)))
    return out


def _reference_step(kind, hyper, w, slots, ids, values, step, powers):
    """One float64 step of ``kind`` on every row (SPEC §2); returns new w, slots."""
    h = hyper[kind]
    g = np.zeros_like(w)
    np.add.at(g, ids, values.astype(np.float64))
    touched = np.zeros(V, bool)
    touched[ids] = True
    w, slots = w.copy(), {k: v.astype(np.float64) for k, v in slots.items()}
    lr = h["learning_rate"]
    if kind == "GradientDescent":
        w[touched] -= lr * g[touched]
    elif kind == "Adagrad":
        a = slots["accumulator"]
        a[touched] += g[touched] ** 2
        w[touched] -= lr * g[touched] / (np.sqrt(a[touched]) + h["epsilon"])
    elif kind == "AdagradDecay":
        a, p = slots["accumulator"], slots["accumulator_decay_power"]
        gs = step + 1
        for r in np.flatnonzero(touched):
            if gs // h["accumulator_decay_step"] > p[r]:
                a[r] = np.maximum(a[r] * h["accumulator_decay_rate"], h["initial_accumulator_value"])
                p[r] += 1
            a[r] += g[r] ** 2
            w[r] -= lr * g[r] / np.sqrt(a[r])
    elif kind in ("Adam", "LazyAdam"):
        b1, b2, eps = h["beta1"], h["beta2"], h["epsilon"]
        lr_t = lr * np.sqrt(1 - powers[1]) / (1 - powers[0])
        rows = touched if kind == "LazyAdam" else np.ones(V, bool)
        m, v = slots["m"], slots["v"]
        m[rows] = b1 * m[rows] + (1 - b1) * g[rows]
        v[rows] = b2 * v[rows] + (1 - b2) * g[rows] ** 2
        w[rows] -= lr_t * m[rows] / (np.sqrt(v[rows]) + eps)
    elif kind == "RowwiseAdagrad":
        a = slots["accumulator"]
        a[touched] += (g[touched] ** 2).mean(axis=1)
        w[touched] -= lr * g[touched] / (np.sqrt(a[touched])[:, None] + h["epsilon"])
    elif kind == "Ftrl":
        a, lin = slots["accum"], slots["linear"]
        l1, l2 = h["l1_regularization_strength"], h["l2_regularization_strength"]
        l2 = l2 + h["beta"] / (2 * lr)
        shrink = h["l2_shrinkage_regularization_strength"]
        t = touched
        gs_ = g[t] + 2 * shrink * w[t]
        a_new = a[t] + g[t] ** 2
        lin[t] += gs_ - (np.sqrt(a_new) - np.sqrt(a[t])) / lr * w[t]
        quad = np.sqrt(a_new) / lr + 2 * l2
        w[t] = np.where(np.abs(lin[t]) > l1, (np.sign(lin[t]) * l1 - lin[t]) / quad, 0.0)
        a[t] = a_new
    return w, slots


def _state(opt, var):
    return {name: opt.get_slot(var, name).value.copy() for name in opt.get_slot_names()}


@pytest.mark.parametrize("dtype", ["bfloat16", "float16"])
@pytest.mark.parametrize("kind", KINDS)
def test_each_optimizer_matches_float64_widen_rule_narrow(kind, dtype, make_optimizer, hyper,
                                                          beta_powers):
    rng = np.random.default_rng(KINDS.index(kind))
    var = Variable(rng.standard_normal((V, D)) * 0.5, f"t_{kind}_{dtype}", dtype=dtype)
    gs = GlobalStep()
    opt = make_optimizer(kind, gs)
    opt.create_slots([var])
    exact = 0
    for step, (ids, values) in enumerate(_grads(rng)):
        w0 = _widen_ref(var.value, dtype)
        slots0 = _state(opt, var)
        powers = beta_powers(opt) if kind in ("Adam", "LazyAdam") else None
        w_ref, slots_ref = _reference_step(kind, hyper, w0, slots0, ids, values, step, powers)
        opt.apply_gradients([(RowSparseGrad(ids, values, (V, D)), var)], global_step=gs)
        got_bits = var.value.view(np.uint16).astype(np.int64)
        want_bits = _narrow_ref(w_ref, dtype).astype(np.int64)
        # one unit of the 16-bit format at most (float32 vs float64 arithmetic
        # may fall on either side of a rounding boundary), and rarely that
        assert np.abs(got_bits - want_bits).max() <= 1, (kind, step)
        exact += int((got_bits == want_bits).sum())
        for name, ref in slots_ref.items():
            np.testing.assert_allclose(opt.get_slot(var, name).value, ref, rtol=1e-5,
                                       atol=1e-7, err_msg=f"{kind} slot {name} step {step}")
        if kind != "Adam":  # the untouched row and its slots never move
            assert (var.value[V - 1].view(np.uint16) == _narrow_ref(w0[V - 1], dtype)).all()
    assert exact >= 0.97 * STEPS * V * D


@pytest.mark.parametrize("kind", KINDS)
def test_each_optimizer_equals_float32_path_then_narrow(kind, make_optimizer):
    """Bit for bit: the 16-bit step is the float32 optimizer's step on the
    widened table, narrowed nearest-even; the slots are identical."""
    rng = np.random.default_rng(10 + KINDS.index(kind))
    dtype = "bfloat16"
    half_var = Variable(rng.standard_normal((V, D)), "t", dtype=dtype)
    gs16, gs32 = GlobalStep(), GlobalStep()
    opt16, opt32 = make_optimizer(kind, gs16), make_optimizer(kind, gs32)
    for ids, values in _grads(rng):
        full = Variable(_widen_ref(half_var.value, dtype).astype(np.float32), "t")
        if opt32.get_slot_names():
            opt32.create_slots([full])
            for name in opt32.get_slot_names():
                slot16 = opt16.get_slot(half_var, name)
                if slot16 is not None:
                    opt32.get_slot(full, name).value[...] = slot16.value
        grad = RowSparseGrad(ids, values, (V, D))
        opt16.apply_gradients([(grad, half_var)], global_step=gs16)
        opt32.apply_gradients([(grad, full)], global_step=gs32)
        assert (half_var.value == bfloat16_nearest_reference(full.value)).all()
        for name in opt32.get_slot_names():
            assert (opt16.get_slot(half_var, name).value
                    == opt32.get_slot(full, name).value).all()


@pytest.mark.parametrize("kind", ["Adagrad", "Adam"])
def test_stochastic_updates_same_bits_for_1_and_2_threads(kind, make_optimizer):
    rng = np.random.default_rng(3)
    init = rng.standard_normal((V, D))
    grads = _grads(rng)
    results = []
    before = numba.get_num_threads()
    try:
        for threads in (1, min(2, numba.config.NUMBA_NUM_THREADS), None):
            if threads:
                numba.set_num_threads(threads)
            stochastic = threads is not None
            var = Variable(init, "t", dtype="bfloat16",
                           rounding="stochastic" if stochastic else "nearest", rounding_seed=11)
            gs = GlobalStep()
            opt = make_optimizer(kind, gs)
            for ids, values in grads:
                opt.apply_gradients([(RowSparseGrad(ids, values, (V, D)), var)], global_step=gs)
            results.append(var.value.copy())
    finally:
        numba.set_num_threads(before)
    assert (results[0] == results[1]).all()
    assert (results[0] != results[2]).any()  # stochastic is not nearest
    # yet both follow the same rule: after 4 steps the weights (about 1)
    # differ by a few bfloat16 units (2**-7 relative) at most
    stochastic, nearest = (np.asarray(Variable(r, "r", dtype="bfloat16")) for r in results[::2])
    assert np.abs(stochastic - nearest).max() <= 8 * 2**-7 * np.abs(nearest).max()


def test_stochastic_rounding_needs_a_global_step(make_optimizer):
    var = Variable(np.zeros((V, D)), "t", dtype="bfloat16", rounding="stochastic")
    before = var.value.copy()
    with pytest.raises(ValueError, match="global_step"):
        make_optimizer("Adagrad").apply_gradients(
            [(RowSparseGrad([1], np.ones((1, D)), (V, D)), var)])
    assert (var.value == before).all()
