"""Training: one train step (``step``) and the epoch loop (``loop``), for
one process and for ``DistributedModel`` alike. Models live in
``sparse_train.models``; the command line in ``scripts/``."""
from .loop import Interrupted, check_resume, evaluate, fit, report, resume_point
from .schedule import CheckpointState, EarlyStopping, MemoryState, ReduceLROnPlateau
from .step import NonFiniteError, apply_groups, check_finite_state, l2_regularize, train_step

__all__ = ["train_step", "apply_groups", "l2_regularize", "check_finite_state", "NonFiniteError",
           "fit", "evaluate", "report", "resume_point", "check_resume", "Interrupted", "EarlyStopping", "ReduceLROnPlateau",
           "MemoryState", "CheckpointState"]
