"""One validity scan of a whole batch's bags, before the fused lookup.

``functional.check_bags`` checks one feature at a time (two kernel calls
and some 10 us of Python a feature). A batch of valid features, the normal
case, needs only a yes: this scan answers it for all features at once, and
only a "no" sends the caller to the per-feature checks, which name the
feature and the offending value.
"""
import numpy as np

from ._jit import njit


@njit
def bags_look_valid(values, value_starts, offsets, num_embeddings, weights):
    """True when every feature f is valid. values [n] int64: the features'
    ids one after another, feature f's at ``value_starts[f]:value_starts[f +
    1]`` (value_starts [F + 1] int64); offsets [F, B + 1] int64, row f the
    feature's offsets; num_embeddings [F] int64; weights [n] float32, or
    empty for none. Valid (``check_bags``' conditions):

        offsets[f, 0] == 0,  offsets[f, b] <= offsets[f, b + 1],
        offsets[f, B] == value_starts[f + 1] - value_starts[f],
        0 <= id < num_embeddings[f] for each id of f,  every weight finite.
    """
    num_features, width = offsets.shape
    for f in range(num_features):
        if width < 1 or offsets[f, 0] != 0:
            return False
        for b in range(1, width):
            if offsets[f, b] < offsets[f, b - 1]:
                return False
        start, stop = value_starts[f], value_starts[f + 1]
        if offsets[f, width - 1] != stop - start:
            return False
        # one unsigned max (a negative id reads as a huge one): vectorises
        unsigned = values[start:stop].view(np.uint64)
        high = np.uint64(0)
        for i in range(unsigned.shape[0]):
            high = max(high, unsigned[i])
        if stop > start and high >= np.uint64(num_embeddings[f]):
            return False
    bits = weights.view(np.uint32)
    exponent = np.uint32(0x7F800000)
    found = np.uint32(0)
    for i in range(bits.shape[0]):
        found |= np.uint32((bits[i] & exponent) == exponent)
    return found == 0
