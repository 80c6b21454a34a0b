"""The factorization-machine term of a [B, F, D] stack, forward and
backward, each in one pass (``autodiff.fm_interaction``).

NumPy took four passes and three temporaries for the forward (the field
sum, an ``einsum`` of squares, the difference, the row sum) and two for the
backward: 160 us and about 90 us a step on the main job's [512, 10, 16]
stack; these take 34 us and about 15 us (measured, one thread).

Same bits as that NumPy code for 2 <= D <= 128 (tests/kernels/test_fm.py):
the field sums run over f in order, as NumPy's reduction over a
non-contiguous axis does; the row sum over d is NumPy's pairwise sum
(``pairwise_sum`` of ``umath/loops_utils``: eight accumulators, then
``((r0 + r1) + (r2 + r3)) + ((r4 + r5) + (r6 + r7))``, then the rest in
order), which below 129 terms is this one block. Outside that range
(``einsum`` reorders the sum when D = 1; NumPy splits the pairwise sum
above 128) the caller keeps NumPy.

Serial kernels: 10-40 us of work, less than waking a thread team.
"""
import numpy as np

from ._jit import njit

#: The D for which ``fm_forward`` gives NumPy's bits.
MIN_DIM, MAX_DIM = 2, 128


@njit
def fm_forward(out, total, x):
    """In place: out [B] float32 = sum_d 0.5 * (total[b, d]^2 - sum_f x[b, f, d]^2);
    total [B, D] float32 = sum_f x[b, f, d]. x [B, F, D] float32, F >= 1,
    MIN_DIM <= D <= MAX_DIM."""
    num_fields, dim = x.shape[1], x.shape[2]
    squares = np.empty(dim, np.float32)
    lanes = np.empty(8, np.float32)
    half = np.float32(0.5)
    for b in range(x.shape[0]):
        t = total[b]
        for d in range(dim):
            v = x[b, 0, d]
            t[d] = v
            squares[d] = v * v
        for f in range(1, num_fields):
            for d in range(dim):
                v = x[b, f, d]
                t[d] += v
                squares[d] += v * v
        if dim < 8:
            acc = np.float32(0.0)
            for d in range(dim):
                acc += half * (t[d] * t[d] - squares[d])
            out[b] = acc
            continue
        for j in range(8):
            lanes[j] = half * (t[j] * t[j] - squares[j])
        i = 8
        while i + 8 <= dim:
            for j in range(8):
                lanes[j] += half * (t[i + j] * t[i + j] - squares[i + j])
            i += 8
        acc = ((lanes[0] + lanes[1]) + (lanes[2] + lanes[3])) + (
            (lanes[4] + lanes[5]) + (lanes[6] + lanes[7]))
        while i < dim:
            acc += half * (t[i] * t[i] - squares[i])
            i += 1
        out[b] = acc


@njit
def fm_backward(dx, g, total, x):
    """In place: dx [B, F, D] float32 = g[b] * (total[b, d] - x[b, f, d]).
    g [B], total [B, D], x [B, F, D] float32."""
    for b in range(x.shape[0]):
        gb = g[b]
        for f in range(x.shape[1]):
            for d in range(x.shape[2]):
                dx[b, f, d] = (total[b, d] - x[b, f, d]) * gb
