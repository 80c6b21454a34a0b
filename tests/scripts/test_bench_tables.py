"""scripts/bench.py's README tables for the workloads run by their own
scripts (contention, dynamic, half), and bench_half's result rows."""
import importlib.util
import sys
from pathlib import Path

import pytest

SCRIPTS = Path(__file__).resolve().parents[2] / "scripts"


def _load(name):
    sys.path.insert(0, str(SCRIPTS))
    spec = importlib.util.spec_from_file_location(name, SCRIPTS / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def bench():
    return _load("bench")


def test_script_workloads_become_tables(bench):
    result = {
        "contention": {"rows": [{"table": "1Mx64", "ids": "zipf", "optimizer": "sgd",
                                 "quiet1_ms": 3.0, "quiet2_ms": 2.0, "busy1_ms": 4.0,
                                 "busy2_ms": 3.0, "busy2/busy1": 0.75, "busy2/quiet2": 1.5}]},
        "dynamic": {"zipf": 1.25, "uniform": 1.125},
        "half": {"meta": {"table": "1Mx64"},
                 "rows": [{"optimizer": "sgd", "threads": 1, "table": "bfloat16/nearest",
                           "wall_ms": 5.0, "cpu_ms": 5.5, "float32/this wall": 1.5,
                           "float32/this cpu": 1.25}]}}
    lines = "\n".join(bench.markdown_scripts(result)).splitlines()
    assert "| 1M x 64 zipf | sgd | 3.00 | 2.00 | 4.00 | 3.00 | 0.75x | 1.50x |" in lines
    assert "| zipf | 1.25x |" in lines and "| uniform | 1.12x |" in lines
    assert "| sgd bfloat16/nearest | 1 | 5.00 | 1.50x | 1.25x |" in lines
    assert bench.markdown_scripts({}) == []


def test_bench_half_rows_compare_with_float32_of_the_same_rounds():
    half = _load("bench_half")
    result = half.main(["--rows", "2000", "--dim", "8", "--optimizers", "sgd", "--threads", "1",
                        "--dtypes", "bfloat16", "--roundings", "nearest", "--rounds", "2",
                        "--steps", "1", "--warmup", "1", "--batches", "2"])
    rows = result["rows"]
    assert [r["table"] for r in rows] == ["float32", "bfloat16/nearest"]
    base = rows[0]
    assert base["float32/this wall"] == 1.0 and base["float32/this cpu"] == 1.0
    other = rows[1]
    assert other["float32/this wall"] == pytest.approx(base["wall_ms"] / other["wall_ms"])
    assert result["meta"]["table"] == "2000x8"
