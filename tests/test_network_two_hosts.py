"""Two hosts over a real (virtual) network, and losing one (issue 16, item 2).

Each "host" is a network namespace with its own address (10.231.0.1 / .2, a veth pair between them) running
its own ``launch/torchrun.sh`` (1 process, gloo, fp32); both share this machine's file system like a cluster's
shared FS. Needs root and ``ip netns`` (skipped with the reason otherwise). ``make test-network`` runs them.

* (a) the two-host losses equal the one-host 2-process run's, bit for bit (tolerance 0: the same ranks, the
  same reduction order; only the transport differs);
* (b) SIGKILL of one host's processes: the other exits 5 within seconds, naming the lost rank and host and the
  last complete checkpoint; (c) its link cut (``ip link set <veth> down``, no socket closes): both sides exit
  5 once the heartbeat deadline passes; (d) after either, both hosts started again resume from that checkpoint
  and their losses equal the uninterrupted run's, again bit for bit.
"""
import re
import time
from pathlib import Path

import pytest

from helpers import REPO
from helpers.netns import launch, skip_reason, two_hosts
from helpers.procs import run_ok
from helpers.workspace import assert_same_losses, make_workspace, read_losses, run_overrides
from vffn_megatron.device import torchrun_command

pytestmark = pytest.mark.slow

STEPS = 30
TIMEOUT = 300
# Tuned for the test: a heartbeat every 0.5 s, a rank silent for 5 s is lost (defaults: 5 s / 60 s).
HEARTBEAT = {"parallel__heartbeat_interval_seconds": 0.5, "parallel__heartbeat_timeout_seconds": 5}
DEADLINE = 5


def _args(ws, out: Path) -> list[str]:
    return ["--config", str(REPO / "configs" / "tiny.yaml"),
            *run_overrides(ws, out, schedule__train_steps=STEPS, checkpoint__interval=3, checkpoint__keep_last=2,
                           checkpoint__save_at_end=True, **HEARTBEAT)]


@pytest.fixture(scope="module")
def ws(tmp_path_factory):
    """Every test's inputs, once namespaces are known to work (probed here, not at collection: `make test`
    never creates one)."""
    reason = skip_reason()
    if reason:
        pytest.skip(f"two network namespaces cannot be created: {reason}")
    return make_workspace(tmp_path_factory.mktemp("net_ws"))


@pytest.fixture(scope="module")
def reference(ws, tmp_path_factory):
    """The same run on one host, 2 processes."""
    out = tmp_path_factory.mktemp("net_reference")
    run_ok(torchrun_command(2, ["-m", "pretrain", *_args(ws, out)]), out / "log.txt", TIMEOUT)
    return read_losses(out)


def _run_both(hosts, args, logs: Path, tag: str) -> list[str]:
    procs = launch(hosts, args, logs, tag)
    try:
        codes = [p.wait(TIMEOUT) for p in procs]
        outs = [p.output() for p in procs]
    finally:
        for p in procs:
            p.kill()
    assert codes == [0, 0], "\n".join(o[-4000:] for o in outs)
    return outs


def _lost_message(out: str, me: int, lost: int, lost_address: str) -> re.Match:
    m = re.search(rf"error: rank {me} \(host \S+ at \S+\) after step (\d+): lost contact with rank {lost} "
                  rf"\(host \S+ at {re.escape(lost_address)}\): .*The last complete checkpoint is (\S+) \(step (\d+)\)"
                  r".*start the job again on every host", out)
    assert m, f"rank {me} did not name rank {lost} at {lost_address}:\n{out[-5000:]}"
    return m


def _restart_resumes(hosts, args, out_dir: Path, logs: Path, saved: int, reference: dict) -> None:
    """(d): both hosts started again resume from checkpoint ``saved`` and match the uninterrupted run."""
    outs = _run_both(hosts, args, logs, "restart")
    m = re.search(r"resumed from \S+ at step (\d+)", outs[0])
    assert m and int(m.group(1)) == saved, outs[0][-3000:]
    assert_same_losses(read_losses(out_dir), reference, range(saved + 1, STEPS + 1))


def test_two_hosts_match_one_host(ws, reference, tmp_path):
    """(a)"""
    out = tmp_path / "run"
    with two_hosts() as hosts:
        outs = _run_both(hosts, _args(ws, out), tmp_path, "run")
    assert_same_losses(read_losses(out), reference, range(1, STEPS + 1), "the one-host run")
    assert "lost contact" not in outs[0] + outs[1]  # finishing at different moments is no loss (heartbeat: done keys)


def _lose_host1(hosts, args, logs: Path, cut, survivors) -> tuple[list[int], list[float], list[str]]:
    """Start both hosts, ``cut(procs)`` after the step-6 checkpoint, then wait for the ``survivors``' launchers:
    (exit codes, seconds from the cut to each exit, outputs)."""
    procs = launch(hosts, args, logs, "first")
    try:
        procs[0].wait_for("checkpoints/step_00000006", TIMEOUT)
        t0 = time.monotonic()
        cut(procs)
        codes, times = [], []
        for i in survivors:
            codes.append(procs[i].wait(TIMEOUT))
            times.append(time.monotonic() - t0)
        return codes, times, [procs[i].output() for i in survivors]
    finally:
        for p in procs:
            p.kill()


def test_killed_host_is_named_then_restart_resumes(ws, reference, tmp_path):
    """(b) + (d): host 1 SIGKILLed after the step-6 checkpoint; host 0 exits 5 within seconds (gloo's
    'Connection reset by peer [10.231.0.2]' names it)."""
    out = tmp_path / "run"
    args = _args(ws, out)
    with two_hosts() as hosts:
        # the whole host: torchrun and its worker, SIGKILL
        (rc,), (detected,), (survivor,) = _lose_host1(hosts, args, tmp_path, lambda procs: procs[1].kill(), [0])
        print(f"kill detected after {detected:.1f} s")
        assert rc == 5, survivor[-4000:]
        assert detected < 15, f"host 0 took {detected:.1f} s to notice"
        m = _lost_message(survivor, 0, 1, hosts[1].address)
        saved = int(m.group(3))
        assert 6 <= saved < STEPS and (out / "checkpoints" / "latest").read_text().strip() == f"step_{saved:08d}"
        assert "the workers' own exit codes (ranks 0-0): 5; exiting 5" in survivor  # torchrun.sh passes it on
        _restart_resumes(hosts, args, out, tmp_path, saved, reference)


def test_dropped_link_detected_by_both_then_restart_resumes(ws, reference, tmp_path):
    """(c) + (d): host 1's link goes down (no socket closes: gloo would wait out parallel.timeout_minutes);
    the heartbeat ends both sides with exit 5 once DEADLINE has passed, each naming the other."""
    out = tmp_path / "run"
    args = _args(ws, out)
    with two_hosts() as hosts:
        codes, times, outs = _lose_host1(hosts, args, tmp_path, lambda procs: hosts[1].set_link(False), [0, 1])
        print(f"link drop detected after {times[0]:.1f} s (host 0), {times[1]:.1f} s (host 1)")
        assert codes == [5, 5], "\n".join(o[-4000:] for o in outs)
        assert all(DEADLINE - 1 <= t < DEADLINE + 15 for t in times), times  # last beat <= 2 intervals before the cut
        m = _lost_message(outs[0], 0, 1, hosts[1].address)
        assert "no heartbeat for 5 s" in m.group(0)
        assert "has not answered for" in _lost_message(outs[1], 1, 0, hosts[0].address).group(0)
        saved = int(m.group(3))
        hosts[1].set_link(True)
        _restart_resumes(hosts, args, out, tmp_path, saved, reference)
