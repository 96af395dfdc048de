"""The peer watch (pretrain/peers.py): its settings, its verdicts, and a frozen rank on one host.

The two-host network cases (killed host, dropped link, restart) are in test_network_two_hosts.py (slow, root).
Here a rank frozen with SIGSTOP stands in for a dropped link where namespaces cannot be made: its sockets stay
open, so gloo reports nothing and only the heartbeat can notice.
"""
import re
import signal
import time

import psutil
import pytest

from helpers import REPO
from helpers.procs import Proc, launch_env
from helpers.workspace import make_workspace, run_overrides, tiny_config
from pretrain.config import ConfigError, validate
from pretrain.peers import PeerWatch, _first_sentence

GLOO_RESET = ("[/__w/pytorch/pytorch/third_party/gloo/gloo/transport/tcp/pair.cc:537] Read error "
              "[10.0.0.2]:48291: Connection reset by peer. This is typically caused by a remote worker hanging or "
              "bugs in the application. Check the logs of the remote worker before reporting an error. GLHF!")


@pytest.mark.parametrize("over, msg", [
    (["parallel.heartbeat_interval_seconds=0"], "heartbeat_interval_seconds must be a number > 0"),
    (["parallel.heartbeat_timeout_seconds=1"], "at least twice parallel.heartbeat_interval_seconds (5.0)"),
    (["parallel.heartbeat_timeout_seconds=2000"], "longer than parallel.timeout_minutes (30 min)"),
])
def test_heartbeat_settings_validated(over, msg):
    with pytest.raises(ConfigError) as e:
        validate(tiny_config(*over))
    assert msg in str(e.value)


def test_heartbeat_disabled_or_fractional_is_valid():
    validate(tiny_config("parallel.heartbeat_timeout_seconds=0"))
    validate(tiny_config("parallel.heartbeat_interval_seconds=0.25", "parallel.heartbeat_timeout_seconds=0.5"))


def _watch(rank: int, tmp_path) -> PeerWatch:
    cfg = tiny_config(f"output_dir={tmp_path}", "parallel.heartbeat_interval_seconds=1",
                      "parallel.heartbeat_timeout_seconds=10")
    hosts = [("n0", "10.0.0.1"), ("n1", "10.0.0.2"), ("n1", "10.0.0.2"), ("n2", "10.0.0.3")]
    return PeerWatch(cfg, rank, hosts)


def test_rank0_names_silent_ranks_by_host_and_ignores_finished_ones(tmp_path):
    w = _watch(0, tmp_path)
    now = w._last_ok
    w._seen = {1: (b"7", now - 11), 2: (b"7", now - 12), 3: (b"9", now - 11)}
    w._finished = {3}  # left normally: marked done in the store
    assert w._decide(now) == ("lost contact with ranks 1-2 (host n1 at 10.0.0.2): no heartbeat for 10 s "
                              "(parallel.heartbeat_timeout_seconds)")
    w._seen[1] = w._seen[2] = (b"8", now - 3)
    assert w._decide(now) is None


def test_other_ranks_name_the_store_host_or_relay_rank0s_verdict(tmp_path, monkeypatch):
    monkeypatch.setenv("MASTER_ADDR", "10.0.0.1")
    monkeypatch.setenv("MASTER_PORT", "6000")
    w = _watch(3, tmp_path)
    assert w._decide(w._last_ok + 9) is None
    verdict = w._decide(w._last_ok + 11)
    assert verdict.startswith("lost contact with rank 0 (host n0 at 10.0.0.1): the job's TCP store at "
                              "10.0.0.1:6000 (on that host) has not answered for 11 s")
    w._remote = "rank 0 (host n0 at 10.0.0.1) lost contact with rank 1 (host n1 at 10.0.0.2): no heartbeat for 10 s"
    assert w._decide(w._last_ok) == w._remote  # relayed as it is: it names who saw what


def test_gloo_error_reduced_to_its_first_sentence():
    assert _first_sentence(GLOO_RESET) == "Read error [10.0.0.2]:48291: Connection reset by peer"


def test_unrelated_error_is_left_alone(tmp_path):
    w = _watch(0, tmp_path)
    w.on_error(ValueError("bad shape"))  # returns: the caller re-raises (no threads, nothing to wait for)


def test_frozen_rank_detected_by_heartbeat(tmp_path):
    """SIGSTOP rank 1 after the step-3 checkpoint: rank 0's collective waits (no socket closes) until the
    heartbeat deadline (5 s, as in the network tests: 0.25 s / 2 s once false-alarmed during start-up on this
    2-core machine under a load average of ~10), then rank 0 exits 5 naming rank 1 and that checkpoint."""
    ws = make_workspace(tmp_path / "ws")
    out = tmp_path / "run"
    status = tmp_path / "status"
    args = ["--config", str(REPO / "configs" / "tiny.yaml"),
            *run_overrides(ws, out, schedule__train_steps=200, checkpoint__interval=3,
                           parallel__heartbeat_interval_seconds=0.5, parallel__heartbeat_timeout_seconds=5)]
    env = launch_env(NPROC_PER_NODE="2", SHUTDOWN_TIMEOUT="2", VFFN_EXIT_STATUS_DIR=str(status))
    with Proc(["bash", str(REPO / "launch" / "torchrun.sh"), *args], tmp_path / "log.txt", env) as p:
        p.wait_for("checkpoints/step_00000003", timeout=240)
        rank1 = [q for q in p.tree() if "pretrain" in " ".join(q.cmdline()) and q.environ().get("RANK") == "1"]
        assert len(rank1) == 1, [q.cmdline() for q in p.tree()]
        t0 = time.monotonic()
        rank1[0].send_signal(signal.SIGSTOP)
        p.wait_for("lost contact with rank 1", timeout=30)
        detected = time.monotonic() - t0
        end = time.monotonic() + 10
        while not (status / "rank_0.exit").exists() and time.monotonic() < end:
            time.sleep(0.1)
        log = p.output()
        try:
            rank1[0].send_signal(signal.SIGKILL)
        except psutil.NoSuchProcess:
            pass
    print(f"frozen rank detected after {detected:.1f} s")
    assert 4 <= detected < 15, detected  # the last beat came up to two intervals before the stop
    m = re.search(r"error: rank 0 \(host \S+ at 127\.0\.0\.1\) after step \d+: lost contact with rank 1 \(host \S+ at "
                  r"127\.0\.0\.1\): no heartbeat for 5 s .*The last complete checkpoint is \S+step_(\d+) \(step \d+\)",
                  log)
    assert m, log[-4000:]
    assert (status / "rank_0.exit").read_text().strip() == "5"
