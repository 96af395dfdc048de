#!/usr/bin/env bash
# Launch `python -m pretrain` with DeepSpeed's launcher.
#
#   launch/deepspeed.sh --config configs/tiny.yaml [section.key=value ...]       # this node
#   HOSTFILE=launch/hostfile.example launch/deepspeed.sh --config configs/paper_1b.yaml
#       # from node 0: starts every host of the hostfile over pdsh/ssh (passwordless ssh needed;
#       # environment reaches remote ranks only through a .deepspeed_env file, see DeepSpeed's docs)
#   HOSTFILE=... NO_SSH=1 NODE_RANK=1 MASTER_ADDR=node0 launch/deepspeed.sh --config ...
#       # without ssh: run this on every node with its NODE_RANK
#
# Environment (all optional): HOSTFILE, NO_SSH, NODE_RANK, MASTER_ADDR (default 127.0.0.1),
#   MASTER_PORT (default: a free port for one node, 29533 with a hostfile), NUM_GPUS (processes on
#   this node when there is no hostfile; default: GPUs, or 2 without a GPU), PYTHON.
# Note: in pdsh mode DeepSpeed's launcher answers Ctrl-C / SIGTERM with `pkill -f` on every host.
set -euo pipefail

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
PYTHON="${PYTHON:-$([ -x "$REPO/.venv/bin/python" ] && echo "$REPO/.venv/bin/python" || echo python3)}"
MASTER_ADDR="${MASTER_ADDR:-127.0.0.1}"
export PYTHONPATH="$REPO${PYTHONPATH:+:$PYTHONPATH}"

# From vffn_megatron/device.py, in one interpreter start: DeepSpeed's accelerator (DS_ACCELERATOR if set, else
# cuda or cpu; the launcher itself imports DeepSpeed, so it is exported here), the GPUs (or 2), a free port.
read -r accelerator local_procs free_port < <("$PYTHON" -m vffn_megatron.device --ds-accelerator --nproc --free-port)
export DS_ACCELERATOR="$accelerator"
if [ "$DS_ACCELERATOR" = cpu ]; then
    export OMP_NUM_THREADS="${OMP_NUM_THREADS:-1}"  # the deepspeed launcher does not set it (torchrun does)
fi

args=(--master_addr "$MASTER_ADDR" --module --no_local_rank)  # LOCAL_RANK comes from the environment
if [ -n "${HOSTFILE:-}" ]; then
    args+=(--hostfile "$HOSTFILE" --master_port "${MASTER_PORT:-29533}")
    if [ -n "${NO_SSH:-}" ]; then
        args+=(--no_ssh --node_rank "${NODE_RANK:?NO_SSH needs NODE_RANK}")
    fi
else
    args+=(--num_gpus "${NUM_GPUS:-$local_procs}" --master_port "${MASTER_PORT:-$free_port}")
fi

exec "$PYTHON" -m deepspeed.launcher.runner "${args[@]}" pretrain "$@"
