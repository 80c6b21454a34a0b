"""Several optimizers in one model: partitioning, collections, global step."""
import numpy as np
import pytest

from sparse_train import GlobalStep, RowSparseGrad, Variable, collections, optim
from sparse_train import autodiff as ad
from sparse_train.models import build_model, train_step

from _models_common import SPEC, make_batch

LR_SPARSE, INIT, DECAY_STEP, DECAY_RATE = 0.2, 0.1, 2, 0.5
LR_DENSE, BETA1, BETA2, EPS = 0.01, 0.9, 0.999, 1e-8


@pytest.fixture(autouse=True)
def _fresh_collections():
    collections.reset_collections()
    yield
    collections.reset_collections()


def small_deepfm():
    return build_model("deepfm", SPEC, embedding_dim=4, seed=3, hidden_units=(8, 6))


def dense_grad(grad):
    return grad.to_dense() if isinstance(grad, RowSparseGrad) else np.asarray(grad)


class Reference:
    """AdagradDecay (tables) and Adam (dense) from SPEC §2 in float64, by hand."""

    def __init__(self, model):
        self.sparse = {v.name: v for v in model.sparse_variables()}
        self.w = {v.name: v.value.astype(np.float64) for v in model.variables()}
        self.acc = {n: np.full(self.w[n].shape, INIT) for n in self.sparse}
        self.power = {n: np.zeros(self.w[n].shape[0], np.int64) for n in self.sparse}
        self.m = {n: np.zeros_like(w) for n, w in self.w.items() if n not in self.sparse}
        self.v = {n: np.zeros_like(w) for n, w in self.w.items() if n not in self.sparse}
        self.beta_powers = [BETA1, BETA2]
        self.step = 0

    def apply(self, grads):
        gs = self.step + 1  # AdagradDecay reads the step before the increment
        for name, grad in grads.items():
            if name in self.sparse:
                g = grad.to_dense()
                rows = np.unique(grad.indices)
                for r in rows:
                    if gs // DECAY_STEP > self.power[name][r]:
                        self.acc[name][r] = np.maximum(self.acc[name][r] * DECAY_RATE, INIT)
                        self.power[name][r] += 1
                    self.acc[name][r] += g[r] * g[r]
                    self.w[name][r] -= LR_SPARSE * g[r] / np.sqrt(self.acc[name][r])
            else:
                b1p, b2p = self.beta_powers
                lr_t = LR_DENSE * np.sqrt(1 - b2p) / (1 - b1p)
                self.m[name] = BETA1 * self.m[name] + (1 - BETA1) * grad
                self.v[name] = BETA2 * self.v[name] + (1 - BETA2) * grad * grad
                self.w[name] -= lr_t * self.m[name] / (np.sqrt(self.v[name]) + EPS)
        self.beta_powers = [self.beta_powers[0] * BETA1, self.beta_powers[1] * BETA2]
        self.step += 1


def make_optimizers(global_step):
    return (optim.AdagradDecay(LR_SPARSE, global_step, INIT, DECAY_STEP, DECAY_RATE),
            optim.Adam(LR_DENSE, BETA1, BETA2, EPS))


def test_train_step_equals_each_rule_applied_by_hand():
    model = small_deepfm()
    reference = Reference(model)
    gs = GlobalStep()
    sparse_opt, dense_opt = make_optimizers(gs)
    for step in range(4):  # the decay fires at steps 1 and 3 (gs + 1 = 2, 4)
        batch = make_batch(seed=step, size=8)
        grads = {v.name: g for g, v in ad.compute_gradients(model.loss(batch), model.variables())}
        before = {v.name: v.value.copy() for v in model.sparse_variables()}
        train_step(model, batch, sparse_opt, dense_opt, gs)
        reference.apply(grads)
        assert int(gs) == step + 1  # incremented exactly once per step
        for var in model.variables():
            np.testing.assert_allclose(var.value, reference.w[var.name], rtol=1e-5, atol=1e-6,
                                       err_msg=f"step {step} {var.name}")
        for var in model.sparse_variables():  # untouched rows bit for bit unchanged
            untouched = np.setdiff1d(np.arange(var.shape[0]), grads[var.name].indices)
            np.testing.assert_array_equal(var.value[untouched], before[var.name][untouched])
    for var in model.sparse_variables():
        np.testing.assert_array_equal(
            sparse_opt.get_slot(var, "accumulator_decay_power").value, reference.power[var.name])
        assert dense_opt.get_slot(var, "m") is None  # Adam never saw a table
    assert reference.power["deepfm/embedding/weight"].max() == 2


def test_train_step_equals_separate_apply_calls_bit_for_bit():
    model_a, model_b = small_deepfm(), small_deepfm()
    gs_a, gs_b = GlobalStep(), GlobalStep()
    opts_a, opts_b = make_optimizers(gs_a), make_optimizers(gs_b)
    half = lambda pairs: [(None if g is None else
                           (g.scaled(0.5) if isinstance(g, RowSparseGrad) else g * 0.5), v)
                          for g, v in pairs]
    for step in range(3):
        batch = make_batch(seed=10 + step, size=8)
        loss_a = train_step(model_a, batch, *opts_a, gs_a, grad_transform=half)
        loss = model_b.loss(batch)
        tables = ad.compute_gradients(loss, model_b.sparse_variables())
        dense = ad.compute_gradients(loss, model_b.dense_variables())
        opts_b[0].apply_gradients(half(tables))
        opts_b[1].apply_gradients(half(dense), global_step=gs_b)
        assert loss_a == float(loss.data)
        assert int(gs_a) == int(gs_b) == step + 1
        for var_a, var_b in zip(model_a.variables(), model_b.variables()):
            np.testing.assert_array_equal(var_a.value, var_b.value, err_msg=var_a.name)


def test_train_step_with_one_optimizer_and_without_global_step():
    model_a, model_b = small_deepfm(), small_deepfm()
    batch = make_batch(seed=5, size=8)
    opt_a, opt_b = optim.Adagrad(0.1), optim.Adagrad(0.1)
    train_step(model_a, batch, opt_a)
    opt_b.minimize(model_b.loss(batch), model_b.variables())
    for var_a, var_b in zip(model_a.variables(), model_b.variables()):
        np.testing.assert_array_equal(var_a.value, var_b.value, err_msg=var_a.name)


def test_collections_partition_the_model():
    model = small_deepfm()
    other = build_model("lr", SPEC, scope="other")
    tables = collections.get_collection(collections.EMBEDDING_VARIABLES, scope="deepfm/")
    dense = collections.get_collection(collections.DENSE_VARIABLES, scope="deepfm/")
    assert tables == model.sparse_variables()
    assert dense == model.dense_variables()
    trainable = collections.get_collection(collections.TRAINABLE_VARIABLES)
    assert sorted(v.name for v in trainable) == sorted(
        v.name for v in model.variables() + other.variables())
    assert collections.get_collection(collections.GLOBAL_VARIABLES, scope="other/") == \
        other.sparse_variables() + other.dense_variables()
    # minimize each group with var_list from the collections
    gs = GlobalStep()
    batch = make_batch(seed=1, size=8)
    loss = model.loss(batch)
    grads = ad.compute_gradients(loss, tables + dense)
    optim.Adagrad(0.1).apply_gradients(grads[:len(tables)])
    optim.Adam(0.01).apply_gradients(grads[len(tables):], global_step=gs)
    assert int(gs) == 1


def test_collection_api():
    a, b = Variable([1.0], "scope/a"), Variable([2.0], "scope2/b")
    collections.add_to_collection("mine", a)
    collections.add_to_collection("mine", a)  # at most once
    collections.add_to_collections(["mine", "theirs"], b)
    collections.add_to_collection("mine", "not a variable")
    assert collections.get_collection("mine") == [a, b, "not a variable"]
    assert collections.get_collection("mine", scope="scope/") == [a]
    assert collections.get_collection("mine", scope="scope") == [a, b]  # a plain prefix
    assert collections.get_collection("missing") == []
    got = collections.get_collection("theirs")
    got.append(a)  # a copy
    assert collections.get_collection("theirs") == [b]
    collections.get_collection_ref("theirs").append(a)  # the list itself
    assert collections.get_collection("theirs") == [b, a]
    assert collections.get_all_collection_keys() == ["mine", "theirs"]
    collections.clear_collection("mine")
    assert collections.get_collection("mine") == []
    collections.reset_collections()
    assert collections.get_all_collection_keys() == []


def test_frozen_variables_are_not_trainable_in_collections():
    model = small_deepfm()
    frozen = model.dense_variables()[0]
    collections.reset_collections()
    frozen.trainable = False
    collections.register_variable(frozen)
    assert collections.get_collection(collections.GLOBAL_VARIABLES) == [frozen]
    assert collections.get_collection(collections.TRAINABLE_VARIABLES) == []
    pairs = ad.compute_gradients(model.loss(make_batch()))
    assert frozen not in [v for _, v in pairs]


def test_bad_dense_gradient_leaves_the_whole_model_unchanged():
    # The tables' optimizer runs first; the dense group's bad gradient must
    # still be caught before ANY variable, slot or the step changes.
    model = small_deepfm()
    gs = GlobalStep()
    sparse_opt, dense_opt = make_optimizers(gs)
    train_step(model, make_batch(seed=0, size=8), sparse_opt, dense_opt, gs)   # slots exist

    def poison_bias(pairs):
        out = []
        for grad, var in pairs:
            if var is model.dense_variables()[-1]:
                grad = np.array(grad, copy=True)
                grad.flat[0] = np.nan
            out.append((grad, var))
        return out
    watched = model.variables() + sparse_opt.variables() + dense_opt.variables()
    before = [v.value.copy() for v in watched]
    with pytest.raises(ValueError, match=f"{model.dense_variables()[-1].name}.*nan"):
        train_step(model, make_batch(seed=1, size=8), sparse_opt, dense_opt, gs,
                   grad_transform=poison_bias)
    assert int(gs) == 1
    for var, value in zip(watched, before):
        np.testing.assert_array_equal(var.value, value, err_msg=var.name)


def test_one_optimizer_given_for_both_groups_applies_once_per_step():
    # train_step(model, batch, adam, adam) is ONE apply_gradients call: Adam's
    # beta powers advance once per step, as with dense_optimizer=None.
    model_a, model_b = small_deepfm(), small_deepfm()
    adam_a, adam_b = optim.Adam(LR_DENSE), optim.Adam(LR_DENSE)
    gs_a, gs_b = GlobalStep(), GlobalStep()
    for step in range(2):
        batch = make_batch(seed=20 + step, size=8)
        train_step(model_a, batch, adam_a, adam_a, gs_a)
        train_step(model_b, batch, adam_b, None, gs_b)
    assert int(gs_a) == int(gs_b) == 2
    np.testing.assert_allclose(float(adam_a.beta1_power.value), BETA1 ** 3, rtol=1e-6)
    for var_a, var_b in zip(model_a.variables(), model_b.variables()):
        np.testing.assert_array_equal(var_a.value, var_b.value, err_msg=var_a.name)


def test_deepfm_checkpoint_restore_continues_bit_for_bit(tmp_path):
    # The README recipe: tables on AdagradDecay (decaying every 2 steps), dense
    # layers on Adam, clipping, a CheckpointManager; a fresh process (other
    # initial values) restores after 3 steps and must match an uninterrupted run.
    from sparse_train import Checkpoint, CheckpointManager, clip_gradients
    clip = lambda pairs: clip_gradients(pairs, 0.05)[0]
    batches = [make_batch(seed=30 + s, size=8) for s in range(6)]

    def build(seed):
        collections.reset_collections()
        model = build_model("deepfm", SPEC, embedding_dim=4, seed=seed, hidden_units=(8, 6))
        gs = GlobalStep()
        opts = make_optimizers(gs)
        return model, gs, opts, Checkpoint(model.variables(), list(opts), gs)

    def state(model, gs, opts):
        arrays = [v.value for v in model.variables()] + [v.value for o in opts for v in o.variables()]
        return [a.tobytes() for a in arrays] + [int(gs)]

    model, gs, opts, _ = build(3)
    for batch in batches:
        train_step(model, batch, *opts, gs, grad_transform=clip)
    expected = state(model, gs, opts)

    model, gs, opts, ckpt = build(3)
    manager = CheckpointManager(ckpt, tmp_path, max_to_keep=1)
    for batch in batches[:3]:
        train_step(model, batch, *opts, gs, grad_transform=clip)
    manager.save()
    fresh, gs2, opts2, ckpt2 = build(4)
    assert state(fresh, gs2, opts2) != state(model, gs, opts)
    assert CheckpointManager(ckpt2, tmp_path).restore_latest() == str(tmp_path / "ckpt-3.ckpt")
    for batch in batches[3:]:
        train_step(fresh, batch, *opts2, gs2, grad_transform=clip)
    assert state(fresh, gs2, opts2) == expected
