#!/usr/bin/env bash
# One machine, one process per GPU: the paper's ViT-H/14 recipe (global batch 2048) with torchrun.
#
#   scripts/train_single_node.sh                      # 8 GPUs, configs/in1k_vith14_ep300.yaml
#   GPUS=4 RUN_DIR=runs/mine scripts/train_single_node.sh --set data.dataset=imagefolder:/data/x
#
# data.batch_size is the global batch: 8 GPUs take 256 images each per step. If that does not
# fit in memory, keep the global batch and add --set optim.grad_accum=2 (or 4).
# The same command line starts and continues the run (--resume auto), so torchrun's
# --max-restarts restarts the group after a worker dies and training goes on from the last
# checkpoint. Extra arguments go to `imagejepa pretrain`.
set -euo pipefail
GPUS=${GPUS:-8}
CONFIG=${CONFIG:-configs/in1k_vith14_ep300.yaml}
RUN_DIR=${RUN_DIR:-runs/in1k_vith14}
MAX_RESTARTS=${MAX_RESTARTS:-3}

exec torchrun --standalone --nproc-per-node "$GPUS" --max-restarts "$MAX_RESTARTS" \
    -m imagejepa pretrain --config "$CONFIG" --run-dir "$RUN_DIR" --resume auto "$@"
