"""``multi.adam_apply_dense_multi`` that also tells which variables it left
non-finite, so the step's finiteness check (``training.step.
check_finite_state``) need not read them again.

The check read the main job's 8 dense variables and their m and v after
the update (225k floats, 24 calls: about 100 us a step); the kernel has
each stored value in hand, and ``x - x != 0`` (NaN exactly for an infinity
or a NaN) ORed into a flag vectorises with the update (the main job's 8
variables: 33 -> 36 us; testing exponent bits through uint32 views took
31 -> 38 us). A flag set sends that variable back to the full check,
which finds and names the value as before.
"""
import numpy as np

from ._jit import njit_serial_twin
from .multi import MAX_VARIABLES  # noqa: F401  (the tuples' length, re-exported)


@njit_serial_twin
def adam_apply_dense_multi_finite(flags, weights, ms, vs, grads, lr_t, beta1, beta2, epsilon):
    """In place: flags [MAX_VARIABLES] uint32: flags[i] nonzero iff a NaN or
    an infinity was stored in weights[i], ms[i] or vs[i]; weights[i], ms[i],
    vs[i] [n_i] float32, updated as ``multi.adam_apply_dense_multi`` (the
    same float ops, so the same bits). grads[i] [n_i] float32. lr_t,
    beta1, beta2, epsilon float32."""
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
