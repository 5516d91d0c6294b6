"""Studies: the paper's tables and figures as sweeps of training runs, and their reports."""

from biasdecay.study.sweep import RunOutcome, RunSpec, run_state, sweep, train_command

__all__ = ["RunOutcome", "RunSpec", "run_state", "sweep", "train_command"]
