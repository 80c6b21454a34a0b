"""kernels.fm against a float64 reference and against the NumPy float32
code it replaced (same bits for MIN_DIM <= D <= MAX_DIM)."""
import numpy as np
import pytest

from sparse_train.autodiff import Tensor
from sparse_train.autodiff.interaction import fm_interaction
from sparse_train.kernels import fm


def _numpy_float32(x):
    """The NumPy code of fm_interaction before the kernel (the bits to keep)."""
    total = x.sum(axis=1)
    out = 0.5 * (total * total - np.einsum("bfd,bfd->bd", x, x))
    return out.sum(axis=1), total


def _reference(x):
    """float64: sum_{f < f'} <x_f, x_f'> by brute force, and its gradient."""
    x = x.astype(np.float64)
    batch, fields, _ = x.shape
    out = np.zeros(batch)
    for f in range(fields):
        for h in range(f + 1, fields):
            out += (x[:, f] * x[:, h]).sum(axis=1)
    grad = x.sum(axis=1)[:, None, :] - x
    return out, grad


@pytest.mark.parametrize("dim", [2, 3, 7, 8, 9, 16, 17, 31, 32, 64, 100, 128])
@pytest.mark.parametrize("fields", [1, 2, 10, 26])
def test_forward_same_bits_as_numpy_and_close_to_float64(dim, fields):
    rng = np.random.default_rng(dim * 100 + fields)
    x = rng.standard_normal((37, fields, dim)).astype(np.float32)
    out, total = np.empty(37, np.float32), np.empty((37, dim), np.float32)
    fm.fm_forward(out, total, x)
    want_out, want_total = _numpy_float32(x)
    assert np.array_equal(out.view(np.uint32), want_out.view(np.uint32))
    assert np.array_equal(total.view(np.uint32), want_total.view(np.uint32))
    ref, _ = _reference(x)
    np.testing.assert_allclose(out, ref, rtol=1e-4, atol=1e-4 * fields * dim)


def test_op_matches_float64_reference_forward_and_backward():
    rng = np.random.default_rng(5)
    x = rng.standard_normal((64, 10, 16)).astype(np.float32)
    g = rng.standard_normal(64).astype(np.float32)
    t = Tensor(x, requires_grad=True)
    y = fm_interaction(t)
    (dx,) = y._backward(g)
    ref, ref_grad = _reference(x)
    np.testing.assert_allclose(y.data, ref, rtol=1e-4, atol=1e-3)
    np.testing.assert_allclose(dx, ref_grad * g[:, None, None], rtol=1e-5, atol=1e-5)
    # the NumPy float32 backward's bits
    total = x.sum(axis=1)
    assert np.array_equal(dx, (total[:, None, :] - x) * g[:, None, None])


@pytest.mark.parametrize("dim", [1, 130])
def test_dims_outside_the_kernel_keep_numpy(dim):
    x = np.random.default_rng(dim).standard_normal((9, 5, dim)).astype(np.float32)
    want, _ = _numpy_float32(x)
    assert np.array_equal(fm_interaction(Tensor(x)).data, want)
