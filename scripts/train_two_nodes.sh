#!/usr/bin/env bash
# Two machines with 8 GPUs each (the paper's 16 GPUs x 128 images = 2048): run this on both.
#
#   node A:  MASTER=nodeA scripts/train_two_nodes.sh
#   node B:  MASTER=nodeA scripts/train_two_nodes.sh
#
# The agents meet through torchrun's c10d rendezvous at MASTER:PORT (any node can host it),
# then train as 16 ranks. RUN_DIR must be on a filesystem both nodes see: rank 0 writes the
# checkpoints, and after a restart every rank reads them. --resume auto + --max-restarts: when
# a worker dies, both agents restart their workers, which continue from the last checkpoint.
set -euo pipefail
: "${MASTER:?set MASTER to the host name of one of the two nodes}"
PORT=${PORT:-29500}
NODES=${NODES:-2}
GPUS=${GPUS:-8}
JOB_ID=${JOB_ID:-imagejepa-vith14}
CONFIG=${CONFIG:-configs/in1k_vith14_ep300.yaml}
RUN_DIR=${RUN_DIR:-runs/in1k_vith14}
MAX_RESTARTS=${MAX_RESTARTS:-3}

exec torchrun --nnodes "$NODES" --nproc-per-node "$GPUS" \
    --rdzv-backend c10d --rdzv-endpoint "$MASTER:$PORT" --rdzv-id "$JOB_ID" \
    --max-restarts "$MAX_RESTARTS" \
    -m imagejepa pretrain --config "$CONFIG" --run-dir "$RUN_DIR" --resume auto "$@"
