#!/usr/bin/env bash
# Launch `python -m pretrain` with torchrun, on one node or as one node of a multi-node job.
#
#   launch/torchrun.sh --config configs/tiny.yaml [section.key=value ...]
#   NNODES=2 NODE_RANK=0 MASTER_ADDR=node0 MASTER_PORT=6000 NPROC_PER_NODE=8 \
#       launch/torchrun.sh --config configs/paper_1b.yaml          # on node0; NODE_RANK=1 on node1
#
# Environment (all optional):
#   NNODES           number of nodes (default 1)
#   NODE_RANK        this node's index, 0..NNODES-1 (default 0)
#   MASTER_ADDR      address of node 0, reachable from every node (default 127.0.0.1)
#   MASTER_PORT      free TCP port on node 0 (default: a free port on one node; 29533 on several)
#   NPROC_PER_NODE   processes per node (default: number of GPUs, or 2 without a GPU)
#   PYTHON           interpreter (default: the repository's .venv, else python3)
#   SHUTDOWN_TIMEOUT seconds the workers get to save a checkpoint after SIGTERM (default 240)
# Run it from the directory the config's relative paths are meant from (usually the repository root).
set -euo pipefail

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
PYTHON="${PYTHON:-$([ -x "$REPO/.venv/bin/python" ] && echo "$REPO/.venv/bin/python" || echo python3)}"
NNODES="${NNODES:-1}"
NODE_RANK="${NODE_RANK:-0}"
MASTER_ADDR="${MASTER_ADDR:-127.0.0.1}"

if [ -z "${NPROC_PER_NODE:-}" ]; then
    NPROC_PER_NODE="$("$PYTHON" -c 'import torch; print(torch.cuda.device_count() or 2)')"
fi
if [ -z "${MASTER_PORT:-}" ]; then
    if [ "$NNODES" = 1 ]; then  # any free port (not 29500: DeepSpeed's default, often taken)
        MASTER_PORT="$("$PYTHON" -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')"
    else
        MASTER_PORT=29533
    fi
fi
if ! "$PYTHON" -c 'import sys, torch; sys.exit(0 if torch.cuda.is_available() else 1)'; then
    export DS_ACCELERATOR="${DS_ACCELERATOR:-cpu}"  # DeepSpeed's CPU accelerator (gloo)
fi
# torchrun forwards SIGTERM to the workers and SIGKILLs them after this many seconds: time to checkpoint.
export TORCH_ELASTIC_SHUTDOWN_TIMEOUT="${SHUTDOWN_TIMEOUT:-240}"
export PYTHONPATH="$REPO${PYTHONPATH:+:$PYTHONPATH}"

exec "$PYTHON" -m torch.distributed.run \
    --nnodes="$NNODES" --node_rank="$NODE_RANK" --nproc_per_node="$NPROC_PER_NODE" \
    --master_addr="$MASTER_ADDR" --master_port="$MASTER_PORT" --max_restarts=0 \
    -m pretrain "$@"
