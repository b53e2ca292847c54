"""Pretraining: the trainer (trainer.py: build from config, the step, the loop, saving and
resuming), the schedules of lr, weight decay and EMA (schedules.py) and their fitting to a
time budget (budget.py), the optimiser (optim.py), and stop signals -> checkpoint and exit 75
(preempt.py)."""
