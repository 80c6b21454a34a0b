"""Smoke test of scripts/bench.py at toy sizes, so that it cannot rot.

Checks that each workload function returns its figures under the expected
keys and that our step agrees with the bench's NumPy reference step. It
times nothing worth asserting: benchmarks report figures, they are not
timed tests. The torch parts run only where torch is installed; FBGEMM's
are in test_bench_fbgemm.py.
"""
import json
import os
import sys

import numpy as np
import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.join(ROOT, "scripts"))

import bench  # noqa: E402
import bench_w1 as w1  # noqa: E402
import bench_w2 as w2  # noqa: E402
import sparse_train as st  # noqa: E402
from bench_common import torch  # noqa: E402

TOY_ROWS, TOY_DIM = 1000, 8
pytestmark = pytest.mark.filterwarnings("ignore:Sparse invariant checks")


def toy_workload(distribution="zipf", num_batches=3):
    return w1.make_workload("toy", TOY_ROWS, TOY_DIM, distribution, num_batches,
                            num_bags=16, bag_size=4)


@pytest.mark.parametrize("optimizer", w1.OPTIMIZERS)
def test_our_step_matches_numpy_reference(optimizer):
    work = toy_workload()
    tables = w1.make_tables(TOY_ROWS, TOY_DIM, with_torch=False, with_numpy=True)
    initial = tables.numpy.copy()
    global_step = st.GlobalStep()
    # accumulator_decay_step=2: AdagradDecay decays within these 6 steps.
    ours = w1.make_optimizer(optimizer, global_step, accumulator_decay_step=2)
    reference = w1.NumpyOptimizer(optimizer, (TOY_ROWS, TOY_DIM), accumulator_decay_step=2)
    for i in range(6):
        values, offsets = work.batches[i % len(work.batches)]
        np.testing.assert_allclose(
            st.functional.embedding_bag(tables.ours, values, offsets),
            w1.numpy_forward(tables.numpy, values, offsets), rtol=1e-6, atol=1e-6)
        w1.our_step(tables.ours, ours, global_step, values, offsets, work.d_out)
        w1.numpy_step(tables.numpy, reference, values, offsets, work.d_out)
    assert not np.array_equal(tables.numpy, initial)  # the steps did move rows
    np.testing.assert_allclose(tables.ours.value, tables.numpy, rtol=1e-5, atol=1e-6)
    for name, expected in reference.slots.items():
        slot = ours.get_slot(tables.ours, name).value
        np.testing.assert_allclose(slot, expected, rtol=1e-5, atol=1e-7, err_msg=name)
    if optimizer == "adagrad_decay":
        assert reference.slots["accumulator_decay_power"].max() >= 2


@pytest.mark.parametrize("optimizer", w1.OPTIMIZERS)
def test_phase_step_matches_numpy_reference(optimizer):
    """Ours cut into phases (pre-summed gradient, then the update alone)
    computes the same step as the NumPy reference."""
    work = toy_workload()
    tables = w1.make_tables(TOY_ROWS, TOY_DIM, with_torch=False, with_numpy=True)
    global_step = st.GlobalStep()
    ours = w1.make_optimizer(optimizer, global_step, accumulator_decay_step=2)
    reference = w1.NumpyOptimizer(optimizer, (TOY_ROWS, TOY_DIM), accumulator_decay_step=2)
    for i in range(4):
        values, offsets = work.batches[i % len(work.batches)]
        times = w1.our_phase_step(tables.ours, ours, global_step, values, offsets, work.d_out)
        w1.numpy_step(tables.numpy, reference, values, offsets, work.d_out)
    assert list(times) == ["lookup", "grouping", "gradient sum", "update"]
    np.testing.assert_allclose(tables.ours.value, tables.numpy, rtol=1e-5, atol=1e-6)


def test_phase_bytes_count_each_pass_once():
    # N = 10 ids, U = 4 rows, B = 2 bags, D = 8 (32-byte rows), 32 slot bytes
    nbytes = w1.phase_bytes(10, 4, 2, 8, 32)
    assert nbytes["lookup"] == 4 * 32 + 80 + 2 * 32
    assert nbytes["grouping"] == 160 + 32
    assert nbytes["gradient sum"] == 80 + 64 + 128
    assert nbytes["update"] == 128 + 2 * 4 * 64
    assert nbytes["apply (fused)"] == 80 + 64 + 2 * 4 * 64


def test_numpy_grad_sums_duplicates():
    d_out = np.array([[1.0, 2.0], [10.0, 20.0]], np.float32)
    rows, g = w1.numpy_grad(d_out, np.array([5, 3, 5]), np.array([0, 2, 3]))
    assert rows.tolist() == [3, 5]
    assert g.tolist() == [[1.0, 2.0], [11.0, 22.0]]


def test_zipf_ids_are_skewed_and_in_range():
    rng = np.random.default_rng(0)
    ids = w1.draw_ids(rng, 10_000, 20_000, "zipf", rng.permutation(10_000))
    assert ids.min() >= 0 and ids.max() < 10_000
    counts = np.bincount(ids, minlength=10_000)
    assert counts.max() > 50 * counts.mean()  # a hot head
    assert np.unique(ids).size < np.unique(w1.draw_ids(rng, 10_000, 20_000, "uniform")).size


@pytest.fixture(scope="module")
def w1_result():
    work = toy_workload()
    tables = w1.make_tables(TOY_ROWS, TOY_DIM, with_torch=True, with_numpy=True)
    rows = [w1.run_config(tables, work, name, 1, rounds=2, steps=1, warmup=1, numpy_rounds=1,
                          phase_rounds=1)
            for name in w1.OPTIMIZERS]
    forward = [w1.run_forward(tables, work, 1, rounds=2, steps=1, warmup=1)]
    return rows, forward


def test_w1_rows_have_the_figures(w1_result):
    rows, forward = w1_result
    assert [r["optimizer"] for r in rows] == list(w1.OPTIMIZERS)
    for row in rows:
        for key in ("table", "ids", "threads", "unique_rows", "ours_ms", "torch_ms", "numpy_ms",
                    "speedup_vs_torch", "speedup_vs_numpy", "unique_rows_per_s",
                    "effective_gbps", "floor_ms", "x_floor", "memory_mb", "others_cores"):
            assert key in row, key
        assert row["ours_ms"] > 0 and row["numpy_ms"] > 0 and row["effective_gbps"] > 0
        assert set(row["ours"]["phases_ms"]) == {"lookup", "grad", "apply"}
        assert set(row["phases"]) == {"lookup", "grouping", "gradient sum", "update",
                                      "apply (fused)"}
        assert all(p["ms"] > 0 and p["bytes"] > 0 for p in row["phases"].values())
        assert row["fbgemm_ms"] is None and row["fbgemm_error"] is None  # not asked for
        assert 0 < row["unique_rows"] <= 64
        if torch is None:
            assert row["torch_ms"] is None and row["speedup_vs_torch"] is None
        else:
            assert row["torch_ms"] > 0 and row["speedup_vs_torch"] > 0
    assert forward[0]["ours_ms"] > 0


def test_floor_only_where_bench_md_gives_one():
    assert w1.floor_ms("1Mx64", "uniform", "adagrad", 2) == 7.0
    assert w1.floor_ms("1Mx64", "zipf", "adagrad", 1) == pytest.approx(1.8 * 93 / 47)
    assert w1.floor_ms("10Mx16", "uniform", "adagrad", 2) is None
    assert w1.floor_ms("1Mx64", "uniform", "lazy_adam", 2) is None


@pytest.mark.skipif(torch is None, reason="torch not installed (bench extra)")
@pytest.mark.parametrize("model", w2.MODELS)
def test_torch_ctr_models_train(model):
    spec = w2.make_spec(vocabulary_sizes=(50, 7, 300), num_dense=3)
    batches = w2.synthetic_click_log(spec, 1, batch_size=32)
    step = w2.make_torch_step(model, spec, batches)
    step(0)
    step(1)
    net = w2.TorchCTR(model, [50, 7, 300], 3, 4)
    ids, offsets, dense, labels = w2.torch_batch(batches[0], spec)
    assert net(ids, offsets, dense).shape == (32,)
    assert all(p.requires_grad for p in net.sparse_parameters())


def test_w2_row_and_report(w1_result, tmp_path):
    spec = w2.make_spec(vocabulary_sizes=(50, 7, 300), num_dense=3)
    batches = w2.synthetic_click_log(spec, 2, batch_size=32)
    w2_row = w2.run_model("fm", spec, batches, rounds=1, steps=1, warmup=1, with_torch=True)
    for key in ("model", "ours_samples_per_s", "torch_samples_per_s", "speedup_vs_torch", "note"):
        assert key in w2_row
    assert w2_row["ours_samples_per_s"] is not None or "not available" in w2_row["note"]
    rows, forward = w1_result
    result = {"w1": rows, "w1_forward": forward, "w2": [w2_row],
              "first_calls": {"lookup": 0.1}, "peak_rss_mb": 1.0,
              "meta": bench.meta(["--quick"])}
    result["targets"] = bench.targets(result)
    text = bench.report(result)
    assert "W1 step" in text and "W2 end-to-end" in text and "Targets (issue 5" in text and "W1 phases of ours" in text
    saved = tmp_path / "run.json"
    saved.write_text(json.dumps(result, default=float))
    md = tmp_path / "run.md"
    rendered = bench.main(["--render", str(saved), "--markdown", str(md)])
    assert rendered["meta"]["command"] == "python scripts/bench.py --quick"
    tables = md.read_text()
    assert "| W2 model, " in tables and "`python scripts/bench.py --quick`" in tables
    if torch is not None:
        assert "| W1 vs torch, 1 thr |" in tables
    pytest.importorskip("matplotlib")
    if torch is not None:
        bench.plot(result, tmp_path / "ratios.png")
        assert (tmp_path / "ratios.png").stat().st_size > 0


def test_cli_defaults_and_quick():
    args = bench.parse_args([])
    assert args.tables == ["1Mx64", "10Mx16"] and args.ids == ["zipf", "uniform"]
    assert args.optimizers == list(w1.OPTIMIZERS)
    quick = bench.parse_args(["--quick"])
    assert quick.tables == ["1Mx64"] and quick.rounds == 2
    assert "sgd" in args.optimizers and args.phase_rounds == 3
    with pytest.raises(SystemExit):
        bench.parse_args(["--optimizers", "adam"])


def test_first_step_script_knows_every_optimizer():
    """The start-up subprocess builds each of the bench's optimizers by name."""
    for name in w1.OPTIMIZERS:
        assert f'"{name}": lambda' in bench.FIRST_STEP_SCRIPT, name
