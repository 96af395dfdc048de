# Sourced by launch/torchrun.sh and launch/deepspeed.sh: run the launcher in the background with signals
# forwarded, then exit with the workers' own exit codes (each worker writes its code to
# $VFFN_EXIT_STATUS_DIR/rank_<RANK>.exit, see pretrain/__main__.py), not the launcher's (torchrun and the
# deepspeed launcher exit 1 whenever they were signalled, even after a clean save).

# status_dir_init RANK...: a temporary status directory, removed at exit, unless VFFN_EXIT_STATUS_DIR is set
# (then the files of these ranks from a previous run are removed).
status_dir_init() {
    if [ -z "${VFFN_EXIT_STATUS_DIR:-}" ]; then
        VFFN_EXIT_STATUS_DIR="$(mktemp -d "${TMPDIR:-/tmp}/vffn-exit.XXXXXX")"
        trap 'rm -rf "$VFFN_EXIT_STATUS_DIR"' EXIT
    else
        mkdir -p "$VFFN_EXIT_STATUS_DIR"
        local r
        for r in "$@"; do rm -f "$VFFN_EXIT_STATUS_DIR/rank_$r.exit"; done  # a previous run's
    fi
    export VFFN_EXIT_STATUS_DIR
}

# run_forwarded CMD...: CMD in the background, SIGUSR1 ignored there (its default action would kill the
# launcher and orphan the workers, which install their own handler); SIGTERM and SIGINT forwarded, SIGUSR1
# as SIGTERM, once (more signals while the launcher waits for the workers to save could cut that wait
# short), to the PIDs that a caller-defined `signal_targets LAUNCHER_PID` prints, else to CMD. Waits until
# CMD is gone (`wait` returns early when a trapped signal arrives) and sets launcher_rc.
_child=
_signal=
_forward() {
    [ -z "$_signal" ] || return 0
    _signal="$1"
    [ -n "$_child" ] || return 0
    local targets=
    if declare -F signal_targets >/dev/null; then targets="$(signal_targets "$_child")"; fi
    # shellcheck disable=SC2086
    kill -s "$1" ${targets:-$_child} 2>/dev/null || true
}
run_forwarded() {
    trap '_forward TERM' TERM
    trap '_forward INT' INT
    trap '_forward TERM' USR1
    (trap '' USR1; exec "$@") &
    _child=$!
    if [ -n "$_signal" ]; then  # arrived before the launcher started
        local s="$_signal"
        _signal=
        _forward "$s"
    fi
    while kill -0 "$_child" 2>/dev/null; do wait "$_child" 2>/dev/null || true; done
    launcher_rc=0
    wait "$_child" 2>/dev/null || launcher_rc=$?
}

# exit_with_workers_code LAUNCHER_NAME RANK...: when every one of RANK... wrote its code, exit with the first
# non-zero one (0 when all are 0), saying so when it differs from the launcher's; else with launcher_rc.
exit_with_workers_code() {
    local name="$1"
    shift
    local codes=() r f code rc="$launcher_rc"
    for r in "$@"; do
        f="$VFFN_EXIT_STATUS_DIR/rank_$r.exit"
        [ -f "$f" ] && read -r code < "$f" && [[ "$code" =~ ^[0-9]+$ ]] || { codes=(); break; }
        codes+=("$code")
    done
    if [ "${#codes[@]}" -gt 0 ]; then
        local worker_rc=0
        for code in "${codes[@]}"; do
            if [ "$code" != 0 ]; then worker_rc="$code"; break; fi
        done
        if [ "$worker_rc" != "$rc" ]; then
            echo "launch/$(basename "$0"): $name exited $rc; the workers' own exit codes" \
                 "(ranks $1-${!#}): ${codes[*]}; exiting $worker_rc" >&2
        fi
        rc="$worker_rc"
    fi
    exit "$rc"
}
