#!/usr/bin/env bash
# Launch `python -m pretrain` with DeepSpeed's launcher.
#
#   launch/deepspeed.sh --config configs/tiny.yaml [section.key=value ...]       # this node
#   HOSTFILE=launch/hostfile.example launch/deepspeed.sh --config configs/paper_354m.yaml
#       # from node 0: starts every host of the hostfile over pdsh/ssh (passwordless ssh needed;
#       # environment reaches remote ranks only through a .deepspeed_env file, see DeepSpeed's docs)
#   HOSTFILE=... NO_SSH=1 NODE_RANK=1 MASTER_ADDR=node0 launch/deepspeed.sh --config ...
#       # without ssh: run this on every node with its NODE_RANK
#
# Environment (all optional): HOSTFILE, NO_SSH, NODE_RANK, MASTER_ADDR (default 127.0.0.1),
#   MASTER_PORT (default: a free port for one node, 29533 with a hostfile), NUM_GPUS (processes on
#   this node when there is no hostfile; default: GPUs, or 2 without a GPU), PYTHON.
#   VFFN_EXIT_STATUS_DIR  where the workers write their exit codes (default: a temporary directory,
#                removed at exit)
# Note: in pdsh mode DeepSpeed's launcher answers Ctrl-C / SIGTERM with `pkill -f` on every host.
# Signals: SIGTERM / SIGINT are forwarded once to DeepSpeed's local launcher, SIGUSR1 as SIGTERM; it passes
# SIGTERM to the workers, which save a checkpoint and exit 0, but SIGKILLs them after 30 s (DeepSpeed's fixed
# limit: use launch/torchrun.sh, SHUTDOWN_TIMEOUT, when a save takes longer).
# Exit status: the workers' own, as launch/torchrun.sh (the deepspeed launcher exits 1 after a signal, even
# after a clean save): each worker writes its code to $VFFN_EXIT_STATUS_DIR/rank_<RANK>.exit and, when all
# NUM_GPUS workers of this node did, the script exits with the first non-zero one (0 finished or stopped
# after saving, 2 bad configuration, 3 non-finite loss). With a HOSTFILE the workers' codes are not
# collected (in pdsh mode they run on other hosts, and a node's ranks are not known here): the deepspeed
# launcher's own status is passed on.
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


# shellcheck source=launch/exit_status.sh
. "$REPO/launch/exit_status.sh"
ranks=()  # this node's workers (global ranks 0..NUM_GPUS-1); unknown with a HOSTFILE
if [ -z "${HOSTFILE:-}" ]; then
    n="${NUM_GPUS:-$local_procs}"
    [[ "$n" =~ ^[0-9]+$ ]] && for ((r = 0; r < n; r++)); do ranks+=("$r"); done
fi
status_dir_init "${ranks[@]}"

# On one node the runner has no signal handler (a signal would kill it and orphan its local launcher and
# the workers): a signal goes to the local launcher, its child, which passes it to the workers, waits for
# them and exits; the runner then exits too. With a HOSTFILE the runner gets it (in pdsh mode it stops
# every host).
signal_targets() {
    [ -n "${HOSTFILE:-}" ] || pgrep -P "$1" 2>/dev/null || true
}
run_forwarded "$PYTHON" -m deepspeed.launcher.runner "${args[@]}" pretrain "$@"
exit_with_workers_code "the deepspeed launcher" "${ranks[@]}"
