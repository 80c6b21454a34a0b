"""Central finite differences for the autodiff tests (float64 end to end)."""
import numpy as np

from sparse_train.autodiff import Tensor, gradients, mul, reduce_sum


def weighted_output(fn, arrays, weights):
    """sum(fn(*arrays) * weights) as a float (no graph)."""
    out = fn(*[Tensor(a) for a in arrays]).data
    return float(np.sum(out * weights))


def check_op(fn, *arrays, seed=0, eps=1e-6, rtol=1e-6, atol=1e-9):
    """Compare the gradient of ``sum(fn(*x) * R)`` (R random) with central
    differences, for every entry of every float64 input array."""
    arrays = [np.array(a, dtype=np.float64) for a in arrays]
    inputs = [Tensor(a, requires_grad=True) for a in arrays]
    out = fn(*inputs)
    weights = np.random.default_rng(seed).uniform(0.5, 1.5, out.shape)
    analytic = gradients(reduce_sum(mul(out, Tensor(weights))), inputs)
    for k, array in enumerate(arrays):
        numeric = np.zeros_like(array)
        flat = array.reshape(-1)
        for i in range(flat.size):
            saved = flat[i]
            flat[i] = saved + eps
            up = weighted_output(fn, arrays, weights)
            flat[i] = saved - eps
            down = weighted_output(fn, arrays, weights)
            flat[i] = saved
            numeric.reshape(-1)[i] = (up - down) / (2 * eps)
        assert analytic[k] is not None, f"no gradient for input {k}"
        assert analytic[k].shape == array.shape, (analytic[k].shape, array.shape)
        np.testing.assert_allclose(analytic[k], numeric, rtol=rtol, atol=atol,
                                   err_msg=f"input {k}")
    return out
