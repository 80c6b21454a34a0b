"""Moved to ``sparse_train.training.loop`` (re-exported here so old imports work)."""
from ..progress import progress_interval
from ..training.loop import Interrupted, check_resume, fit, report, resume_point

__all__ = ["fit", "report", "resume_point", "check_resume", "Interrupted"]
