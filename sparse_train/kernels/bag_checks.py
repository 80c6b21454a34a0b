"""One validity scan of a whole batch's bags, before the fused lookup.

``functional.check_bags`` checks one feature at a time (two kernel calls
and some 10 us of Python a feature). A batch of valid features, the normal
case, needs only a yes: this scan answers it for all features at once, and
only a "no" sends the caller to the per-feature checks, which name the
feature and the offending value. The ids and weights are screened by
``checks``' own kernels (an unsigned max, an exponent OR: both vectorise).
"""
from ._jit import njit
from .checks import first_decrease, first_id_out_of_range, first_non_finite


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
        if width < 1 or offsets[f, 0] != 0 or first_decrease(offsets[f]) >= 0:
            return False
        start, stop = value_starts[f], value_starts[f + 1]
        if offsets[f, width - 1] != stop - start:
            return False
        if first_id_out_of_range(values[start:stop], num_embeddings[f]) >= 0:
            return False
    return first_non_finite(weights) < 0
