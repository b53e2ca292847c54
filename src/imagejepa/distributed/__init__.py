"""Several processes: the process group from torchrun's environment (processes.py), the
model wrapped for data-parallel training, DDP or FSDP2 (wrap.py), whole tensors from
sharded ones for checkpoints (sharded.py) and the few collectives the trainer
needs to keep every rank in agreement (collectives.py). One process needs none of it:
every function here is a no-op when no process group was started."""

from .collectives import Agreement, agree_after_step, barrier, sum_over_ranks, text_from_main
from .processes import SINGLE, Processes, lost_contact, processes_from_env, start_processes, stop_processes
from .wrap import STRATEGIES, gradient_sync, is_sharded, local_shard, wrap_data_parallel

__all__ = [
    "SINGLE", "STRATEGIES", "Agreement", "Processes", "agree_after_step", "barrier", "gradient_sync",
    "is_sharded", "local_shard", "lost_contact", "processes_from_env", "start_processes", "stop_processes",
    "sum_over_ranks", "text_from_main", "wrap_data_parallel",
]
