"""N ranks under ``mpirun`` against one process on the same global batches.

The tests start ``mpirun -n 2`` or ``-n 3 --oversubscribe`` in a subprocess
with a timeout (``_launch``), several scenarios a launch; the worker
(``_worker.py``) writes the state it assembled from every rank's shard, and
the test holds it against the one-process reference of ``_scenarios``. Skipped only when mpi4py or mpirun
is missing (CI installs the ``mpi`` extra, so they run).

What must be bit for bit (docs/DISTRIBUTED.md): pooled lookups, and the
tables and their slots given the same upstream gradients (every optimizer);
a restore on any world size. What is bounded: dense weights (summed by
Allreduce in another order than one process's BLAS), hence later tables.
"""
import importlib.util
import json
import os

import numpy as np
import pytest

from sparse_train import GlobalStep
from sparse_train import autodiff as ad
from sparse_train.distributed import DistributedModel, SingleProcessComm

import _launch as launch
import _scenarios as sc

pytestmark = pytest.mark.skipif(launch.mpi_missing() is not None,
                                reason=launch.mpi_missing() or "")

#: Bound on max|distributed - one process| / max|one process| of every
#: dense variable and dense optimizer slot after ``sc.MODEL_STEPS`` steps
#: (measured: <= 6e-7 for 2 and 3 ranks; docs/DISTRIBUTED.md).
DENSE_BOUND = 1e-5
#: Same bound for tables and their slots, which differ only through the
#: dense weights' last bits.
TABLE_BOUND = 1e-5


@pytest.fixture(scope="module", autouse=True)
def compiled_kernels():
    """Compile (or load) the kernels once here, so that the ranks load them
    from Numba's cache instead of all compiling them at once."""
    model = sc.lookup_model()
    dist = DistributedModel(model, SingleProcessComm())
    batch = sc.lookup_batch(0)
    step = GlobalStep()
    optimizer = sc.OPTIMIZERS["adagrad_decay"](step)
    dist.exchange_lookups(batch)
    outputs = sc.lookup_outputs(model, batch)
    ad.compute_gradients(sc.upstream_loss(outputs, 0, 0, batch.size), [])
    grads = dist.exchange.backward()
    optimizer.apply_gradients([(grads.get(v.name), v) for v in dist.sparse_variables()], step)


def _bits_differ(expected, got):
    """Names whose arrays differ in any bit (or shape), or are missing."""
    missing = sorted(set(expected) ^ set(got))
    return missing + sorted(k for k in set(expected) & set(got)
                            if expected[k].shape != got[k].shape
                            or expected[k].dtype != got[k].dtype
                            or expected[k].tobytes() != got[k].tobytes())


def _rel_diff(a, b):
    return float(np.abs(a.astype(np.float64) - b).max(initial=0.0)
                 / max(float(np.abs(a).max(initial=0.0)), 1e-30))


@pytest.fixture(scope="module")
def launches(tmp_path_factory):
    """The output directory of the two launches the tests below read: on 2
    ranks the lookups, the model, a checkpoint save, its resume and the
    restore of a copy missing a shard; then on 3 ranks the lookups, the
    model and that checkpoint resharded. (Each launch costs every rank's
    start-up, so the scenarios share them.)"""
    out = tmp_path_factory.mktemp("mpi")
    launch.run_worker(2, out, "lookups", "model", "ckpt_save", "ckpt_break", "ckpt_resume",
                      "ckpt_broken", timeout=2 * launch.TIMEOUT).check()
    launch.run_worker(3, out, "lookups", "model", "ckpt_resume",
                      timeout=2 * launch.TIMEOUT).check()
    return out


@pytest.fixture(scope="module")
def lookups_reference():
    return sc.lookups_reference()


@pytest.fixture(scope="module")
def model_reference():
    return sc.model_reference()


@pytest.mark.parametrize("ranks", [2, 3])
def test_lookups_tables_and_slots_bit_exact(launches, lookups_reference, ranks):
    """Every optimizer; sum/mean/sqrtn, weights, empty and zero-weight bags,
    padding, hashed ids, a shared table, a table smaller than the world and
    a batch smaller than the world: outputs, tables, slots equal bit for bit."""
    got = dict(np.load(launches / f"lookups-{ranks}.npz"))
    assert len(lookups_reference) > 400
    assert _bits_differ(lookups_reference, got) == []


@pytest.mark.parametrize("ranks", [2, 3])
def test_model_training_matches_one_process(launches, model_reference, ranks):
    """DeepFM, AdagradDecay tables and Adam dense layers, 4 steps."""
    expected, model = model_reference
    got = dict(np.load(launches / f"model-{ranks}.npz"))
    tables = [v.name for v in model.sparse_variables()]
    assert set(got) == set(expected)
    for key in expected:
        if not key.startswith("last/"):
            continue
        name = key[len("last/"):]
        is_table = any(name == t or name.startswith(t + "/") for t in tables)
        bound = TABLE_BOUND if is_table else DENSE_BOUND
        assert _rel_diff(expected[key], got[key]) <= bound, name
    assert int(got["last/global_step"]) == sc.MODEL_STEPS
    np.testing.assert_allclose(got["losses"], expected["losses"], rtol=1e-6)
    np.testing.assert_allclose(got["eval"], expected["eval"], rtol=1e-6)


# ------------------------------------------------------------ checkpoints
@pytest.fixture(scope="module")
def checkpoint_runs(launches):
    """Saved on 2 ranks; resumed on 2 (and a broken copy tried), resharded on 3."""
    return launches


def _part(arrays, prefix):
    return {k[len(prefix) + 1:]: v for k, v in arrays.items() if k.startswith(prefix + "/")}


def test_checkpoint_files_are_per_rank_with_a_manifest(checkpoint_runs):
    names = sorted(os.listdir(checkpoint_runs / "ckpt"))
    assert names == ["ckpt-3.manifest.json", "ckpt-3.shard-0-of-2.ckpt",
                     "ckpt-3.shard-1-of-2.ckpt", "latest"]
    manifest = json.loads((checkpoint_runs / "ckpt" / "ckpt-3.manifest.json").read_text())
    assert manifest["world_size"] == 2 and manifest["global_step"] == 3
    assert manifest["tables"]["dfm/embedding/weight"] == 100 + 60 + 40 + 30 + 20 + 15 + 10 + 8 + 40 + 15


def test_resume_on_same_world_size_continues_bit_for_bit(checkpoint_runs):
    saved = dict(np.load(checkpoint_runs / "ckpt_save-2.npz"))
    resumed = dict(np.load(checkpoint_runs / "ckpt_resume-2.npz"))
    assert _bits_differ(_part(saved, "saved"), _part(resumed, "restored")) == []
    assert _bits_differ(_part(saved, "continued"), _part(resumed, "resumed")) == []


def test_restore_on_another_world_size_reshards_exactly(checkpoint_runs):
    saved = dict(np.load(checkpoint_runs / "ckpt_save-2.npz"))
    resharded = dict(np.load(checkpoint_runs / "ckpt_resume-3.npz"))
    assert _bits_differ(_part(saved, "saved"), _part(resharded, "restored")) == []
    continued, resumed = _part(saved, "continued"), _part(resharded, "resumed")
    for name in continued:  # 3 ranks sum dense gradients in another order
        assert _rel_diff(continued[name], resumed[name]) <= DENSE_BOUND, name


def test_checkpoint_of_3_ranks_restores_in_one_process(checkpoint_runs):
    from sparse_train.distributed import DistributedCheckpointManager
    data, _ = sc.model_data()
    model, sparse, dense, step = sc.model_setup(data.spec)
    dist = DistributedModel(model, SingleProcessComm())
    manager = DistributedCheckpointManager(dist, [sparse, dense], step,
                                           checkpoint_runs / "resaved-3")
    assert manager.restore_latest().endswith("ckpt-5.manifest.json")
    resumed = _part(dict(np.load(checkpoint_runs / "ckpt_resume-3.npz")), "resumed")
    assert _bits_differ(resumed, sc.state_of(dist.variables(), [sparse, dense], step)) == []


def test_missing_shard_fails_on_every_rank(checkpoint_runs):
    outcomes = json.loads((checkpoint_runs / "ckpt_broken-2.json").read_text())
    assert len(outcomes) == 2
    for outcome in outcomes:
        assert outcome.startswith("CheckpointError") and "rank 1" in outcome
        assert "ckpt-3.shard-1-of-2.ckpt" in outcome


# ------------------------------------------------------------------ faults
@pytest.mark.parametrize("kind, ranks", [("raise", 2), ("uncaught", 2), ("die", 3)])
def test_failing_rank_ends_the_job(tmp_path, kind, ranks):
    """A rank that raises (in or out of fail_fast) or is killed: the job
    ends quickly with a non-zero exit and the error, instead of a hang."""
    done = launch.run_worker(ranks, tmp_path, f"fault_{kind}", timeout=60)
    assert done.returncode != 0
    assert done.seconds < 45
    if kind == "raise":
        assert f"[rank {ranks - 1}/{ranks}] Traceback" in done.stderr
        assert f"RuntimeError: boom on rank {ranks - 1}" in done.stderr
    elif kind == "uncaught":
        assert f"RuntimeError: boom on rank {ranks - 1}" in done.stderr


def test_bad_ids_on_one_rank_stop_every_rank(tmp_path):
    done = launch.run_worker(2, tmp_path, "fault_bad_ids", timeout=60)
    assert done.returncode == 2
    assert ("[rank 1/2] error: feature 'c0': id 1000000 at position 0 is outside [0, 100)"
            in done.stderr)


# ------------------------------------------------------- scripts/train.py
def _train_main(argv):
    """``scripts/train.py``'s main, in this process."""
    spec = importlib.util.spec_from_file_location(
        "train_script_for_distributed", os.path.join(launch.ROOT, "scripts", "train.py"))
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    return script.main(argv)


def test_train_script_distributed_resumes_a_one_process_run(tmp_path):
    """``train.py`` epoch 1 in one process (checkpointed), epoch 2 with
    ``--distributed`` on 2 ranks from that checkpoint (resharded): the
    result matches 2 epochs in one process."""
    common = ["--examples", "3000", "--hidden-units", "16,8", "--batch-size", "250",
              "--embedding-dim", "4", "--quiet"]
    assert _train_main(common + ["--epochs", "1", "--checkpoint-dir", str(tmp_path / "ck")]) == 0
    assert _train_main(common + ["--epochs", "2", "--metrics-out", str(tmp_path / "one.json")]) == 0
    launch.run(2, "scripts/train.py", "--distributed", *common, "--epochs", "2", "--resume",
               "--checkpoint-dir", str(tmp_path / "ck"),
               "--metrics-out", str(tmp_path / "two.json")).check()
    one = json.loads((tmp_path / "one.json").read_text())
    two = json.loads((tmp_path / "two.json").read_text())
    assert two["world_size"] == 2 and two["global_step"] == one["global_step"]
    assert abs(two["auc"] - one["auc"]) < 1e-4 and abs(two["logloss"] - one["logloss"]) < 1e-4
    assert set(two["communication_seconds"]) == {"lookup_exchange", "gradient_exchange",
                                                 "dense_allreduce"}
    last = f"ckpt-{two['global_step']}"
    assert {f"{last}.manifest.json", f"{last}.shard-0-of-2.ckpt",
            f"{last}.shard-1-of-2.ckpt"} <= set(os.listdir(tmp_path / "ck"))


# ------------------------------------------------------ docs/DISTRIBUTED.md
def _doc_example():
    text = open(os.path.join(launch.ROOT, "docs", "DISTRIBUTED.md")).read()
    return text.split("```python\n", 1)[1].split("```", 1)[0]


def test_doc_example_runs_on_2_ranks_as_in_one_process(tmp_path, monkeypatch):
    (tmp_path / "example.py").write_text(_doc_example())
    done = launch.run(2, str(tmp_path / "example.py"), cwd=tmp_path).check()
    lines = [line for line in done.stdout.splitlines() if line.startswith("{")]
    assert len(lines) == 2 and lines[0] == lines[1]       # every rank prints the figures
    assert sorted(os.listdir(tmp_path / "runs" / "a"))[-1] == "latest"
    monkeypatch.chdir(tmp_path)
    namespace = {}
    exec(compile(_doc_example(), "DISTRIBUTED.md", "exec"), namespace)  # one process
    figures = namespace["dist"].evaluate(namespace["data"].batches())
    assert abs(figures["auc"] - eval(lines[0])["auc"]) < 1e-6
