"""Ending the whole job when one rank fails, instead of a hang.

A rank that raises stops calling collectives, and the other ranks wait in
their next one forever. ``fail_fast`` catches the exception on the failing
rank, prints it with the rank number and calls ``comm.abort``: the launcher
then ends every process with a non-zero exit code. A rank that dies
(killed, segfault) is detected by ``mpirun`` itself, which ends the job.
Running under ``python -m mpi4py`` adds the same protection for an
exception raised outside ``fail_fast``.
"""
import contextlib
import sys
import traceback

__all__ = ["fail_fast", "DistributedError"]


class DistributedError(RuntimeError):
    """Another rank failed, or the ranks disagree (model, data, checkpoint)."""


@contextlib.contextmanager
def fail_fast(comm, expected=(), file=None):
    """Run a block; if it raises on this rank, end every rank of the job.

    The error is printed to ``file`` (default stderr) as ``[rank r/W] ...``:
    the message alone for an ``expected`` exception class (a user error such
    as a bad flag or data file, exit code 2), the full traceback otherwise
    (exit code 1). ``SystemExit`` keeps its code (a message: code 2),
    ``KeyboardInterrupt`` exits with 130. With a single process the
    exception propagates unchanged.

    Args:
        comm: the ``Communicator``.
        expected: exception classes reported without a traceback.
        file: stream for the report.
    """
    try:
        yield
    except BaseException as error:  # noqa: B902 - every way out must end the job
        if comm.size == 1:
            raise
        code, text = _report(error, expected)
        out = sys.stderr if file is None else file
        prefix = f"[rank {comm.rank}/{comm.size}] "
        out.write("".join(prefix + line + "\n" for line in text.rstrip("\n").split("\n")))
        out.write(f"{prefix}ending the job (MPI abort, exit code {code})\n")
        out.flush()
        comm.abort(code)
        raise  # only reached by a communicator whose abort returns


def _report(error, expected):
    """(exit code, text) for an exception."""
    if isinstance(error, SystemExit):
        if isinstance(error.code, int) and not isinstance(error.code, bool):
            return (error.code or 1), f"exit with code {error.code}"
        return 2, str(error.code)
    if isinstance(error, KeyboardInterrupt):
        return 130, "interrupted"
    if expected and isinstance(error, expected):
        return 2, f"error: {error}"
    return 1, "".join(traceback.format_exception(type(error), error, error.__traceback__))
