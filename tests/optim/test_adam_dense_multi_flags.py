"""``kernels.multi.adam_apply_dense_multi``'s flags: one for each variable
it leaves non-finite; ``check_finite_state`` then still names the first bad
variable or slot as it did when it read every dense one. (Its values:
tests/optim/test_adam_dense_multi.py.)"""
import numpy as np
import pytest

from sparse_train import GlobalStep, RowSparseGrad, Variable, optim
from sparse_train.kernels.multi import MAX_VARIABLES, adam_apply_dense_multi
from sparse_train.training import NonFiniteError, train_step

SIZES = [35, 5, 0, 33, 16, 1]
SCALARS = tuple(np.float32(x) for x in (0.01, 0.9, 0.999, 1e-8))


def _state(rng):
    return [[rng.standard_normal(n).astype(np.float32), np.zeros(n, np.float32),
             np.zeros(n, np.float32)] for n in SIZES]


def _call(kernel, state, grads, *flags):
    pad = (np.empty(0, np.float32),) * (MAX_VARIABLES - len(state))
    kernel(*flags, *(tuple(s[k] for s in state) + pad for k in range(3)), tuple(grads) + pad,
           *SCALARS)


@pytest.mark.parametrize("where", ["weight", "v", "nan_grad"])
def test_flags_exactly_the_variables_left_non_finite(where):
    rng = np.random.default_rng(1)
    state = _state(rng)
    grads = [rng.standard_normal(n).astype(np.float32) for n in SIZES]
    if where == "weight":
        state[3][0][7] = np.inf                    # stays inf: w - finite
    elif where == "v":
        grads[3][7] = np.float32(1e30)             # g * g overflows v
    else:
        grads[3][7] = np.nan
    flags = np.zeros(MAX_VARIABLES, np.uint32)
    _call(adam_apply_dense_multi, state, grads, flags)
    assert [bool(f) for f in flags] == [i == 3 for i in range(MAX_VARIABLES)]
    finite = [all(np.isfinite(a).all() for a in s) for s in state]
    assert finite == [i != 3 for i in range(len(SIZES))]


class _Dense:
    """A stub model: one table, two dense kernels; the loss's gradients are given."""

    def __init__(self, kernel_grads):
        self.table = Variable(np.ones((4, 2), np.float32), "d/emb")
        self.kernels = [Variable(np.ones((2, 3), np.float32), f"d/k{i}") for i in range(2)]
        self.grads = kernel_grads

    def sparse_variables(self):
        return [self.table]

    def loss_and_gradients(self, batch):
        table_grad = RowSparseGrad([1], np.ones((1, 2), np.float32), (4, 2))
        return 1.0, [(table_grad, self.table)] + list(zip(self.grads, self.kernels))


@pytest.mark.parametrize("verify", [True, False])
def test_a_dense_adam_overflow_names_the_slot_as_the_full_check(verify, monkeypatch):
    # kernel k1: g = 1e30 is finite, g * g is not: its v becomes inf at [1, 2]
    # (m stays finite, the weight gets m / inf = 0 and stays finite)
    bad = np.zeros((2, 3), np.float32)
    bad[1, 2] = 1e30
    model = _Dense([np.ones((2, 3), np.float32), bad])
    if not verify:  # the check reading every dense variable, as before the flags
        monkeypatch.setattr(optim.Adam, "verified_finite", lambda self, updates: frozenset())
    with pytest.raises(NonFiniteError, match=r"after step 1: d/k1 \(slot 'v' of optimizer "
                       r"'Adam'\) holds inf \(row 1\)") as error:
        train_step(model, None, optim.GradientDescent(0.1), optim.Adam(0.1), GlobalStep())
    assert error.value.variable == "d/k1 (slot 'v' of optimizer 'Adam')"


def test_a_finite_dense_adam_step_passes_and_verifies_its_variables(monkeypatch):
    model = _Dense([np.ones((2, 3), np.float32), np.ones((2, 3), np.float32)])
    step, dense = GlobalStep(), optim.Adam(0.1)
    verified, real = [], optim.Adam.verified_finite
    monkeypatch.setattr(optim.Adam, "verified_finite",
                        lambda self, updates: verified.append(real(self, updates)) or verified[-1])
    train_step(model, None, optim.AdagradDecay(0.1, step), dense, step)
    assert int(step) == 1 and all(np.isfinite(k.value).all() for k in model.kernels)
    assert verified == [{id(k) for k in model.kernels}]  # both skipped by the check
