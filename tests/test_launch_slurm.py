"""launch/slurm.sbatch and launch/torchrun.sh without SLURM (issue 10, item 3): a fake ``srun`` and
``scontrol`` on PATH, and real tiny training runs (2 CPU ranks).

* the time-limit warning (``--signal=B:USR1@300``, sent here by hand to the batch shell): the workers
  save a checkpoint, the job exits 0 and runs ``scontrol requeue <job id>``; srun gets
  ``--cpus-per-task`` and is never sent SIGTERM (real srun answers SIGTERM by SIGKILLing its tasks);
  torchrun's own exit status 1 after a signal (SignalException) does not fail the job;
* the batch shell's decisions (requeue or not, exit status) for each signal, with a stub srun;
* launch/torchrun.sh exits 0 after a SIGTERM save, and with the workers' code 2 for a bad config.
"""
import os
import re
import signal
import sys
import time
from pathlib import Path

import pytest

from helpers import REPO
from helpers.procs import Proc, launch_env
from helpers.workspace import make_workspace, run_overrides
from vffn_megatron.device import free_port

START_TIMEOUT = 300   # imports + process group + first steps of 2 ranks on a busy 2-core machine
STOP_TIMEOUT = 180    # finish the step, save, exit

# Like real srun: records its arguments, runs the command after its options as the task of node 0, and
# forwards a signal to every process of the task's process group (slurmstepd signals every process of
# the step), except SIGTERM, which it answers by SIGKILLing the task ("forcing job termination").
# FAKE_SRUN_MODE=stub runs no task: it exits FAKE_SRUN_RC (default 0) on SIGUSR1, 137 on SIGTERM, or at
# once with FAKE_SRUN_EXIT.
FAKE_SRUN = r"""#!/bin/bash
printf '%s\n' "$@" > "$FAKE_SLURM_DIR/srun.args.tmp" && mv "$FAKE_SLURM_DIR/srun.args.tmp" "$FAKE_SLURM_DIR/srun.args"
log() { echo "$1" >> "$FAKE_SLURM_DIR/srun.signals"; }
while [ $# -gt 0 ] && [[ "$1" == -* ]]; do shift; done
if [ "${FAKE_SRUN_MODE:-run}" = stub ]; then
    [ -z "${FAKE_SRUN_EXIT:-}" ] || exit "$FAKE_SRUN_EXIT"
    trap 'log USR1; exit "${FAKE_SRUN_RC:-0}"' USR1
    trap 'log TERM; exit 137' TERM
    while :; do sleep 0.1; done
fi
export SLURM_NODEID=0 SLURM_PROCID=0
set -m  # the task in its own process group
"$@" &
task=$!
trap 'log USR1; kill -USR1 -- "-$task"' USR1
trap 'log TERM; echo "srun: forcing job termination" >&2; kill -KILL -- "-$task"' TERM
while kill -0 "$task" 2>/dev/null; do wait "$task" || true; done
wait "$task"
"""

FAKE_SCONTROL = r"""#!/bin/bash
echo "$*" >> "$FAKE_SLURM_DIR/scontrol.log"
if [ "$1" = show ] && [ "$2" = hostnames ]; then echo 127.0.0.1; fi
"""


@pytest.fixture(scope="module")
def ws(tmp_path_factory):
    return make_workspace(tmp_path_factory.mktemp("slurm_ws"))


def _slurm_env(tmp_path: Path, **extra) -> dict:
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for name, text in (("srun", FAKE_SRUN), ("scontrol", FAKE_SCONTROL)):
        (bin_dir / name).write_text(text)
        (bin_dir / name).chmod(0o755)
    return launch_env(PATH=f"{bin_dir}{os.pathsep}{os.environ['PATH']}", FAKE_SLURM_DIR=str(tmp_path),
                      PYTHON=sys.executable, MASTER_PORT=str(free_port()), SLURM_SUBMIT_DIR=str(REPO),
                      SLURM_JOB_NODELIST="node1", SLURM_JOB_NUM_NODES="1", SLURM_GPUS_ON_NODE="2",
                      SLURM_CPUS_PER_TASK="2", SLURM_JOB_ID="4242", **extra)


def _lines(path: Path) -> list[str]:
    return path.read_text().splitlines() if path.exists() else []


def _long_run(ws, out: Path) -> list[str]:
    # many steps: the run is stopped by the signal long before it would finish
    return ["--config", "configs/tiny.yaml",
            *run_overrides(ws, out, schedule__train_steps=500, checkpoint__interval=0)]


def _saved_step(out: Path, log: str) -> int:
    m = re.search(r"stop signal received: saving at step (\d+)", log)
    assert m, f"the workers did not save on the signal:\n{log[-6000:]}"
    step = int(m.group(1))
    ckpt = out / "checkpoints"
    assert (ckpt / "latest").read_text().strip() == f"step_{step:08d}"
    assert list((ckpt / f"step_{step:08d}").glob("mp_rank_00_model_states.pt"))
    assert 3 <= step < 500
    return step


def _assert_workers_codes_passed_on(log: str) -> None:
    # torchrun reports the signal as its own failure (exit 1, SignalException); the launcher passes on
    # the workers' codes instead
    if "SignalException" in log:
        assert re.search(r"torchrun exited 1; the workers' own exit codes \(ranks 0-1\): 0 0; exiting 0", log), \
            log[-6000:]


def test_sbatch_time_limit_signal_saves_and_requeues(ws, tmp_path):
    out = tmp_path / "run"
    env = _slurm_env(tmp_path)
    with Proc(["bash", str(REPO / "launch" / "slurm.sbatch"), *_long_run(ws, out)], tmp_path / "job.txt", env) as p:
        p.wait_for("step 3/", timeout=START_TIMEOUT)
        p.signal(signal.SIGUSR1)  # the batch shell only, as --signal=B:USR1@300 does
        rc = p.wait(STOP_TIMEOUT)
        log = p.output()
    assert rc == 0, f"the job failed ({rc}):\n{log[-6000:]}"
    _saved_step(out, log)
    srun_args = _lines(tmp_path / "srun.args")
    assert "--cpus-per-task=2" in srun_args and "--kill-on-bad-exit=1" in srun_args, srun_args
    assert _lines(tmp_path / "srun.signals") == ["USR1"]  # never SIGTERM: srun would SIGKILL the tasks
    assert _lines(tmp_path / "scontrol.log") == ["show hostnames node1", "requeue 4242"]
    assert "requeueing job 4242" in log
    _assert_workers_codes_passed_on(log)


@pytest.mark.parametrize("sig, srun_env, rc, requeued", [
    (signal.SIGUSR1, {}, 0, True),                       # time-limit warning, clean save: requeue
    (signal.SIGTERM, {}, 0, False),                      # scancel --batch --signal=TERM: stop, no requeue
    (signal.SIGUSR1, {"FAKE_SRUN_RC": "3"}, 3, False),   # the step failed: its status, no requeue
    (None, {"FAKE_SRUN_EXIT": "2"}, 2, False),           # not signalled: srun's status
], ids=["usr1_requeues", "term_stops", "usr1_step_failed", "no_signal"])
def test_sbatch_signal_decisions(tmp_path, sig, srun_env, rc, requeued):
    env = _slurm_env(tmp_path, FAKE_SRUN_MODE="stub", **srun_env)
    with Proc(["bash", str(REPO / "launch" / "slurm.sbatch"), "--config", "configs/tiny.yaml"],
              tmp_path / "job.txt", env) as p:
        if sig is not None:
            end = time.time() + 30
            while not (tmp_path / "srun.args").exists():
                assert time.time() < end and p.p.poll() is None, p.output()
                time.sleep(0.05)
            time.sleep(0.3)  # srun's traps are set
            p.signal(sig)
        assert p.wait(30) == rc, p.output()
    assert _lines(tmp_path / "srun.signals") == (["USR1"] if sig is not None else [])
    assert _lines(tmp_path / "scontrol.log")[1:] == (["requeue 4242"] if requeued else [])


def test_torchrun_sh_sigterm_saves_and_exits_0(ws, tmp_path):
    out = tmp_path / "run"
    env = launch_env(PYTHON=sys.executable, NPROC_PER_NODE="2")
    with Proc(["bash", str(REPO / "launch" / "torchrun.sh"), *_long_run(ws, out)], tmp_path / "log.txt", env) as p:
        p.wait_for("step 3/", timeout=START_TIMEOUT)
        p.signal(signal.SIGTERM)  # the script only: it forwards to torchrun
        rc = p.wait(STOP_TIMEOUT)
        log = p.output()
    assert rc == 0, f"launch/torchrun.sh exited {rc} after a clean save:\n{log[-6000:]}"
    _saved_step(out, log)
    _assert_workers_codes_passed_on(log)


def test_torchrun_sh_exits_with_the_workers_code_for_a_bad_config(ws, tmp_path):
    out = tmp_path / "bad"
    tmp = tmp_path / "tmp"  # where launch/torchrun.sh makes its status directory
    tmp.mkdir()
    env = launch_env(PYTHON=sys.executable, NPROC_PER_NODE="2", TMPDIR=str(tmp))
    args = [*_long_run(ws, out), "schedule.train_stepz=5"]  # misspelled key
    with Proc(["bash", str(REPO / "launch" / "torchrun.sh"), *args], tmp_path / "log.txt", env) as p:
        rc = p.wait(START_TIMEOUT)
        log = p.output()
    assert rc == 2, f"expected the workers' exit code 2 (bad config), got {rc}:\n{log[-6000:]}"
    assert "config error" in log and "train_stepz" in log
    assert "exiting 2" in log
    assert not list(tmp.glob("vffn-exit.*")), "the temporary status directory was not removed"
