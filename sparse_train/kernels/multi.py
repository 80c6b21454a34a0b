"""Update rules over several dense variables in one kernel call.

A dense layer's gradient touches every value, so an update is a loop over
flat arrays; a model's dense variables (DeepFM on the main job: 8 kernels
and biases) then cost one call instead of one each, and the per-call price
(argument unboxing of a plan, the Python around it: about 25 us a variable)
is paid once. Arguments are tuples of exactly ``MAX_VARIABLES`` flat arrays
(unused entries are empty), so one compiled variant serves any count.
"""
import numpy as np

from ._jit import njit_serial_twin

#: Variables per call: the tuples' length (one compiled variant).
MAX_VARIABLES = 8


@njit_serial_twin
def adam_apply_dense_multi(flags, weights, ms, vs, grads, lr_t, beta1, beta2, epsilon):
    """In place: weights[i], ms[i], vs[i] [n_i] float32, for each i < 8;
    flags [MAX_VARIABLES] uint32: flags[i] nonzero iff a NaN or an infinity
    was stored in weights[i], ms[i] or vs[i]. grads[i] [n_i] float32. lr_t,
    beta1, beta2, epsilon float32. Per value::

        g = (0 + 1 * grad) * 1
        m = beta1 * m + (1 - beta1) * g
        v = beta2 * v + (1 - beta2) * g * g
        w -= lr_t * m / (sqrt(v) + epsilon)

    The float ops of ``adam.lazy_adam_apply_serial`` on a dense gradient's
    identity plan (its summed gradient is ``0 + coef * src`` times the
    scale, coef = scale = 1; ``0 +`` turns a -0 gradient into +0), so the
    same bits.

    The flags spare the step's finiteness check (``training.step.
    check_finite_state``) a second read of these variables: it read the
    main job's 8 dense variables and their m and v after the update (225k
    floats, 24 calls: about 100 us a step), while the kernel has each
    stored value in hand; ``x - x != 0`` (NaN exactly for an infinity or a
    NaN) ORed into a flag vectorises with the update (the main job's 8
    variables: 33 -> 36 us; testing exponent bits through uint32 views took
    31 -> 38 us). A flag set sends that variable back to the full check,
    which finds and names the value."""
    zero = np.float32(0.0)
    one = np.float32(1.0)
    for i in range(len(weights)):
        w, m, v, grad = weights[i], ms[i], vs[i], grads[i]
        found = np.uint32(0)
        for j in range(w.shape[0]):
            g = (zero + one * grad[j]) * one
            m[j] = beta1 * m[j] + (one - beta1) * g
            v[j] = beta2 * v[j] + (one - beta2) * (g * g)
            w[j] -= lr_t * m[j] / (np.sqrt(v[j]) + epsilon)
            # x - x is 0 for a finite x, NaN for an infinity or a NaN
            found |= np.uint32((w[j] - w[j]) != zero)
            found |= np.uint32((m[j] - m[j]) != zero)
            found |= np.uint32((v[j] - v[j]) != zero)
        flags[i] = found
