"""Math and shape ops: each a forward and a hand-written backward.

Every op takes Tensors (a Python number or array is made a constant of the
other input's dtype, so float32 stays float32), computes its output with NumPy,
and records ``backward(g) -> (gradient per input)`` where ``g`` is the gradient
of the output. A backward computes only the gradients of inputs that require
one; a gradient it does not compute is None. Backwards never write into ``g``
(it may be a view shared with another op).
"""
import numpy as np

from ..kernels import dense as _dense

from .engine import Tensor, as_tensor

__all__ = ["add", "sub", "mul", "neg", "matmul", "bias_add", "linear", "relu", "sigmoid",
           "tanh", "square", "concat", "stack", "reshape", "sum", "mean",
           "unbroadcast"]


def _pair(a, b):
    if not isinstance(a, Tensor):
        b = as_tensor(b)
        return as_tensor(a, like=b), b
    return a, as_tensor(b, like=a)


def unbroadcast(grad, shape):
    """Sum ``grad`` over the axes NumPy broadcasting added or stretched, so it
    has ``shape`` (the backward of any broadcasting op)."""
    if grad.shape == tuple(shape):
        return grad
    extra = grad.ndim - len(shape)
    if extra:
        grad = grad.sum(axis=tuple(range(extra)))
    stretched = tuple(i for i, n in enumerate(shape) if n == 1 and grad.shape[i] != 1)
    if stretched:
        grad = grad.sum(axis=stretched, keepdims=True)
    return np.asarray(grad)


def add(a, b):
    """a + b with NumPy broadcasting. Backward: ``da = unbroadcast(g)``, same for b.

    >>> add(Tensor(np.ones((2, 3))), Tensor(np.arange(3.0))).shape
    (2, 3)
    """
    a, b = _pair(a, b)

    def backward(g):
        return (unbroadcast(g, a.shape) if a.requires_grad else None,
                unbroadcast(g, b.shape) if b.requires_grad else None)
    return Tensor.from_op(a.data + b.data, (a, b), backward, "add")


def sub(a, b):
    """a - b with broadcasting. Backward: ``da = g``, ``db = -g`` (unbroadcast).

    >>> sub(Tensor(np.ones((2, 2))), Tensor(np.array([1.0, 3.0]))).data.tolist()
    [[0.0, -2.0], [0.0, -2.0]]
    """
    a, b = _pair(a, b)

    def backward(g):
        return (unbroadcast(g, a.shape) if a.requires_grad else None,
                -unbroadcast(g, b.shape) if b.requires_grad else None)
    return Tensor.from_op(a.data - b.data, (a, b), backward, "sub")


def mul(a, b):
    """Elementwise a * b with broadcasting. Backward: ``da = g * b``, ``db = g * a``.

    >>> mul(Tensor(np.array([2.0, 3.0])), 4.0).data.tolist()
    [8.0, 12.0]
    """
    a, b = _pair(a, b)

    def backward(g):
        return (unbroadcast(g * b.data, a.shape) if a.requires_grad else None,
                unbroadcast(g * a.data, b.shape) if b.requires_grad else None)
    return Tensor.from_op(a.data * b.data, (a, b), backward, "mul")


def neg(x):
    """-x. Backward: ``dx = -g``.

    >>> neg(Tensor(np.array([1.0, -2.0]))).data.tolist()
    [-1.0, 2.0]
    """
    x = as_tensor(x)
    return Tensor.from_op(-x.data, (x,), lambda g: (-g,), "neg")


def matmul(a, b):
    """Matrix product ``a @ b`` of [..., M, K] and [..., K, N] (both >= 2-D;
    batch axes broadcast). Backward: ``da = g @ b^T``, ``db = a^T @ g``.

    >>> matmul(Tensor(np.ones((2, 3))), Tensor(np.ones((3, 4)))).data[0].tolist()
    [3.0, 3.0, 3.0, 3.0]
    """
    a, b = _pair(a, b)
    if a.ndim < 2 or b.ndim < 2:
        raise ValueError(f"matmul takes arrays of 2 or more dims, got shapes {a.shape} "
                         f"and {b.shape}")

    def backward(g):
        da = unbroadcast(g @ np.swapaxes(b.data, -1, -2), a.shape) if a.requires_grad else None
        db = unbroadcast(np.swapaxes(a.data, -1, -2) @ g, b.shape) if b.requires_grad else None
        return da, db
    return Tensor.from_op(a.data @ b.data, (a, b), backward, "matmul")


def bias_add(x, bias):
    """``x + bias`` for x [..., N] and bias [N] (TF ``bias_add``).

    Backward: ``dx = g``, ``dbias = sum of g over every axis but the last``.

    >>> bias_add(Tensor(np.zeros((2, 2))), Tensor(np.array([1.0, 2.0]))).data.tolist()
    [[1.0, 2.0], [1.0, 2.0]]
    """
    x, bias = _pair(x, bias)
    if bias.ndim != 1 or x.ndim < 1 or x.shape[-1] != bias.shape[0]:
        raise ValueError(f"bias_add: bias must be [{x.shape[-1:]}], got {bias.shape}")

    def backward(g):
        dbias = g.reshape(-1, g.shape[-1]).sum(axis=0) if bias.requires_grad else None
        return g, dbias
    return Tensor.from_op(x.data + bias.data, (x, bias), backward, "bias_add")


def linear(x, kernel, bias=None, activation=None):
    """Dense layer ``act(x @ kernel + bias)`` for x [B, K], kernel [K, N],
    bias [N], act None or ``"relu"``: matmul, bias add and ReLU fused into
    one op (one output buffer; float32 bias and ReLU in one pass,
    ``kernels.dense``).

    Backward, with ``p = g * (out > 0)`` for ReLU (else ``p = g``):
    ``dx = p @ kernel^T``, ``dkernel = x^T @ p``, ``dbias = sum_b p[b]``.

    >>> linear(Tensor(np.ones((2, 3))), Tensor(np.ones((3, 1))), Tensor(np.ones(1))).data.tolist()
    [[4.0], [4.0]]
    >>> linear(Tensor(np.ones((1, 2))), Tensor(-np.ones((2, 1))), activation="relu").data.tolist()
    [[0.0]]
    """
    x, kernel = _pair(x, kernel)
    if x.ndim != 2 or kernel.ndim != 2 or x.shape[1] != kernel.shape[0]:
        raise ValueError(f"linear: x [B, K] and kernel [K, N] expected, got {x.shape} "
                         f"and {kernel.shape}")
    if activation not in (None, "relu"):
        raise ValueError(f"linear: activation must be None or 'relu', got {activation!r}")
    relu_ = activation == "relu"
    out = x.data @ kernel.data
    inputs = (x, kernel)
    fast = out.dtype == np.float32  # the float64 path (gradient checks) stays in numpy
    if bias is not None:
        bias = as_tensor(bias, like=x)
        if bias.shape != (kernel.shape[1],):
            raise ValueError(f"linear: bias must be [{kernel.shape[1]}], got {bias.shape}")
        inputs = (x, kernel, bias)
    if fast and relu_:
        _dense.bias_relu(out, np.zeros(out.shape[1], np.float32) if bias is None else bias.data)
    else:
        if bias is not None:
            out += bias.data
        if relu_:
            np.maximum(out, 0, out=out)

    def backward(g):
        want_bias = bias is not None and bias.requires_grad
        if fast and g.dtype == np.float32 and (relu_ or want_bias):
            g = np.ascontiguousarray(g)
            partial = np.empty((_dense.BIAS_SLICES, g.shape[1]), np.float32)
            if relu_:
                p = np.empty_like(g)
                _dense.relu_grad_and_bias_sums(p, partial, g, out)
            else:
                p = g
                _dense.bias_sums(partial, g)
            dbias = partial.sum(axis=0) if want_bias else None
        else:
            p = g * (out > 0) if relu_ else g
            dbias = p.sum(axis=0) if want_bias else None
        if not x.requires_grad:
            dx = None
        elif kernel.shape[1] == 1:
            # one output unit: dx is the outer product p k^T, one product an
            # entry (the same bits as the matmul, which BLAS does 3x slower)
            dx = p * kernel.data[:, 0]
        else:
            dx = p @ kernel.data.T
        dkernel = x.data.T @ p if kernel.requires_grad else None
        if bias is None:
            return dx, dkernel
        return dx, dkernel, dbias
    return Tensor.from_op(out, inputs, backward, "linear_relu" if relu_ else "linear")


def relu(x):
    """``max(x, 0)``. Backward: ``dx = g * (x > 0)`` (0 at the kink, as TF/PyTorch).

    >>> relu(Tensor(np.array([-1.0, 0.0, 2.0]))).data.tolist()
    [0.0, 0.0, 2.0]
    """
    x = as_tensor(x)
    out = np.maximum(x.data, 0)
    return Tensor.from_op(out, (x,), lambda g: (g * (out > 0),), "relu")


def _sigmoid(x):
    """1 / (1 + exp(-x)) without overflow: exp(-|x|) <= 1."""
    e = np.exp(-np.abs(x))
    return np.where(x >= 0, 1 / (1 + e), e / (1 + e)).astype(x.dtype, copy=False)


def sigmoid(x):
    """``1 / (1 + exp(-x))``, stable for large |x|. Backward: ``dx = g * s * (1 - s)``.

    >>> sigmoid(Tensor(np.array([0.0, -1000.0], np.float32))).data.tolist()
    [0.5, 0.0]
    """
    x = as_tensor(x)
    out = _sigmoid(x.data)
    return Tensor.from_op(out, (x,), lambda g: (g * out * (1 - out),), "sigmoid")


def tanh(x):
    """``tanh(x)``. Backward: ``dx = g * (1 - tanh(x)^2)``.

    >>> tanh(Tensor(np.array([0.0]))).data.tolist()
    [0.0]
    """
    x = as_tensor(x)
    out = np.tanh(x.data)
    return Tensor.from_op(out, (x,), lambda g: (g * (1 - out * out),), "tanh")


def square(x):
    """``x * x``. Backward: ``dx = 2 x g``.

    >>> square(Tensor(np.array([-3.0]))).data.tolist()
    [9.0]
    """
    x = as_tensor(x)
    return Tensor.from_op(x.data * x.data, (x,), lambda g: (2 * x.data * g,), "square")


def concat(tensors, axis=-1):
    """Join tensors along ``axis`` (TF ``concat``). Backward: split ``g`` back.

    >>> concat([Tensor(np.ones((2, 1))), Tensor(np.zeros((2, 2)))], axis=1).shape
    (2, 3)
    """
    tensors = tuple(as_tensor(t) for t in tensors)
    if not tensors:
        raise ValueError("concat needs at least one tensor")
    out = np.concatenate([t.data for t in tensors], axis=axis)
    sizes = [t.shape[axis] for t in tensors]

    def backward(g):
        # views of g, as np.split gives (without its 25 us of Python a call)
        lead, start, parts = (slice(None),) * (axis % g.ndim), 0, []
        for size in sizes:
            parts.append(g[lead + (slice(start, start + size),)])
            start += size
        return tuple(parts)
    return Tensor.from_op(out, tensors, backward, "concat")


def stack(tensors, axis=1):
    """Stack same-shape tensors along a new ``axis`` (e.g. F features [B, D]
    into [B, F, D]). Backward: ``d tensors[i] = g[..., i, ...]`` (views).

    >>> stack([Tensor(np.ones((4, 3))), Tensor(np.zeros((4, 3)))], axis=1).shape
    (4, 2, 3)
    """
    tensors = tuple(as_tensor(t) for t in tensors)
    if not tensors:
        raise ValueError("stack needs at least one tensor")
    out = np.stack([t.data for t in tensors], axis=axis)
    lead = (slice(None),) * (axis % out.ndim)

    def backward(g):
        return tuple(g[lead + (i,)] if t.requires_grad else None
                     for i, t in enumerate(tensors))
    return Tensor.from_op(out, tensors, backward, "stack")


def select(x, index, axis=1):
    """``x`` at ``index`` along ``axis``, that axis removed (``x[:, index]``
    for axis 1). Backward: ``g`` placed at ``index`` in zeros of ``x``'s shape.

    >>> select(Tensor(np.arange(6.0).reshape(1, 3, 2)), 1).data.tolist()
    [[2.0, 3.0]]
    """
    x = as_tensor(x)
    where = (slice(None),) * (axis % x.ndim) + (index,)

    def backward(g):
        full = np.zeros(x.shape, g.dtype)
        full[where] = g
        return (full,)
    return Tensor.from_op(x.data[where], (x,), backward, "select")


def reshape(x, shape):
    """``x`` with a new shape (one entry may be -1). Backward: ``g`` reshaped back.

    >>> reshape(Tensor(np.zeros((2, 6))), (3, -1)).shape
    (3, 4)
    """
    x = as_tensor(x)
    out = x.data.reshape(shape)
    return Tensor.from_op(out, (x,), lambda g: (g.reshape(x.shape),), "reshape")


def _expand(g, shape, axis, keepdims):
    """``g`` of a reduction over ``axis`` broadcast back to the input ``shape``."""
    if axis is not None and not keepdims:
        g = np.expand_dims(g, axis)
    return np.broadcast_to(g, shape)


def sum(x, axis=None, keepdims=False):  # noqa: A001 (the NumPy/TF name)
    """Sum over ``axis`` (an int, a tuple, or None for all). Backward: ``g``
    broadcast back over the summed axes.

    >>> sum(Tensor(np.arange(6.0).reshape(2, 3)), axis=1).data.tolist()
    [3.0, 12.0]
    """
    x = as_tensor(x)
    out = np.asarray(x.data.sum(axis=axis, keepdims=keepdims))
    return Tensor.from_op(out, (x,), lambda g: (_expand(g, x.shape, axis, keepdims),), "sum")


def mean(x, axis=None, keepdims=False):
    """Mean over ``axis``. Backward: ``g / n`` broadcast back, n = number of
    entries averaged.

    >>> mean(Tensor(np.arange(6.0).reshape(2, 3)), axis=0).data.tolist()
    [1.5, 2.5, 3.5]
    """
    x = as_tensor(x)
    out = np.asarray(x.data.mean(axis=axis, keepdims=keepdims))
    count = x.data.size // max(out.size, 1) if x.data.size else 1
    scale = np.asarray(1.0 / count, dtype=x.dtype)

    def backward(g):
        return (_expand(g * scale, x.shape, axis, keepdims),)
    return Tensor.from_op(out, (x,), backward, "mean")
