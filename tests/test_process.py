"""Import-time process settings (``sparse_train._process``).

The malloc setting is pinned by its effect: allocating and filling a few
step-sized arrays again and again must not page-fault each time (it did,
2-4 ms a W1 step), and ``SPARSE_TRAIN_MALLOC=system`` must leave glibc's
default (a fresh mmap, hence fresh page faults, per large array).
"""
import os
import subprocess
import sys

import pytest

_SCRIPT = r"""
import resource
import numpy as np
import sparse_train  # noqa: F401  (the settings are made on import)

def step():
    arrays = [np.empty(106496, np.int64) for _ in range(3)]
    for a in arrays:
        a.fill(1)

for _ in range(5):
    step()
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(50):
    step()
print(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
"""


def _faults(env_extra):
    env = {k: v for k, v in os.environ.items() if not k.startswith("MALLOC_")}
    env.pop("SPARSE_TRAIN_MALLOC", None)
    env.update(env_extra)
    done = subprocess.run([sys.executable, "-c", _SCRIPT], env=env, check=True,
                          capture_output=True, text=True, timeout=120)
    return int(done.stdout.split()[-1])


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc malloc only")
def test_freed_step_buffers_are_reused_without_page_faults():
    tuned = _faults({})
    default = _faults({"SPARSE_TRAIN_MALLOC": "system"})
    pages_per_step = 3 * 106496 * 8 // 4096
    assert default > 10 * pages_per_step          # glibc's default: faults every step
    assert tuned < pages_per_step                 # kept: at most a step's worth, once


def test_thread_settings_yield_to_the_environment():
    script = ("import os, sparse_train; "
              "print(os.environ['OPENBLAS_THREAD_TIMEOUT'], os.environ['GOMP_SPINCOUNT'])")
    env = {**os.environ, "OPENBLAS_THREAD_TIMEOUT": "7"}
    env.pop("GOMP_SPINCOUNT", None)
    out = subprocess.run([sys.executable, "-c", script], env=env, check=True,
                         capture_output=True, text=True, timeout=120).stdout.split()
    assert out == ["7", "10000"]


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc malloc only")
def test_sparse_train_tune_0_leaves_the_process_as_it_was():
    # the one-line opt-out: no environment variable set, malloc's default kept
    script = ("import os, sparse_train; "
              "print(os.environ.get('OPENBLAS_THREAD_TIMEOUT'), os.environ.get('GOMP_SPINCOUNT'))")
    env = {k: v for k, v in os.environ.items()
           if k not in ("OPENBLAS_THREAD_TIMEOUT", "GOMP_SPINCOUNT")}
    env["SPARSE_TRAIN_TUNE"] = "0"
    out = subprocess.run([sys.executable, "-c", script], env=env, check=True,
                         capture_output=True, text=True, timeout=120).stdout.split()
    assert out == ["None", "None"]
    assert _faults({"SPARSE_TRAIN_TUNE": "0"}) > 10 * (3 * 106496 * 8 // 4096)
