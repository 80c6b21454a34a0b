"""Plain gradient descent (TF ``GradientDescentOptimizer``): w -= lr * g."""
from ._jit import (loop_width, next_task, njit_inline, njit_parallel, prange, row_buffer,
                   task_queue, tasks_done, workers)
from .coalesce import ROW_CHUNK, summed_grad_row
from .prefetch import AHEAD, prefetch_row


@njit_inline
def sgd_row(w, g, lr, dim):
    """In place: w [dim] float32. w -= lr * g."""
    width = loop_width(w, dim)
    for j in range(width):
        w[j] -= lr * g[j]


@njit_parallel
def sgd_apply(weight, plan, lr, dim):
    """In place: weight [V, D] float32, on the plan's rows only. lr float32;
    dim = D (``_jit.row_dim``)."""
    rows = plan.rows
    num_rows = rows.shape[0]
    num_tasks = (num_rows + ROW_CHUNK - 1) // ROW_CHUNK
    queue = task_queue(num_tasks)
    for worker in prange(workers(queue)):
        g = row_buffer(dim)
        c = next_task(queue, worker)
        while c < num_tasks:
            for u in range(c * ROW_CHUNK, min(num_rows, (c + 1) * ROW_CHUNK)):
                prefetch_row(weight, rows[min(u + AHEAD, num_rows - 1)], dim)
                summed_grad_row(g, plan, u, dim)
                sgd_row(weight[rows[u]], g, lr, dim)
            c = next_task(queue, worker)
    tasks_done(queue)
