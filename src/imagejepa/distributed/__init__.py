"""Several processes: the process group from torchrun's environment (processes.py), the
model wrapped for data-parallel training, DDP or FSDP2 (wrap.py), whole tensors from
sharded ones for checkpoints (sharded.py), the few collectives the trainer
needs to keep every rank in agreement (collectives.py), and a failing rank stopping the
others (failures.py). One process needs none of it:
every function here is a no-op when no process group was started."""

from .collectives import (
    Agreement,
    agree_after_step,
    any_rank,
    barrier,
    merged_on_main,
    sum_over_ranks,
    text_from_main,
)
from .failures import FailureWatch, post_failure, posted_failure
from .processes import (
    SINGLE,
    Processes,
    lost_contact,
    processes_from_env,
    set_collective_timeout,
    start_processes,
    stop_processes,
)
from .wrap import (
    SHARDED,
    STRATEGIES,
    fill_from_whole,
    gradient_sync,
    hsdp_shape,
    is_sharded,
    local_shard,
    wrap_data_parallel,
)

__all__ = [
    "SHARDED", "SINGLE", "STRATEGIES", "Agreement", "FailureWatch", "Processes", "agree_after_step",
    "any_rank", "barrier", "fill_from_whole", "gradient_sync", "hsdp_shape", "is_sharded", "local_shard",
    "lost_contact", "merged_on_main", "post_failure", "posted_failure", "processes_from_env",
    "set_collective_timeout", "start_processes", "stop_processes", "sum_over_ranks", "text_from_main",
    "wrap_data_parallel",
]
