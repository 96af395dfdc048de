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
if [ -z "${VFFN_EXIT_STATUS_DIR:-}" ]; then
    VFFN_EXIT_STATUS_DIR="$(mktemp -d "${TMPDIR:-/tmp}/vffn-exit.XXXXXX")"
    trap 'rm -rf "$VFFN_EXIT_STATUS_DIR"' EXIT
else
    mkdir -p "$VFFN_EXIT_STATUS_DIR"
    for r in "${local_ranks[@]}"; do rm -f "$VFFN_EXIT_STATUS_DIR/rank_$r.exit"; done  # a previous run's
fi
export VFFN_EXIT_STATUS_DIR

# In the background, so that this shell can forward signals and read the workers' codes afterwards.
# Forwarded once: more signals while torchrun waits for the workers to save could cut that wait short.
child=
signal_=
forward() {
    [ -z "$signal_" ] || return 0
    signal_="$1"
    [ -z "$child" ] || kill -s "$1" "$child" 2>/dev/null || true
}
trap 'forward TERM' TERM
trap 'forward INT' INT
trap 'forward TERM' USR1
# SIGUSR1 ignored by torchrun (its default action would kill it, orphaning the workers); the workers
# install their own handler for it.
(trap '' USR1; exec "$PYTHON" -m torch.distributed.run \
    --nnodes="$NNODES" --node_rank="$NODE_RANK" --nproc_per_node="$NPROC_PER_NODE" \
    --master_addr="$MASTER_ADDR" --master_port="$MASTER_PORT" --max_restarts=0 \
    -m pretrain "$@") &
child=$!
[ -z "$signal_" ] || kill -s "$signal_" "$child" 2>/dev/null || true  # arrived before torchrun started
# `wait` returns early when a trapped signal arrives: wait again until torchrun is gone.
while kill -0 "$child" 2>/dev/null; do wait "$child" 2>/dev/null || true; done
rc=0
wait "$child" 2>/dev/null || rc=$?

codes=()
for r in "${local_ranks[@]}"; do
    f="$VFFN_EXIT_STATUS_DIR/rank_$r.exit"
    [ -f "$f" ] && read -r code < "$f" && [[ "$code" =~ ^[0-9]+$ ]] || { codes=(); break; }
    codes+=("$code")
done
if [ "${#codes[@]}" -gt 0 ]; then
    worker_rc=0
    for code in "${codes[@]}"; do
        if [ "$code" != 0 ]; then worker_rc="$code"; break; fi
    done
    if [ "$worker_rc" != "$rc" ]; then
        echo "launch/torchrun.sh: torchrun exited $rc; the workers' own exit codes" \
             "(ranks ${local_ranks[0]}-${local_ranks[-1]}): ${codes[*]}; exiting $worker_rc" >&2
    fi
    rc="$worker_rc"
fi
exit "$rc"
