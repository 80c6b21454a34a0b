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


def _as_half_value(value, name, dtype):
    """The 16-bit storage array (``half.HALF_DTYPES``) of ``value``: an array
    already in the storage dtype is used as is (bfloat16: uint16 bit
    patterns), a real one is narrowed (nearest-even)."""
    from . import half
    storage = half.HALF_DTYPES[dtype]
    array = np.asarray(value)
    if array.dtype == storage:
        return np.ascontiguousarray(array)
    if array.dtype.kind not in "fiu" or array.dtype.kind == "b":
        raise TypeError(f"Variable {name!r}: a {dtype} value must be a real array or its "
                        f"{storage} storage, got dtype {array.dtype}")
    return half.narrow(array, dtype)


class Variable:
    """A named array that optimizers update in place (TF1 ``tf.Variable``).

    ``value`` is a C-contiguous ``np.ndarray``: float32 for real numbers, int64
    for integers. A float32 contiguous input is used as is (no copy), so a
    table's memory is never doubled. ``name`` keys the variable's optimizer
    slots and its entry in checkpoints.

    A 16-bit table (``dtype="bfloat16"`` or ``"float16"``, SPEC §7) stores
    its value as ``half.HALF_DTYPES`` says (bfloat16 as uint16 bit
    patterns); optimizers widen each row to float32, update it and narrow
    it back, nearest-even or stochastically (``rounding``). ``storage``
    names the dtype (``"float32"``, ``"int64"``, ``"bfloat16"``,
    ``"float16"``); ``np.asarray(var)`` and ``widened()`` give float32
    values.

    Args:
        value: array-like, the initial value. A trainable variable's array
            must be writable (optimizers update it in place): a read-only
            one (e.g. a read-only memory map) is a ``ValueError`` naming the
            variable, here and when ``value`` is replaced.
        name: unique, non-empty name such as ``"embedding/user_id"``.
        trainable: whether ``Optimizer.minimize`` updates it by default.
        dtype: None (float32 or int64 from ``value``), ``"bfloat16"`` or
            ``"float16"``: a real ``value`` is narrowed (nearest-even), an
            array of the storage dtype is used as is.
        rounding: of a 16-bit variable's updates, ``"nearest"`` (even) or
            ``"stochastic"`` (random bits hashed from ``rounding_seed``, the
            global step, the row and the column).
        rounding_seed: int seed of stochastic rounding.

    >>> v = Variable(np.zeros((2, 3)), "w")
    >>> v.value.dtype, v.shape, v.name
    (dtype('float32'), (2, 3), 'w')
    >>> h = Variable(np.array([[1.0, 0.1]]), "h", dtype="bfloat16")
    >>> h.storage, h.value.dtype, h.widened().tolist()
    ('bfloat16', dtype('uint16'), [[1.0, 0.10009765625]])
    """

    def __init__(self, value, name, trainable=True, dtype=None, rounding="nearest",
                 rounding_seed=0):
        if not isinstance(name, str) or not name:
            raise ValueError(f"Variable name must be a non-empty string, got {name!r}")
        self.name = name
        self.trainable = bool(trainable)
        self._half, self.rounding, self.rounding_seed = None, None, None
        if dtype is None or dtype == "float32":
            value = _as_value(value, name) if dtype is None else np.ascontiguousarray(
                value, dtype=np.float32)
        elif dtype in ("bfloat16", "float16"):
            from .half import check_rounding
            self.rounding = check_rounding(rounding, f"Variable {name!r}")
            self.rounding_seed = int(rounding_seed)
            self._half = dtype
            value = _as_half_value(value, name, dtype)
        else:
            raise ValueError(f"Variable {name!r}: dtype must be None, 'float32', 'bfloat16' "
                             f"or 'float16', got {dtype!r}")
        self.value = value

    @property
    def storage(self):
        """The stored dtype's name: ``"float32"``, ``"int64"``, ``"bfloat16"``
        or ``"float16"``."""
        return self._half or self.value.dtype.name

    @property
    def is_half(self):
        """True for a 16-bit table (``storage`` bfloat16 or float16)."""
        return self._half is not None

    def widened(self, rows=None):
        """float32 values, of the rows ``rows`` if given: for a 16-bit
        variable a widened copy; else the value itself (``rows``: a copy).
        Read-only use: writing into it does not change a 16-bit variable."""
        value = self.value if rows is None else self.value[rows]
        if not self.is_half:
            return value
        from .half import widen
        return widen(value, self.storage)

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
        if self.is_half:
            self.value[...] = _as_half_value(value, self.name, self.storage)
            return
        if value.dtype.kind not in ("fiub" if self.value.dtype.kind == "f" else "iub"):
            raise ValueError(f"Variable {self.name!r}: cannot assign dtype {value.dtype} "
                             f"to dtype {self.value.dtype}")
        self.value[...] = value

    def __array__(self, dtype=None, copy=None):
        if self.is_half:  # values, never bit patterns
            values = self.widened()
            return values if dtype is None else values.astype(dtype)
        if dtype is None or np.dtype(dtype) == self.value.dtype:
            return self.value.copy() if copy else self.value
        return self.value.astype(dtype)

    def __repr__(self):
        return (f"Variable(name={self.name!r}, shape={self.value.shape}, "
                f"dtype={self.storage}, trainable={self.trainable})")


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
