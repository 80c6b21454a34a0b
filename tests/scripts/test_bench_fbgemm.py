"""scripts/bench.py beside FBGEMM: the check that both sides compute the same
step before they are timed, the load-average warning, and the FBGEMM rows of
the report. The parts that run FBGEMM need the ``bench`` extra
(``fbgemm-gpu-cpu`` and its torch) and skip without it; nothing is timed.
"""
import os
import sys

import numpy as np
import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.join(ROOT, "scripts"))

import bench  # noqa: E402
import bench_common  # noqa: E402
import bench_w1 as w1  # noqa: E402

TOY_ROWS, TOY_DIM = 1000, 8
pytestmark = pytest.mark.filterwarnings("ignore:Sparse invariant checks")


def needs_fbgemm():
    if bench_common.fbgemm is None:
        pytest.skip(f"FBGEMM peer not available ({bench_common.FBGEMM_MISSING});"
                    " pip install -e '.[bench]'")


def toy_workload():
    return w1.make_workload("toy", TOY_ROWS, TOY_DIM, "zipf", 3, num_bags=16, bag_size=4)


# ------------------------------------------------------------ the check
def test_compare_weights_measures_against_the_peer_and_the_update():
    initial = np.zeros((4, 2))
    theirs = np.array([[0, 0], [2.0, -4.0], [0, 0], [1.0, 0]], np.float32)
    ours = theirs.copy()
    ours[1, 1] = -4.0004  # off by 4e-4 on a peer whose largest |w| is 4
    check = w1.compare_weights(ours, theirs, initial[[1, 3]], np.array([1, 3]))
    assert check["rel"] == pytest.approx(1e-4, rel=1e-3)
    assert check["rel_update"] == pytest.approx(1e-4, rel=1e-3)  # moved by 4 at most
    assert check["moved"] == 4.0 and check["rows"] == 2 and not check["bitwise_equal"]
    same = w1.compare_weights(theirs, theirs, initial[[1, 3]], np.array([1, 3]))
    assert same["rel"] == 0.0 and same["bitwise_equal"]


@pytest.mark.parametrize("optimizer", sorted(w1.FBGEMM_TWIN))
def test_fbgemm_computes_our_step(optimizer):
    """The check passes where the rules are the same; its figures land in
    the row; FBGEMM ran on the same rows (its weights moved)."""
    needs_fbgemm()
    work = toy_workload()
    tables = w1.make_tables(TOY_ROWS, TOY_DIM, with_torch=False, with_numpy=False,
                            with_fbgemm=True)
    row = w1.run_config(tables, work, optimizer, 1, rounds=1, steps=1, warmup=1,
                        numpy_rounds=0)
    check = row["fbgemm_check"]
    assert row["fbgemm_error"] is None, row["fbgemm_error"]
    assert check["rel"] <= w1.CHECK_RTOL and check["moved"] > 0.005  # lr 0.01 moved rows
    if optimizer != "sgd":
        assert check["accumulator_rel"] <= w1.CHECK_RTOL
    assert row["fbgemm_ms"] > 0 and row["speedup_vs_fbgemm"] > 0
    assert row["fbgemm_twin"] == w1.FBGEMM_TWIN[optimizer]


def test_fbgemm_with_another_rule_is_refused(monkeypatch):
    """FBGEMM on Adagrad while ours runs SGD: the config's FBGEMM figures are
    dropped and the script's exit status reports it."""
    needs_fbgemm()
    monkeypatch.setitem(w1.FBGEMM_TWIN, "sgd", "EXACT_ADAGRAD")
    tables = w1.make_tables(TOY_ROWS, TOY_DIM, with_torch=False, with_numpy=False,
                            with_fbgemm=True)
    row = w1.run_config(tables, toy_workload(), "sgd", 1, rounds=1, steps=1, warmup=1,
                        numpy_rounds=0)
    assert "differ" in row["fbgemm_error"] and row["fbgemm_ms"] is None
    assert bench.fbgemm_mismatches({"w1": [row]}) == [row]


def test_fbgemm_rows_in_report_and_targets():
    needs_fbgemm()
    tables = w1.make_tables(TOY_ROWS, TOY_DIM, with_torch=True, with_numpy=False,
                            with_fbgemm=True)
    rows = [w1.run_config(tables, toy_workload(), "adagrad", 1, rounds=1, steps=1, warmup=1,
                          numpy_rounds=0)]
    result = {"w1": rows, "peak_rss_mb": 1.0,
              "meta": bench.meta(["--workloads", "w1"], load_before={
                  "load_average": (0.5, 0.4, 0.3), "loaded": True})}
    result["targets"] = bench.targets(result)
    text = bench.report(result)
    assert "W1 vs FBGEMM CPU TBE" in text and "MEASURED UNDER LOAD" in text
    assert result["meta"]["peer"].startswith("FBGEMM") and result["meta"]["fbgemm_gpu"]
    goals = [t for t in result["targets"] if "FBGEMM ms / ours ms" in t["target"]]
    assert len(goals) == 1 and goals[0]["met"] == (rows[0]["speedup_vs_fbgemm"] >= 2.0)
    md = bench.markdown(result)
    ratio = f"**{rows[0]['speedup_vs_fbgemm']:.2f}x**"
    assert "| toy zipf | adagrad |" in md and ratio in md and "measured under load" in md


# ------------------------------------------------------------------ load
@pytest.mark.parametrize("load, loaded", [((0.31, 0.1, 0.1), True), ((0.29, 2.0, 2.0), False)])
def test_load_warning_follows_the_one_minute_load(monkeypatch, capsys, load, loaded):
    monkeypatch.setattr(bench_common.os, "getloadavg", lambda: load)
    seen = bench_common.warn_if_loaded("before the start")
    assert seen == {"load_average": load, "loaded": loaded}
    assert ("UNDER LOAD" in capsys.readouterr().err) == loaded


def test_meta_records_command_load_and_versions():
    meta = bench.meta(["--quick"], load_before={"load_average": (0.1, 0.2, 0.3),
                                                "loaded": False})
    assert meta["command"] == "python scripts/bench.py --quick"
    assert meta["argv"][-1] == "--quick"
    assert meta["load_before"] == (0.1, 0.2, 0.3) and meta["under_load"] is False
    assert len(meta["load_average"]) == 3
    for key in ("numpy", "numba", "torch", "fbgemm_gpu", "peer", "sparse_train", "git"):
        assert key in meta
    if bench_common.fbgemm is None:
        assert meta["peer"].startswith("skipped")
