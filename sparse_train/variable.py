"""``Variable`` (a named array updated in place) and ``GlobalStep``."""
import numpy as np

__all__ = ["Variable", "GlobalStep"]


def _as_value(value, name):
    """float32 for real numbers, int64 for integers; no copy when already so."""
    array = np.asarray(value)
    if array.dtype.kind == "f":
        dtype = np.float32
    elif array.dtype.kind in "iub":
        dtype = np.int64
    else:
        raise TypeError(
            f"Variable {name!r}: value must be a real or integer array, "
            f"got dtype {array.dtype}")
    return np.asarray(array, dtype=dtype, order="C")


class Variable:
    """A named array that optimizers update in place (TF1 ``tf.Variable``).

    ``value`` is a C-contiguous ``np.ndarray``: float32 for real numbers, int64
    for integers. A float32 contiguous input is used as is (no copy), so a
    table's memory is never doubled. ``name`` keys the variable's optimizer
    slots and its entry in checkpoints.

    Args:
        value: array-like, the initial value. A trainable variable's array
            must be writable (optimizers update it in place): a read-only
            one (e.g. a read-only memory map) is a ``ValueError`` naming the
            variable, here and when ``value`` is replaced.
        name: unique, non-empty name such as ``"embedding/user_id"``.
        trainable: whether ``Optimizer.minimize`` updates it by default.

    >>> v = Variable(np.zeros((2, 3)), "w")
    >>> v.value.dtype, v.shape, v.name
    (dtype('float32'), (2, 3), 'w')
    """

    def __init__(self, value, name, trainable=True):
        if not isinstance(name, str) or not name:
            raise ValueError(f"Variable name must be a non-empty string, got {name!r}")
        self.name = name
        self.trainable = bool(trainable)
        self.value = _as_value(value, name)

    @property
    def value(self):
        """The array (C-contiguous; float32 or int64)."""
        return self._value

    @value.setter
    def value(self, array):
        if self.trainable and isinstance(array, np.ndarray) and not array.flags.writeable:
            raise ValueError(
                f"Variable {self.name!r}: the value array is read-only, but a trainable "
                f"variable is updated in place (pass a writable copy, e.g. np.array(value), "
                f"or trainable=False)")
        self._value = array

    @property
    def shape(self):
        return self.value.shape

    @property
    def dtype(self):
        return self.value.dtype

    def numpy(self):
        """The value array itself (not a copy)."""
        return self.value

    def assign(self, value):
        """Copy ``value`` into this variable, in place; the shape must match."""
        value = np.asarray(value)
        if value.shape != self.value.shape:
            raise ValueError(
                f"Variable {self.name!r}: cannot assign shape {value.shape} "
                f"to shape {self.value.shape}")
        if value.dtype.kind not in ("fiub" if self.value.dtype.kind == "f" else "iub"):
            raise ValueError(f"Variable {self.name!r}: cannot assign dtype {value.dtype} "
                             f"to dtype {self.value.dtype}")
        self.value[...] = value

    def __array__(self, dtype=None, copy=None):
        if dtype is None or np.dtype(dtype) == self.value.dtype:
            return self.value.copy() if copy else self.value
        return self.value.astype(dtype)

    def __repr__(self):
        return (f"Variable(name={self.name!r}, shape={self.value.shape}, "
                f"dtype={self.value.dtype}, trainable={self.trainable})")


def _as_step(value):
    """``value`` as an int >= 0; ValueError for 1.5, "3", True or -1."""
    if isinstance(value, GlobalStep):
        value = int(value)
    elif isinstance(value, np.ndarray) and value.ndim == 0:
        value = value[()]
    whole = (not isinstance(value, (bool, np.bool_)) and isinstance(value, (int, np.integer))
             or (isinstance(value, (float, np.floating)) and float(value).is_integer()))
    if not whole or value < 0:
        raise ValueError(f"global step must be an integer >= 0, got {value!r}")
    return int(value)


class GlobalStep:
    """The int64 training-step counter shared by every optimizer of a model.

    ``int(gs)`` reads it. ``Optimizer.apply_gradients(..., global_step=gs)``
    increments it by one after all variables of that call are updated; rules
    that read the step (AdagradDecay) read it before the increment.

    >>> gs = GlobalStep()
    >>> int(gs), int(gs.increment())
    (0, 1)
    """

    def __init__(self, value=0, name="global_step"):
        value = _as_step(value)
        self.name = name
        self.value = np.array(value, dtype=np.int64)

    def increment(self):
        """Add one, in place; returns self."""
        self.value += 1
        return self

    def assign(self, value):
        """Set the step to ``value`` (an integer >= 0)."""
        self.value[...] = _as_step(value)

    def __int__(self):
        return int(self.value)

    def __index__(self):
        return int(self.value)

    def __eq__(self, other):
        if isinstance(other, GlobalStep):
            return int(self) == int(other)
        try:
            return int(self) == int(other)
        except (TypeError, ValueError):
            return NotImplemented

    __hash__ = object.__hash__

    def __repr__(self):
        return f"GlobalStep({int(self)})"
