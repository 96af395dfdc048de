#!/usr/bin/env bash
# Launch `python -m pretrain` with torchrun, on one node or as one node of a multi-node job.
#
#   launch/torchrun.sh --config configs/tiny.yaml [section.key=value ...]
#   NNODES=2 NODE_RANK=0 MASTER_ADDR=node0 MASTER_PORT=6000 NPROC_PER_NODE=8 \
#       launch/torchrun.sh --config configs/paper_354m.yaml        # on node0; NODE_RANK=1 on node1
#
# Environment (all optional):
#   NNODES           number of nodes (default 1)
#   NODE_RANK        this node's index, 0..NNODES-1 (default 0)
#   MASTER_ADDR      address of node 0, reachable from every node (default 127.0.0.1)
#   MASTER_PORT      free TCP port on node 0 (default: a free port on one node; 29533 on several)
#   NPROC_PER_NODE   processes per node (default: number of GPUs, or 2 without a GPU)
#   PYTHON           interpreter (default: the repository's .venv, else python3)
#   SHUTDOWN_TIMEOUT seconds the workers get to save a checkpoint after SIGTERM (default 240)
#   VFFN_EXIT_STATUS_DIR  where the workers write their exit codes (default: a temporary directory,
#                    removed at exit)
# Run it from the directory the config's relative paths are meant from (usually the repository root).
#
# Signals: SIGTERM and SIGINT are forwarded to torchrun, SIGUSR1 as SIGTERM (what launch/slurm.sbatch sends
# through srun, which would turn a SIGTERM into SIGKILL); torchrun forwards them to the workers, which
# finish the current step, save a checkpoint and exit 0. torchrun itself ignores a SIGUSR1 sent to every
# process of a SLURM step (the workers handle theirs).
# Exit status: the workers' own, not torchrun's (torchrun exits 1 with a SignalException traceback
# whenever it was signalled, even after a clean save): each worker writes its code to
# $VFFN_EXIT_STATUS_DIR/rank_<RANK>.exit, and when every local rank of this node did, this script exits
# with the first non-zero one among them:
#   0      finished, or stopped by SIGTERM / SIGINT after saving a checkpoint
#   2      bad configuration, data or tokenizer (nothing trained; the message says what to fix)
#   3      non-finite loss (the message names the step)
#   5      lost contact with another host (killed, or its link dropped: the message names the rank and host
#          and the last complete checkpoint; start the job again on every host to resume)
#   other  failure (a worker crashed or was killed; then torchrun's own exit status is passed on)
set -euo pipefail

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
PYTHON="${PYTHON:-$([ -x "$REPO/.venv/bin/python" ] && echo "$REPO/.venv/bin/python" || echo python3)}"
NNODES="${NNODES:-1}"
NODE_RANK="${NODE_RANK:-0}"
MASTER_ADDR="${MASTER_ADDR:-127.0.0.1}"
export PYTHONPATH="$REPO${PYTHONPATH:+:$PYTHONPATH}"

# Device and port answers come from vffn_megatron/device.py (the workers choose CUDA/NCCL or CPU/gloo and
# DeepSpeed's accelerator there too, by themselves).
if [ -z "${NPROC_PER_NODE:-}" ]; then
    NPROC_PER_NODE="$("$PYTHON" -m vffn_megatron.device --nproc)"  # the GPUs, or 2 without one
fi
if [ -z "${MASTER_PORT:-}" ]; then
    if [ "$NNODES" = 1 ]; then  # any free port (not 29500: DeepSpeed's default, often taken)
        MASTER_PORT="$("$PYTHON" -m vffn_megatron.device --free-port)"
    else
        MASTER_PORT=29533
    fi
fi
# torchrun forwards SIGTERM to the workers and SIGKILLs them after this many seconds: time to checkpoint.
export TORCH_ELASTIC_SHUTDOWN_TIMEOUT="${SHUTDOWN_TIMEOUT:-240}"

# This node's workers, by global rank: torchrun's static rendezvous numbers node n's local ranks
# n*NPROC_PER_NODE .. n*NPROC_PER_NODE+NPROC_PER_NODE-1 (not known for NPROC_PER_NODE=gpu|auto).
local_ranks=()
if [[ "$NPROC_PER_NODE" =~ ^[0-9]+$ && "$NODE_RANK" =~ ^[0-9]+$ ]]; then
    for ((i = 0; i < NPROC_PER_NODE; i++)); do local_ranks+=($((NODE_RANK * NPROC_PER_NODE + i))); done
fi
# shellcheck source=launch/exit_status.sh
. "$REPO/launch/exit_status.sh"
status_dir_init "${local_ranks[@]}"
run_forwarded "$PYTHON" -m torch.distributed.run \
    --nnodes="$NNODES" --node_rank="$NODE_RANK" --nproc_per_node="$NPROC_PER_NODE" \
    --master_addr="$MASTER_ADDR" --master_port="$MASTER_PORT" --max_restarts=0 \
    -m pretrain "$@"
exit_with_workers_code torchrun "${local_ranks[@]}"
