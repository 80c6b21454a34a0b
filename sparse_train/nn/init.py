"""Seeds and initializers of dense layers."""
import zlib

import numpy as np

__all__ = ["layer_seed", "glorot_uniform"]


def layer_seed(seed, name):
    """A 32-bit seed for the layer ``name`` of a model seeded ``seed``: layers
    differ from each other, and a run repeats.

    >>> layer_seed(0, "mlp/dense_0") == layer_seed(0, "mlp/dense_0") != layer_seed(1, "mlp/dense_0")
    True
    """
    state = np.random.SeedSequence([int(seed) & 0xFFFFFFFF, zlib.crc32(name.encode())])
    return int(state.generate_state(1)[0])


def glorot_uniform(shape, seed):
    """Glorot & Bengio (2010) uniform init, float32::

        limit = sqrt(6 / (fan_in + fan_out)),   w ~ U(-limit, limit)

    with ``fan_in, fan_out = shape[0], shape[1]`` (Keras ``glorot_uniform``
    on a [in, out] kernel).

    >>> w = glorot_uniform((400, 100), seed=0)
    >>> w.dtype, bool(abs(w).max() <= (6 / 500) ** 0.5)
    (dtype('float32'), True)
    """
    fan_in, fan_out = shape[0], shape[1] if len(shape) > 1 else 1
    limit = np.sqrt(6.0 / (fan_in + fan_out))
    rng = np.random.default_rng(seed)
    return rng.uniform(-limit, limit, shape).astype(np.float32)
