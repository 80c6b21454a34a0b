"""What the bench scripts share without importing torch: the workloads'
sizes (BENCH.md), in one place."""

#: Criteo-like cardinalities of W2's 26 categorical features, capped at 1M
#: (5.4M rows in all: 345 MB of float32 at D = 16, as much again in slots).
VOCABULARY_SIZES = (1460, 583, 1_000_000, 800_000, 305, 24, 12517, 633, 3, 93145,
                    5683, 1_000_000, 3194, 27, 14992, 1_000_000, 10, 5652, 2173, 4,
                    1_000_000, 18, 15, 286181, 105, 142572)
