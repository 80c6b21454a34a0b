"""Stand-ins for a ``Dataset`` and its batches, for tests of ``fit`` that
need only batch sizes (the step is a callback)."""


class Batch:
    def __init__(self, size):
        self.size = size


class Data:
    """``n`` batches of 2 examples."""

    def __init__(self, n):
        self.n, self.num_examples = n, 2 * n

    def batches(self, shuffle=False, seed=0):
        return (Batch(2) for _ in range(self.n))
