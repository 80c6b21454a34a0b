"""Fixtures shared by the kernel tests."""
import numba
import pytest


@pytest.fixture(params=[1, 2], ids=["1thread", "2threads"])
def threads(request):
    """Run the test on 1 thread (serial sort) and on 2 (parallel sort above
    ``coalesce.PARALLEL_MIN_IDS``)."""
    if request.param > numba.config.NUMBA_NUM_THREADS:
        pytest.skip("needs 2 threads")
    before = numba.get_num_threads()
    numba.set_num_threads(request.param)
    yield request.param
    numba.set_num_threads(before)
