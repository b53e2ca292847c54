"""Pretraining: the run built from its config (build.py), one optimisation step on this rank's
part of the global batch (step.py), the loop with metrics, progress, signals, time limits and
checkpoints (trainer.py, metrics_log.py), what a checkpoint holds and putting it back
(state.py), the schedules of lr, weight decay and EMA (schedules.py) and their fitting to a
time budget (budget.py), the optimiser (optim.py), and stop signals -> checkpoint and exit 75
(preempt.py)."""
