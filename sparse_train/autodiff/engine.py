"""The tape: ``Tensor``, the reverse pass, ``compute_gradients`` and ``gradients``.

A ``Tensor`` made by an op remembers its inputs and a ``backward`` closure
that maps the gradient of its output to one gradient per input (or None).
The reverse pass visits the graph in reverse topological order and sums the
contributions that reach each tensor (micrograd's design, iterative so deep
graphs do not hit the recursion limit):

    dL/dx = sum over consumers c of x:  backward_c(dL/dc)[position of x in c]

A leaf may wrap a ``Variable``; its gradients are summed per Variable, so a
table looked up by several features gets ONE gradient. Row-sparse
contributions (``RowSparseGrad``) are joined by concatenating their rows, never
densified; a dense contribution to the same variable densifies the sum.
"""
import contextlib

import numpy as np

from ..sparse import RowSparseGrad
from ..variable import Variable

__all__ = ["Tensor", "as_tensor", "no_grad", "is_grad_enabled", "compute_gradients",
           "gradients", "concat_row_sparse"]

_GRAD_ENABLED = [True]


@contextlib.contextmanager
def no_grad():
    """Ops inside this block record no graph (evaluation, prediction).

    >>> with no_grad():
    ...     y = Tensor(np.ones(2, np.float32), requires_grad=True) * 2.0
    >>> y.requires_grad
    False
    """
    previous = _GRAD_ENABLED[0]
    _GRAD_ENABLED[0] = False
    try:
        yield
    finally:
        _GRAD_ENABLED[0] = previous


def is_grad_enabled():
    """False inside ``no_grad()``."""
    return _GRAD_ENABLED[0]


def _as_float_array(data):
    """float32; a float64 ``ndarray`` is kept as is (finite-difference tests
    run the same ops in double precision). Python numbers and lists, integers
    and other floats become float32."""
    if isinstance(data, np.ndarray) and data.dtype in (np.float32, np.float64):
        return data
    return np.asarray(data, dtype=np.float32)


class Tensor:
    """An n-d float array in the autodiff graph.

    A leaf is made from data (``Tensor(array)``, a constant unless
    ``requires_grad=True``) or from a ``Variable`` (``Tensor(var)``: its data
    IS ``var.value``, not a copy, and its gradient is reported for ``var``).
    Ops make non-leaf tensors that remember their inputs and backward.

    Args:
        data: array-like or ``Variable``. Stored as float32; only a float64
            ``ndarray`` stays float64 (for double-precision tests).
        requires_grad: whether gradients flow to this leaf (default: True for
            a float ``Variable``, False for plain data).

    >>> from sparse_train.autodiff import gradients
    >>> x = Tensor(np.array([1.0, -2.0], np.float32), requires_grad=True)
    >>> y = (x * x).sum()
    >>> gradients(y, [x])[0].tolist()
    [2.0, -4.0]
    """

    __slots__ = ("data", "requires_grad", "variable", "_inputs", "_backward", "op")
    __array_ufunc__ = None  # ndarray (op) Tensor calls Tensor's reflected op

    def __init__(self, data, requires_grad=None):
        variable = None
        if isinstance(data, Variable):
            variable = data
            data = data.value
            if requires_grad is None:
                requires_grad = data.dtype.kind == "f" or variable.is_half
        elif isinstance(data, Tensor):
            data = data.data
        self.data = _as_float_array(data) if variable is None else data
        self.variable = variable
        self.requires_grad = bool(requires_grad) and _GRAD_ENABLED[0]
        self._inputs = ()
        self._backward = None
        self.op = "leaf"

    @classmethod
    def from_op(cls, data, inputs, backward, op):
        """The output of an op: ``backward(grad_out) -> (grad per input)``.

        The graph is recorded only if some input requires a gradient (and not
        inside ``no_grad``); otherwise the result is a constant.
        """
        out = cls.__new__(cls)
        out.data = data
        out.variable = None
        out.op = op
        if _GRAD_ENABLED[0] and any(t.requires_grad for t in inputs):
            out.requires_grad = True
            out._inputs = inputs
            out._backward = backward
        else:
            out.requires_grad = False
            out._inputs = ()
            out._backward = None
        return out

    # ---------------------------------------------------------------- views
    @property
    def shape(self):
        return self.data.shape

    @property
    def ndim(self):
        return self.data.ndim

    @property
    def dtype(self):
        return self.data.dtype

    @property
    def is_leaf(self):
        return self._backward is None

    def numpy(self):
        """The data array (not a copy)."""
        return self.data

    def item(self):
        return self.data.item()

    def __float__(self):
        return float(self.data)

    def __len__(self):
        return len(self.data)

    def __repr__(self):
        what = f", variable={self.variable.name!r}" if self.variable is not None else ""
        return (f"Tensor(shape={self.shape}, dtype={self.dtype}, op={self.op!r}"
                f"{what}, requires_grad={self.requires_grad})")

    # --------------------------------------------- operators (see ops.py)
    def __add__(self, other):
        return _ops().add(self, other)

    def __radd__(self, other):
        return _ops().add(other, self)

    def __sub__(self, other):
        return _ops().sub(self, other)

    def __rsub__(self, other):
        return _ops().sub(other, self)

    def __mul__(self, other):
        return _ops().mul(self, other)

    def __rmul__(self, other):
        return _ops().mul(other, self)

    def __neg__(self):
        return _ops().neg(self)

    def __matmul__(self, other):
        return _ops().matmul(self, other)

    def __rmatmul__(self, other):
        return _ops().matmul(other, self)

    def sum(self, axis=None, keepdims=False):
        return _ops().sum(self, axis, keepdims)

    def mean(self, axis=None, keepdims=False):
        return _ops().mean(self, axis, keepdims)

    def reshape(self, *shape):
        return _ops().reshape(self, shape[0] if len(shape) == 1 else shape)

    def relu(self):
        return _ops().relu(self)

    def sigmoid(self):
        return _ops().sigmoid(self)

    def tanh(self):
        return _ops().tanh(self)

    def square(self):
        return _ops().square(self)


def _ops():
    from . import ops
    return ops


def as_tensor(value, like=None):
    """``value`` as a Tensor; a Python number or array takes ``like``'s dtype
    (so ``x * 0.5`` stays float32)."""
    if isinstance(value, Tensor):
        return value
    if isinstance(value, Variable):
        return Tensor(value)
    if like is not None:
        return Tensor(np.asarray(value, dtype=like.dtype))
    return Tensor(value)


# ----------------------------------------------------------- the reverse pass
def _topological_order(root):
    """Tensors that require grad and lead to ``root``, inputs before outputs;
    an op's inputs are visited in argument order, depth first."""
    # Iterative post-order DFS. A node is marked when it is expanded, not when
    # it is pushed: a node pushed early may be reached again through a longer
    # path and must then be finished before the nodes on that path.
    order, visited = [], set()
    stack = [(root, False)]
    while stack:
        node, expanded = stack.pop()
        if expanded:
            order.append(node)
            continue
        if id(node) in visited:
            continue
        visited.add(id(node))
        stack.append((node, True))
        for parent in reversed(node._inputs):
            if parent.requires_grad and id(parent) not in visited:
                stack.append((parent, False))
    return order


class _SparseSum:
    """Row-sparse contributions of one tensor, joined once at the end."""

    __slots__ = ("parts",)

    def __init__(self, parts):
        self.parts = parts


def _accumulate(total, grad):
    """total + grad for dense arrays, ``RowSparseGrad``s, or a mix."""
    if total is None:
        return _SparseSum([grad]) if isinstance(grad, RowSparseGrad) else grad
    if isinstance(total, _SparseSum):
        if isinstance(grad, RowSparseGrad):
            total.parts.append(grad)
            return total
        return grad + _finish(total).to_dense()
    if isinstance(grad, RowSparseGrad):
        return total + grad.to_dense()
    return total + grad  # never in place: a backward may hand out a view


def _finish(total):
    if isinstance(total, _SparseSum):
        return concat_row_sparse(total.parts)
    return total


def concat_row_sparse(grads):
    """The sum of several ``RowSparseGrad`` of one variable, as one gradient.

    Indices and rows are concatenated (uncoalesced); the optimizer sums
    duplicates in position order, i.e. the contributions of ``grads[0]`` first.
    A single gradient is returned as is (still lazy).

        dense(result) = sum_k dense(grads[k])

    >>> a = RowSparseGrad([1], np.ones((1, 2)), (4, 2))
    >>> b = RowSparseGrad([3, 1], np.ones((2, 2)), (4, 2))
    >>> concat_row_sparse([a, b]).to_dense()[1].tolist()
    [2.0, 2.0]
    """
    if len(grads) == 1:
        return grads[0]
    shape = grads[0].dense_shape
    for grad in grads[1:]:
        if grad.dense_shape != shape:
            raise ValueError(
                f"cannot add row-sparse gradients of shapes {shape} and {grad.dense_shape}")
    return RowSparseGrad(np.concatenate([g.indices for g in grads]),
                         np.concatenate([g.values for g in grads]), shape)


def _densify(grad, node):
    """A gradient entering a non-leaf backward must be an array."""
    if isinstance(grad, _SparseSum):
        grad = _finish(grad)
    if isinstance(grad, RowSparseGrad):
        return grad.to_dense().astype(node.dtype, copy=False)
    return grad


def _backward_pass(loss, keep=frozenset()):
    """[(t, summed gradient)] for every leaf t that requires grad and every
    tensor whose id is in ``keep``, in topological order.

    The pass starts from ones (the gradient of ``loss.sum()``), as TF does for
    a non-scalar target.
    """
    if not isinstance(loss, Tensor):
        raise TypeError(f"loss must be a Tensor, got {type(loss).__name__}")
    found = {}
    if not loss.requires_grad:
        return []
    grads = {id(loss): np.ones(loss.shape, loss.dtype)}
    order = _topological_order(loss)
    for node in reversed(order):
        grad = grads.pop(id(node), None)
        if grad is None:
            continue
        if node._backward is None or id(node) in keep:
            grad = _finish(grad)
            found[id(node)] = grad
            if node._backward is None:
                continue
        input_grads = node._backward(_densify(grad, node))
        if len(input_grads) != len(node._inputs):
            raise RuntimeError(f"backward of op {node.op!r} returned {len(input_grads)} "
                               f"gradients for {len(node._inputs)} inputs")
        for parent, parent_grad in zip(node._inputs, input_grads):
            if parent_grad is not None and parent.requires_grad:
                grads[id(parent)] = _accumulate(grads.get(id(parent)), parent_grad)
    return [(node, found[id(node)]) for node in order if id(node) in found]


def _leaf_grads(loss, keep=frozenset()):
    """(per-Variable gradients {id(var): grad}, Variables in graph order,
    per-tensor gradients {id(tensor): grad} of leaves and ``keep``)."""
    by_var, var_order, by_tensor = {}, [], {}
    for node, grad in _backward_pass(loss, keep):
        by_tensor[id(node)] = grad
        var = node.variable
        if var is None:
            continue
        if id(var) not in by_var:
            var_order.append(var)
            by_var[id(var)] = grad
        else:  # the same Variable wrapped by several leaves
            by_var[id(var)] = _finish(_accumulate(_accumulate(None, by_var[id(var)]), grad))
    for var in var_order:
        by_var[id(var)] = _as_var_grad(by_var[id(var)], var)
    return by_var, var_order, by_tensor


def _as_array_grad(grad, shape, dtype):
    """A C-contiguous, writeable array of ``shape`` (0-d stays 0-d)."""
    grad = np.broadcast_to(np.asarray(grad, dtype=dtype), shape)
    if grad.flags.c_contiguous and grad.flags.writeable:
        return grad
    return np.array(grad, dtype=dtype, order="C")


def _as_var_grad(grad, var):
    if isinstance(grad, RowSparseGrad):
        return grad
    return _as_array_grad(grad, var.shape, var.value.dtype)


def compute_gradients(loss, var_list=None):
    """``[(gradient, variable)]`` of ``loss`` by reverse-mode autodiff (TF1).

    ``gradient = d sum(loss) / d variable``: a ``RowSparseGrad`` for a table
    reached only through lookups, else an array of the variable's shape.
    Every lookup of one table adds to one gradient.

    Args:
        loss: ``Tensor`` (usually a scalar).
        var_list: ``Variable``s; default: every trainable Variable ``loss``
            depends on, in graph order (depth first from ``loss``, each op's
            inputs in argument order: for a model, about the order its
            forward pass used them). A Variable of ``var_list`` that ``loss``
            does not depend on gets None.

    >>> from sparse_train import Variable
    >>> w = Variable(np.array([3.0], np.float32), "w")
    >>> [(g.tolist(), v.name) for g, v in compute_gradients((Tensor(w) * 2.0).sum())]
    [([2.0], 'w')]
    """
    by_var, var_order, _ = _leaf_grads(loss)
    if var_list is None:
        return [(by_var[id(v)], v) for v in var_order if v.trainable]
    var_list = list(var_list)
    for var in var_list:
        if not isinstance(var, Variable):
            raise TypeError(f"var_list must hold Variables, got {type(var).__name__}")
    return [(by_var.get(id(v)), v) for v in var_list]


def gradients(loss, variables):
    """``[d sum(loss) / d x for x in variables]`` (TF ``tf.gradients``).

    Args:
        loss: ``Tensor``.
        variables: ``Variable``s or ``Tensor``s (leaves or intermediate); one
            that ``loss`` does not depend on gets None.

    >>> x = Tensor(np.array([2.0], np.float32), requires_grad=True)
    >>> gradients((x * x * x).sum(), [x])[0].tolist()
    [12.0]
    """
    variables = list(variables)
    keep = frozenset(id(x) for x in variables if isinstance(x, Tensor))
    by_var, _, by_tensor = _leaf_grads(loss, keep)
    result = []
    for x in variables:
        if isinstance(x, Variable):
            result.append(by_var.get(id(x)))
        elif isinstance(x, Tensor):
            grad = by_tensor.get(id(x))
            result.append(grad if grad is None or isinstance(grad, RowSparseGrad)
                          else _as_array_grad(grad, x.shape, x.dtype))
        else:
            raise TypeError(f"gradients() takes Variables or Tensors, got {type(x).__name__}")
    return result
