"""Run safety (issue 15, cases 6, 7, 11 and the deepspeed.sh part of 12):

* case 6: one run per output_dir (pretrain/run_lock.py): a live holder refuses a second run (unit: a holder
  process; end to end: a second 2-rank torchrun exits 2 on every rank, naming the first run's PID and host),
  a dead holder's lock is taken over, and without flock the recorded holder decides;
* case 7: SIGKILL of torchrun alone (not its tree) ends the workers within seconds (PR_SET_PDEATHSIG + a
  parent watch thread); before, they trained on in their own sessions;
* case 11: on_nonfinite=skip stops after max_consecutive_skips NaN steps in a row, naming the step range,
  without saving (exit 3 through pretrain/__main__.py);
* case 12: launch/deepspeed.sh exits with the workers' code (2 for a bad config).
"""
import errno
import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from helpers import REPO
from helpers.procs import Proc, launch_env
from helpers.workspace import make_workspace, run_overrides, tiny_config
from vffn_megatron.device import torchrun_command

START_TIMEOUT = 300  # imports + process group + first steps of 2 ranks on a busy 2-core machine
HOLD = ("import sys, time; from pretrain.run_lock import acquire; acquire(sys.argv[1:]); "
        "print('held', flush=True); time.sleep(600)")


@pytest.fixture(scope="module")
def ws(tmp_path_factory):
    return make_workspace(tmp_path_factory.mktemp("safety_ws"))


def _long_run(ws, out: Path) -> list[str]:
    return ["--config", str(REPO / "configs" / "tiny.yaml"),
            *run_overrides(ws, out, schedule__train_steps=500, checkpoint__interval=0)]


# ------------------------------------------------------------------------------------ case 6: the lock
def test_lock_refuses_a_live_holder_and_takes_over_a_dead_one(tmp_path):
    from pretrain.run_lock import OutputDirLocked, acquire

    out = tmp_path / "run"
    with Proc([sys.executable, "-c", HOLD, str(out)], tmp_path / "holder.txt") as holder:
        holder.wait_for("held", timeout=60)
        with pytest.raises(OutputDirLocked) as e:
            acquire([str(out)])
        msg = str(e.value)
        assert f"PID {holder.p.pid} on host {socket.gethostname()}" in msg, msg
        assert "output_dir=" in msg and str(out / ".lock") in msg, msg
        holder.signal(signal.SIGKILL)  # dies holding it: the kernel drops the flock, the record stays
        holder.p.wait()
    assert json.loads((out / ".lock").read_text())["pid"] == holder.p.pid
    lock, notices = acquire([str(out)])
    assert len(notices) == 1 and "no longer running" in notices[0] and str(holder.p.pid) in notices[0], notices
    assert json.loads((out / ".lock").read_text())["pid"] == os.getpid()
    lock.release()
    assert (out / ".lock").read_text() == ""  # a clean exit leaves no holder behind
    lock, notices = acquire([str(out)])
    assert notices == []
    lock.release()


def test_lock_without_flock_trusts_the_record(tmp_path, monkeypatch):
    """A filesystem without flock: same host + dead PID -> taken over; a live PID or another host -> refused."""
    import fcntl

    from pretrain import run_lock

    def no_flock(fd, op):
        raise OSError(errno.ENOLCK, "No locks available")

    monkeypatch.setattr(fcntl, "flock", no_flock)
    out = tmp_path / "nfs"
    out.mkdir()
    lock_file = out / ".lock"
    sleeper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"])
    try:
        host = socket.gethostname()
        live = {"pid": sleeper.pid, "host": host, "start_time": run_lock._process_start(sleeper.pid)}
        lock_file.write_text(json.dumps(live))
        with pytest.raises(run_lock.OutputDirLocked, match="is still running"):
            run_lock.acquire([str(out)])
        lock_file.write_text(json.dumps({**live, "host": "elsewhere"}))
        with pytest.raises(run_lock.OutputDirLocked, match=r"another host.*delete .*\.lock"):
            run_lock.acquire([str(out)])
        # the recorded PID now belongs to a younger process: reused, not the holder
        lock_file.write_text(json.dumps({**live, "start_time": live["start_time"] - 3600}))
        lock, notices = run_lock.acquire([str(out)])
        assert notices and "no longer running" in notices[0]
        lock.release()
    finally:
        sleeper.kill()
        sleeper.wait()
    lock_file.write_text(json.dumps({**live}))  # the sleeper is gone now
    lock, notices = run_lock.acquire([str(out)])
    assert notices and json.loads(lock_file.read_text())["pid"] == os.getpid()
    lock.release()


def test_lock_run_only_global_rank_0_locks(tmp_path, monkeypatch):
    from pretrain.run_lock import lock_run

    cfg = tiny_config(f"output_dir={tmp_path / 'r'}")
    monkeypatch.setenv("RANK", "1")
    assert lock_run(cfg) is None and not (tmp_path / "r" / ".lock").exists()  # never touches it, never blocks
    monkeypatch.setenv("RANK", "0")
    with Proc([sys.executable, "-c", HOLD, str(tmp_path / "r")], tmp_path / "holder.txt") as holder:
        holder.wait_for("held", timeout=60)
        refusal = lock_run(cfg)
    assert refusal and f"PID {holder.p.pid}" in refusal, refusal


def test_lock_covers_a_checkpoint_dir_outside_output_dir(tmp_path):
    from pretrain.run_lock import lock_dirs

    inside = tiny_config(f"output_dir={tmp_path / 'a'}")
    assert lock_dirs(inside) == [os.path.realpath(tmp_path / "a")]
    outside = tiny_config(f"output_dir={tmp_path / 'a'}", f"checkpoint.dir={tmp_path / 'ck'}")
    assert lock_dirs(outside) == [os.path.realpath(tmp_path / "a"), os.path.realpath(tmp_path / "ck")]


def _wait_gone(pids, timeout):
    import psutil

    end = time.time() + timeout
    while time.time() < end:
        alive = [p for p in pids if psutil.pid_exists(p) and psutil.Process(p).status() != psutil.STATUS_ZOMBIE]
        if not alive:
            return []
        time.sleep(0.5)
    return alive


def test_second_run_refused_then_workers_die_with_their_launcher(ws, tmp_path):
    """Case 6 end to end (a second 2-rank run into a live run's output_dir exits 2 on every rank, through
    launch/torchrun.sh, naming the holder) and case 7 (SIGKILL of the first torchrun alone ends its workers)."""
    import psutil

    out = tmp_path / "run"
    with Proc(torchrun_command(2, ["-m", "pretrain", *_long_run(ws, out)]), tmp_path / "first.txt") as first:
        first.wait_for("step 2/", timeout=START_TIMEOUT)
        holder = json.loads((out / ".lock").read_text())
        workers = [p.pid for p in first.tree()[1:] if "pretrain" in " ".join(p.cmdline())]
        assert holder["pid"] in workers, (holder, workers)
        env = launch_env(PYTHON=sys.executable, NPROC_PER_NODE="2")
        with Proc(["bash", str(REPO / "launch" / "torchrun.sh"), *_long_run(ws, out)], tmp_path / "second.txt",
                  env) as second:
            rc = second.wait(START_TIMEOUT)
            log = second.output()
        assert rc == 2, f"the second run was not refused (exit {rc}):\n{log[-6000:]}"
        assert f"in use by another run: PID {holder['pid']} on host {holder['host']}" in log, log[-4000:]
        assert "the workers' own exit codes (ranks 0-1): 2 2; exiting 2" in log, log[-4000:]  # every rank refused
        assert "step 1/" not in log
        # case 7: the launcher dies without a chance to stop its workers (they run in their own sessions)
        assert len(workers) == 2, workers
        t0 = time.time()
        os.kill(first.p.pid, signal.SIGKILL)
        first.p.wait()
        alive = _wait_gone(workers, timeout=15)
        took = time.time() - t0
        assert not alive, f"workers {alive} still running 15 s after their torchrun was SIGKILLed"
        print(f"workers gone {took:.1f} s after SIGKILL of torchrun")
    assert not any(psutil.pid_exists(p) and psutil.Process(p).status() != psutil.STATUS_ZOMBIE for p in workers)
    # the lock died with them: the folder is free for the relaunch (once the kernel has torn down the
    # last thread of the killed rank 0: its main thread shows as a zombie a moment earlier)
    from pretrain.run_lock import OutputDirLocked, acquire

    end = time.time() + 10
    while True:
        try:
            lock, notices = acquire([str(out)])
            break
        except OutputDirLocked:
            if time.time() > end:
                raise
            time.sleep(0.2)
    assert notices and str(holder["pid"]) in notices[0]
    lock.release()


# ------------------------------------------------------------------------------------ case 11
def test_max_consecutive_skips_validated():
    from pretrain.config import ConfigError, validate

    assert tiny_config().max_consecutive_skips == 10
    for bad in (0, -1):
        with pytest.raises(ConfigError, match="max_consecutive_skips must be an integer >= 1"):
            validate(tiny_config(f"max_consecutive_skips={bad}"))


def test_skip_mode_stops_after_max_consecutive_skips(ws, tmp_path):
    (tmp_path / "ws.json").write_text(json.dumps(ws))
    out = tmp_path / "diverging"
    script = str(REPO / "tests" / "scripts" / "pretrain_skip_limit.py")
    proc = subprocess.run([sys.executable, script, str(tmp_path / "ws.json"), str(out), "3"], cwd=REPO,
                          env=launch_env(), capture_output=True, text=True, timeout=300)
    log = proc.stdout + proc.stderr
    m = re.search(r"RESULT (.*)", log)
    assert m, log[-6000:]
    msg = m.group(1)
    assert msg.startswith("NonFiniteLossError"), f"the diverging run did not stop: {msg}"
    assert "3 consecutive steps (2-4; max_consecutive_skips=3)" in msg and "Lower optimizer.lr" in msg, msg
    assert not (out / "checkpoints" / "latest").exists(), "a diverged model was saved"
    losses = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert max(r["step"] for r in losses if "step" in r) == 3  # stopped at step 4, before recording it


# ------------------------------------------------------------------------------------ case 12: deepspeed.sh
@pytest.mark.slow
def test_deepspeed_sh_exits_with_the_workers_code_for_a_bad_config(ws, tmp_path):
    tmp = tmp_path / "tmp"
    tmp.mkdir()
    env = launch_env(PYTHON=sys.executable, NUM_GPUS="2", TMPDIR=str(tmp))
    args = [*_long_run(ws, tmp_path / "bad"), "schedule.train_stepz=5"]  # misspelled key
    with Proc(["bash", str(REPO / "launch" / "deepspeed.sh"), *args], tmp_path / "log.txt", env) as p:
        rc = p.wait(START_TIMEOUT)
        log = p.output()
    assert rc == 2, f"expected the workers' exit code 2 (bad config), got {rc}:\n{log[-6000:]}"
    assert "config error" in log and "train_stepz" in log
    assert not list(tmp.glob("vffn-exit.*")), "the temporary status directory was not removed"


@pytest.mark.slow
def test_deepspeed_sh_sigterm_saves_and_exits_0(ws, tmp_path):
    """The deepspeed launcher exits 1 after a signal (and, signalled itself on one node, dies at once and leaves
    its local launcher and the workers running): the script signals the local launcher and passes on the
    workers' 0 after their save."""
    out = tmp_path / "run"
    env = launch_env(PYTHON=sys.executable, NUM_GPUS="2")
    with Proc(["bash", str(REPO / "launch" / "deepspeed.sh"), *_long_run(ws, out)], tmp_path / "log.txt", env) as p:
        p.wait_for("step 3/", timeout=START_TIMEOUT)
        p.signal(signal.SIGTERM)  # the script only
        rc = p.wait(120)
        log = p.output()
    import psutil

    left = [q.pid for q in psutil.process_iter(["cmdline"]) if str(out) in " ".join(q.info["cmdline"] or [])]
    assert not left, f"processes left behind: {left}"
    assert rc == 0, f"launch/deepspeed.sh exited {rc} after a clean save:\n{log[-6000:]}"
    m = re.search(r"stop signal received: saving at step (\d+)", log)
    assert m, log[-6000:]
    assert (out / "checkpoints" / "latest").read_text().strip() == f"step_{int(m.group(1)):08d}"
    assert re.search(r"the deepspeed launcher exited \d+; the workers' own exit codes \(ranks 0-1\): 0 0; "
                     r"exiting 0", log), log[-4000:]
