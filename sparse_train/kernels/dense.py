"""Elementwise work of a dense layer, fused into single passes over [B, N].

``x @ kernel`` stays with BLAS; these add the bias and apply ReLU in place
(forward), and mask the upstream gradient and sum it over the batch
(backward), each in one pass instead of numpy's three or four.

Serial kernels: a pass over a batch's [B, N] activations (512 x 256 in the
main job) takes 10-50 us on one thread, about what waking a thread team
costs, and a serial kernel compiles in a third of the time of a parallel
one (0.2 s against 0.6 s each, measured; the main job's first run compiles
all three).
"""
import numpy as np

from ._jit import njit

#: Row slices of the bias-gradient sum: a fixed number, so the sum's order
#: (and its bits) is fixed: each slice sums its rows in order, and the
#: caller adds the slices in order.
BIAS_SLICES = 16


@njit
def bias_relu(out, bias):
    """In place: out [B, N] float32 = relu(out + bias). bias [N] float32.

    NaN propagates (as ``np.maximum``); -0.0 and 0 stay as they are."""
    for i in range(out.shape[0]):
        row = out[i]
        for j in range(row.shape[0]):
            v = row[j] + bias[j]
            row[j] = v if not v < 0 else np.float32(0.0)


@njit
def relu_grad_and_bias_sums(dpre, partial, g, out):
    """In place: dpre [B, N] = g * (out > 0) (the ReLU's gradient, 0 at the
    kink); partial [BIAS_SLICES, N] float32 = column sums of dpre over each
    slice of rows (the caller adds the slices in order for the bias
    gradient). g, out [B, N] float32."""
    num_rows = g.shape[0]
    size = (num_rows + BIAS_SLICES - 1) // BIAS_SLICES
    for s in range(BIAS_SLICES):
        acc = partial[s]
        for j in range(acc.shape[0]):  # (a loop: a slice assignment compiles longer)
            acc[j] = 0.0
        for i in range(s * size, min(num_rows, (s + 1) * size)):
            for j in range(g.shape[1]):
                v = g[i, j] if out[i, j] > 0 else np.float32(0.0)
                dpre[i, j] = v
                acc[j] += v


@njit
def bias_sums(partial, g):
    """In place: partial [BIAS_SLICES, N] float32 = column sums of g [B, N]
    over each slice of rows (no activation)."""
    num_rows = g.shape[0]
    size = (num_rows + BIAS_SLICES - 1) // BIAS_SLICES
    for s in range(BIAS_SLICES):
        acc = partial[s]
        for j in range(acc.shape[0]):  # (a loop: a slice assignment compiles longer)
            acc[j] = 0.0
        for i in range(s * size, min(num_rows, (s + 1) * size)):
            for j in range(g.shape[1]):
                acc[j] += g[i, j]
