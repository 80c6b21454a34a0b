"""A float64 NumPy reference of SPEC.md §2 (update rules) and §3 (lookups).

Written from the SPEC text only; it imports nothing from ``sparse_train``.
Every function takes plain arrays, computes in float64 with loops or obvious
vectorised NumPy, and returns new arrays (inputs are never modified).

A gradient is given as ``(ids [n], values [n, ...])`` with duplicates allowed;
a dense gradient of a ``[V, ...]`` variable is ``(arange(V), dense)``. Rules
see a variable as rows ``[V, prod(rest)]``.

Hyperparameters are used as given: SPEC §2 says the rules run in float32, so
tests pass float32-rounded hyperparameters (``f32``), which matters for
``1 - beta2`` (float32(0.999) differs from 0.999 by 1.3e-8, i.e. 1.3e-5
relative in ``1 - beta2``).
"""
import math

import numpy as np

RTOL = 1e-5  # SPEC §5: relative error <= 1e-5 per step


def f32(x):
    """``x`` rounded to float32, returned as a Python float."""
    return float(np.float32(x))


def assert_close(got, ref, rtol=RTOL, atol_scale=1e-6, err_msg=""):
    """``got`` agrees with ``ref`` to ``rtol``; the absolute slack is
    ``atol_scale`` times the largest magnitude in ``ref`` (for entries near 0)."""
    got = np.asarray(got, np.float64)
    ref = np.asarray(ref, np.float64)
    scale = float(np.max(np.abs(ref))) if ref.size else 0.0
    np.testing.assert_allclose(got, ref, rtol=rtol, atol=atol_scale * scale + 1e-30,
                               err_msg=err_msg)


# --------------------------------------------------------------- gradients
#: Order of the unique ids of a coalesced gradient. SPEC only asks for a fixed
#: order; docs/DESIGN.md says "increasing (like torch)" (it said "first
#: appearance" before). Every test that pins the order reads it from here.
COALESCE_ORDER = "increasing"


def coalesce(ids, values, dtype=np.float64, order=None):
    """Sum duplicate ids: unique ids (``order``: "increasing" or "first"
    appearance; default ``COALESCE_ORDER``), each row the sum of its values in
    order of position, computed in ``dtype`` one addition at a time (so
    ``dtype=np.float32`` gives the float32 sum in position order)."""
    order = COALESCE_ORDER if order is None else order
    ids = np.asarray(ids, np.int64).reshape(-1)
    values = np.asarray(values).astype(dtype)
    seen, sums = [], {}
    for pos, row in enumerate(ids.tolist()):
        if row not in sums:
            seen.append(row)
            sums[row] = values[pos].copy()
        else:
            sums[row] = (sums[row] + values[pos]).astype(dtype)
    if order == "increasing":
        seen = sorted(seen)
    elif order != "first":
        raise ValueError(order)
    rows = np.array(seen, np.int64)
    if not seen:
        return rows, np.zeros((0,) + values.shape[1:], dtype)
    return rows, np.stack([sums[r] for r in seen]).astype(dtype)


def to_dense(ids, values, dense_shape):
    """Dense float64 gradient: duplicates add up."""
    dense = np.zeros(dense_shape, np.float64)
    for pos, row in enumerate(np.asarray(ids, np.int64).tolist()):
        dense[row] += np.asarray(values[pos], np.float64)
    return dense


def _rows(array):
    array = np.asarray(array, np.float64)
    if array.ndim == 0:
        return array.reshape(1, 1).copy()
    return array.reshape(array.shape[0], -1).copy()


def _summed(ids, values):
    rows, sums = coalesce(ids, values)
    return rows, sums.reshape(rows.shape[0], int(np.prod(sums.shape[1:], dtype=np.int64)))


# ------------------------------------------------------------ update rules
def gradient_descent(w, ids, values, lr):
    """TF GradientDescent: ``w[r] -= lr * g``. Returns new w."""
    shape = np.shape(w)
    w = _rows(w)
    rows, g = _summed(ids, values)
    for u, r in enumerate(rows):
        w[r] = w[r] - lr * g[u]
    return w.reshape(shape)


def adagrad(w, accumulator, ids, values, lr, epsilon=0.0):
    """TF v1 Adagrad: ``a += g*g; w -= lr * g / (sqrt(a) + epsilon)``.
    Returns (w, accumulator)."""
    shape = np.shape(w)
    w, a = _rows(w), _rows(accumulator)
    rows, g = _summed(ids, values)
    for u, r in enumerate(rows):
        a[r] = a[r] + g[u] * g[u]
        w[r] = w[r] - lr * g[u] / (np.sqrt(a[r]) + epsilon)
    return w.reshape(shape), a.reshape(shape)


def adagrad_decay(w, accumulator, power, ids, values, lr, global_step,
                  initial_accumulator_value, decay_step, decay_rate):
    """DeepRec AdagradDecay (V2 slots). ``global_step`` is the counter's value
    BEFORE this step's increment, or None (then nothing decays). Per touched
    row, with gs = global_step + 1::

        if gs // decay_step > power[r]:
            a[r] = max(a[r] * rate, initial); power[r] += 1
        a[r] += g*g; w[r] -= lr * g / sqrt(a[r])

    Returns (w, accumulator, power)."""
    shape = np.shape(w)
    w, a = _rows(w), _rows(accumulator)
    power = np.array(power, np.int64).reshape(-1).copy()
    rows, g = _summed(ids, values)
    for u, r in enumerate(rows):
        if global_step is not None:
            gs = int(global_step) + 1
            if gs // int(decay_step) > power[r]:
                a[r] = np.maximum(a[r] * decay_rate, initial_accumulator_value)
                power[r] += 1
        a[r] = a[r] + g[u] * g[u]
        w[r] = w[r] - lr * g[u] / np.sqrt(a[r])
    return w.reshape(shape), a.reshape(shape), power


def adam_lr_t(lr, beta1_power, beta2_power):
    """TF v1 Adam's bias-corrected step size."""
    return lr * math.sqrt(1.0 - beta2_power) / (1.0 - beta1_power)


def adam(w, m, v, ids, values, lr, beta1, beta2, epsilon, beta1_power, beta2_power):
    """TF v1 Adam for a row-sparse gradient: m and v of ALL rows decay, the
    gradient terms are added on touched rows, and every row takes a step.
    The beta powers are the values before this ``apply_gradients`` (the
    caller multiplies them once per call). Returns (w, m, v)."""
    shape = np.shape(w)
    w, m, v = _rows(w), _rows(m), _rows(v)
    rows, g = _summed(ids, values)
    m = beta1 * m
    v = beta2 * v
    for u, r in enumerate(rows):
        m[r] = m[r] + (1.0 - beta1) * g[u]
        v[r] = v[r] + (1.0 - beta2) * g[u] * g[u]
    lr_t = adam_lr_t(lr, beta1_power, beta2_power)
    w = w - lr_t * m / (np.sqrt(v) + epsilon)
    return w.reshape(shape), m.reshape(shape), v.reshape(shape)


def lazy_adam(w, m, v, ids, values, lr, beta1, beta2, epsilon, beta1_power, beta2_power):
    """TF contrib LazyAdam: Adam's formulas on the touched rows only, bias
    correction from the shared beta powers. Returns (w, m, v)."""
    shape = np.shape(w)
    w, m, v = _rows(w), _rows(m), _rows(v)
    rows, g = _summed(ids, values)
    lr_t = adam_lr_t(lr, beta1_power, beta2_power)
    for u, r in enumerate(rows):
        m[r] = beta1 * m[r] + (1.0 - beta1) * g[u]
        v[r] = beta2 * v[r] + (1.0 - beta2) * g[u] * g[u]
        w[r] = w[r] - lr_t * m[r] / (np.sqrt(v[r]) + epsilon)
    return w.reshape(shape), m.reshape(shape), v.reshape(shape)


def rowwise_adagrad(w, accumulator, ids, values, lr, epsilon=1e-8):
    """FBGEMM row-wise Adagrad: ``a[r] += mean_j(g_j^2);
    w[r] -= lr * g / (sqrt(a[r]) + eps)``; accumulator is [V].
    Returns (w, accumulator)."""
    shape = np.shape(w)
    w = _rows(w)
    a = np.array(accumulator, np.float64).reshape(-1).copy()
    rows, g = _summed(ids, values)
    for u, r in enumerate(rows):
        a[r] = a[r] + np.mean(g[u] * g[u])
        w[r] = w[r] - lr * g[u] / (np.sqrt(a[r]) + epsilon)
    return w.reshape(shape), a



def ftrl(w, accum, linear, ids, values, lr, learning_rate_power=-0.5, l1=0.0, l2=0.0,
         l2_shrinkage=0.0, beta=0.0):
    """TF FTRL-Proximal (SPEC §2, TF 2.21 ``ApplyFtrlV2``), per element of a
    touched row, with ``p = -learning_rate_power``::

        g_s = g + 2 * l2_shrinkage * w;  a_new = a + g*g   (plain g)
        linear += g_s - (a_new**p - a**p) / lr * w
        quad = (a_new**p + beta) / lr + 2 * l2
        w = (sign(linear) * l1 - linear) / quad  if |linear| > l1  else 0
        a = a_new

    Returns (w, accum, linear)."""
    shape = np.shape(w)
    w, a, linear = _rows(w), _rows(accum), _rows(linear)
    p = -learning_rate_power
    rows, g = _summed(ids, values)
    for u, r in enumerate(rows):
        g_s = g[u] + 2.0 * l2_shrinkage * w[r]
        a_new = a[r] + g[u] * g[u]
        linear[r] = linear[r] + g_s - (a_new ** p - a[r] ** p) / lr * w[r]
        quad = (a_new ** p + beta) / lr + 2.0 * l2
        with np.errstate(divide="ignore", invalid="ignore"):  # quad 0: unselected
            w[r] = np.where(np.abs(linear[r]) > l1,
                            (np.sign(linear[r]) * l1 - linear[r]) / quad, 0.0)
        a[r] = a_new
    return w.reshape(shape), a.reshape(shape), linear.reshape(shape)

# ----------------------------------------------------------------- lookups
def _bags(values, offsets, weights, combiner, padding_idx):
    """Per bag: (ids, weights, divisor) with padding ids removed; divisor is
    None for a bag that outputs zeros and sends no gradient (empty, or a
    zero divisor: SPEC leaves 0/0 undefined; we read it as an empty bag)."""
    values = np.asarray(values, np.int64)
    offsets = np.asarray(offsets, np.int64)
    if weights is None:
        weights = np.ones(values.shape[0], np.float64)
    weights = np.asarray(weights, np.float64)
    bags = []
    for b in range(offsets.shape[0] - 1):
        ids = values[offsets[b]:offsets[b + 1]]
        wts = weights[offsets[b]:offsets[b + 1]]
        if padding_idx is not None:
            keep = ids != padding_idx
            ids, wts = ids[keep], wts[keep]
        if combiner == "sum":
            divisor = 1.0
        elif combiner == "mean":
            divisor = float(np.sum(wts))
        elif combiner == "sqrtn":
            divisor = math.sqrt(float(np.sum(wts * wts)))
        else:
            raise ValueError(combiner)
        if ids.shape[0] == 0 or divisor == 0.0:
            divisor = None
        bags.append((ids, wts, divisor))
    return bags


def embedding_bag(table, values, offsets, weights=None, combiner="sum", padding_idx=None):
    """SPEC §3 forward: [B, D] float64."""
    table = np.asarray(table, np.float64)
    bags = _bags(values, offsets, weights, combiner, padding_idx)
    out = np.zeros((len(bags), table.shape[1]), np.float64)
    for b, (ids, wts, divisor) in enumerate(bags):
        if divisor is None:
            continue
        acc = np.zeros(table.shape[1], np.float64)
        for i, wt in zip(ids.tolist(), wts.tolist()):
            acc += wt * table[i]
        out[b] = acc / divisor
    return out


def embedding_bag_grad(d_out, values, offsets, weights=None, combiner="sum", padding_idx=None):
    """SPEC §3 backward, one contribution per (non-padding) id occurrence in
    position order: returns (ids [n], rows [n, D]) float64, un-summed. Id i of
    bag b receives ``w_i * d_out[b] / divisor_b``."""
    d_out = np.asarray(d_out, np.float64)
    bags = _bags(values, offsets, weights, combiner, padding_idx)
    ids_out, rows_out = [], []
    for b, (ids, wts, divisor) in enumerate(bags):
        if divisor is None:
            continue
        for i, wt in zip(ids.tolist(), wts.tolist()):
            ids_out.append(i)
            rows_out.append(wt * d_out[b] / divisor)
    ids_out = np.array(ids_out, np.int64)
    rows_out = np.array(rows_out, np.float64).reshape(len(ids_out), d_out.shape[1])
    return ids_out, rows_out


# ------------------------------------------------------- by optimizer name
def initial_slots(kind, hyper, shape):
    """SPEC §2's slots of a fresh variable of ``shape``, by slot name."""
    num_rows = 1 if len(shape) == 0 else shape[0]
    if kind == "GradientDescent":
        return {}
    if kind == "Adagrad":
        return {"accumulator": np.full(shape, hyper.get("initial_accumulator_value", 0.1))}
    if kind == "AdagradDecay":
        return {"accumulator": np.full(shape, hyper.get("initial_accumulator_value", 0.1)),
                "accumulator_decay_power": np.zeros(num_rows, np.int64)}
    if kind in ("Adam", "LazyAdam"):
        return {"m": np.zeros(shape), "v": np.zeros(shape)}
    if kind == "RowwiseAdagrad":
        return {"accumulator": np.zeros(num_rows)}
    if kind == "Ftrl":
        return {"accum": np.full(shape, hyper.get("initial_accumulator_value", 0.1)),
                "linear": np.zeros(shape)}
    raise ValueError(kind)


def step(kind, hyper, w, slots, ids, values, beta_powers=None, global_step=None):
    """One update of one variable by optimizer ``kind`` with hyperparameters
    ``hyper`` (constructor keyword arguments; SPEC defaults filled in).
    ``beta_powers`` are Adam's (beta1_power, beta2_power) before the call;
    ``global_step`` the counter before the call. Returns (w, slots)."""
    h = {k: f32(v) for k, v in hyper.items()}
    lr = h.get("learning_rate", f32(0.001))  # only Adam has a default (SPEC §2)
    if kind == "GradientDescent":
        return gradient_descent(w, ids, values, lr), {}
    if kind == "Adagrad":
        w, a = adagrad(w, slots["accumulator"], ids, values, lr, h.get("epsilon", 0.0))
        return w, {"accumulator": a}
    if kind == "AdagradDecay":
        w, a, p = adagrad_decay(
            w, slots["accumulator"], slots["accumulator_decay_power"], ids, values, lr,
            global_step, h.get("initial_accumulator_value", 0.1),
            int(hyper.get("accumulator_decay_step", 100000)), h.get("accumulator_decay_rate", 0.9))
        return w, {"accumulator": a, "accumulator_decay_power": p}
    if kind in ("Adam", "LazyAdam"):
        rule = adam if kind == "Adam" else lazy_adam
        w, m, v = rule(w, slots["m"], slots["v"], ids, values, lr, h.get("beta1", f32(0.9)),
                       h.get("beta2", f32(0.999)), h.get("epsilon", f32(1e-8)), *beta_powers)
        return w, {"m": m, "v": v}
    if kind == "RowwiseAdagrad":
        w, a = rowwise_adagrad(w, slots["accumulator"], ids, values, lr, h.get("epsilon", f32(1e-8)))
        return w, {"accumulator": a}
    if kind == "Ftrl":
        w, a, linear = ftrl(
            w, slots["accum"], slots["linear"], ids, values, lr,
            h.get("learning_rate_power", -0.5), h.get("l1_regularization_strength", 0.0),
            h.get("l2_regularization_strength", 0.0),
            h.get("l2_shrinkage_regularization_strength", 0.0), h.get("beta", 0.0))
        return w, {"accum": a, "linear": linear}
    raise ValueError(kind)
