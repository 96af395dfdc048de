"""Lost hosts: notice within a bounded time that another rank is gone, name it and its host, end this rank.

What a lost host does to the collectives (measured with gloo across two network namespaces):

* a killed host closes its sockets: the survivors' next collective fails at once ("Read error
  [10.231.0.2]:48291: Connection reset by peer"); :meth:`PeerWatch.on_error` names the ranks at that address;
* a dropped link (or a frozen host) closes nothing: collectives block until the process-group timeout
  (``parallel.timeout_minutes``, 30 by default). The heartbeat bounds that: a thread on every rank bumps its
  counter in the job's TCP store (the launcher's, at MASTER_ADDR:MASTER_PORT, on a connection of its own)
  every ``heartbeat_interval_seconds``; global rank 0 reads all counters, and a rank whose counter stood still
  for ``heartbeat_timeout_seconds`` is lost; a rank whose store calls failed that long has lost the store's
  host (rank 0's). The verdict goes to the store for the other ranks to read, is printed, and the rank exits
  with EXIT_PEER_LOST at once (its main thread may be blocked in a collective that never returns).

Costs: one all_gather_object of the hosts at start; no per-step collective; per interval two small store
requests per rank (rank 0: one multi_get of every counter). A rank that leaves normally marks itself done
first (:meth:`PeerWatch.stop`), so finishing at different moments is not a loss.
"""
from __future__ import annotations

import datetime
import os
import re
import socket
import sys
import threading
import time
from typing import Optional

import torch.distributed as dist

from . import exit_status
from .checkpoint import read_latest, step_of
from .config import RunConfig

_PEER_ADDRESS = re.compile(r"\[([0-9A-Fa-f.:]+)\]:\d+")  # gloo: "Read error [10.231.0.2]:48291: ..."
_COMM_ERROR = re.compile(r"gloo|nccl|connection|socket|timed out|timeout|peer|broken pipe", re.IGNORECASE)


def this_host() -> tuple[str, str]:
    """(hostname, the address the other hosts reach this one at: the route to MASTER_ADDR)."""
    from vffn_megatron.device import route_to

    name = socket.gethostname()
    try:
        return name, route_to(socket.gethostbyname(os.environ.get("MASTER_ADDR", "127.0.0.1")))[0]
    except OSError:
        return name, name


def _first_sentence(text: str) -> str:
    """'Read error [10.0.0.2]:4810: Connection reset by peer' out of gloo's '[.../pair.cc:537] Read error ...
    by peer. This is typically caused by ... GLHF!'."""
    line = re.sub(r"^\[[^\]]*:\d+\]\s*", "", text.strip().splitlines()[0] if text.strip() else "")
    return line.split(". ")[0][:300]


class PeerWatch:
    """See the module docstring. ``step`` (completed updates) is set by the training loop for the message."""

    def __init__(self, cfg: RunConfig, rank: int, hosts: list[tuple[str, str]]):
        self.cfg, self.rank, self.hosts = cfg, rank, hosts
        self.every = cfg.parallel.heartbeat_interval_seconds
        self.deadline = cfg.parallel.heartbeat_timeout_seconds
        self.step = 0
        prefix = f"vffn_peers/{os.environ.get('TORCHELASTIC_RESTART_COUNT', '0')}/"  # fresh keys per attempt
        self._beat, self._done, self._lost = prefix + "beat/", prefix + "done/", prefix + "lost"
        self._stopping = threading.Event()
        self._wake = threading.Event()  # the pinger's sleep, cut short by stop() and fail()
        self._fail_lock = threading.Lock()
        self._verdict: Optional[str] = None  # this rank's own verdict, for the store
        self._published = threading.Event()
        self._remote: Optional[str] = None  # a verdict another rank put in the store ("rank 0 (host ...) lost ...")
        self._last_ok = time.monotonic()  # last store call that succeeded
        self._seen: dict[int, tuple[bytes, float]] = {}  # rank 0: counter value, when it last changed
        self._finished: set[int] = set()  # rank 0: ranks that left normally
        self._threads: list[threading.Thread] = []

    @classmethod
    def start(cls, cfg: RunConfig) -> "PeerWatch":
        """Every rank, at the same point (one all_gather_object of the hosts). The heartbeat runs with
        several ranks, ``parallel.heartbeat_timeout_seconds`` > 0 and the launcher's store in the environment
        (MASTER_ADDR / MASTER_PORT: every launcher here sets them)."""
        world = dist.get_world_size()
        hosts: list = [None] * world
        if world > 1:
            dist.all_gather_object(hosts, this_host())
        watch = cls(cfg, dist.get_rank(), hosts)
        if world > 1 and watch.deadline > 0 and os.environ.get("MASTER_ADDR") and os.environ.get("MASTER_PORT"):
            for target, name in ((watch._ping, "vffn-heartbeat"), (watch._judge, "vffn-peer-judge")):
                t = threading.Thread(target=target, name=name, daemon=True)
                t.start()
                watch._threads.append(t)
        return watch

    def stop(self) -> None:
        """Leaving normally (or with an error every rank agreed on): mark this rank done, stop both threads.
        Never blocks longer than two intervals (the store may be unreachable)."""
        self._stopping.set()
        self._wake.set()
        for t in self._threads:
            t.join(timeout=2 * self.every + 1)

    # ------------------------------------------------------------------------------------------ threads
    def _ping(self) -> None:
        store = None
        others = [r for r in range(len(self.hosts)) if r != self.rank]
        while True:
            try:
                if store is None:  # a failed call may leave the connection unusable: reconnect
                    store = dist.TCPStore(os.environ["MASTER_ADDR"], int(os.environ["MASTER_PORT"]), is_master=False,
                                          timeout=datetime.timedelta(seconds=self.deadline), wait_for_workers=False)
                    if self.rank == 0:
                        for r in others:  # every counter exists from now on: multi_get never waits
                            store.add(f"{self._beat}{r}", 0)
                if self._verdict is not None:
                    if self._verdict != self._remote:  # our own: the others relay it
                        store.set(self._lost, f"{self._me()} {self._verdict}")
                    self._published.set()
                    return
                if self._stopping.is_set():
                    store.set(f"{self._done}{self.rank}", "1")
                    return
                store.add(f"{self._beat}{self.rank}", 1)
                if self.rank == 0:
                    self._read_counters(store, others)
                elif store.check([self._lost]):
                    self._remote = store.get(self._lost).decode(errors="replace")
                self._last_ok = time.monotonic()
            except Exception:  # noqa: BLE001 - unreachable / closed store: the judge decides when it is too long
                store = None
            self._wake.wait(self.every)
            self._wake.clear()

    def _read_counters(self, store, others: list[int]) -> None:
        now = time.monotonic()
        for r, value in zip(others, store.multi_get([f"{self._beat}{r}" for r in others])):
            if self._seen.get(r, (None,))[0] != value:
                self._seen[r] = (value, now)
            elif r not in self._finished and now - self._seen[r][1] > self.every \
                    and store.check([f"{self._done}{r}"]):
                self._finished.add(r)

    def _judge(self) -> None:
        while not self._stopping.wait(self.every):
            verdict = self._decide(time.monotonic())
            if verdict is not None:
                self.fail(verdict)

    def _decide(self, now: float) -> Optional[str]:
        if self._remote is not None:
            return self._remote
        silent = now - self._last_ok
        if silent > self.deadline:
            store = f"{os.environ.get('MASTER_ADDR')}:{os.environ.get('MASTER_PORT')}"
            return (f"lost contact with {self._describe([0])}: the job's TCP store at {store} (on that host) has "
                    f"not answered for {silent:.0f} s (parallel.heartbeat_timeout_seconds={self.deadline:g})")
        if self.rank == 0:
            lost = [r for r, (_, t) in sorted(self._seen.items())
                    if r not in self._finished and now - t > self.deadline]
            if lost:
                return (f"lost contact with {self._describe(lost)}: no heartbeat for {self.deadline:g} s "
                        f"(parallel.heartbeat_timeout_seconds)")
        return None

    # ------------------------------------------------------------------------------------------ verdicts
    def on_error(self, error: BaseException) -> None:
        """A collective failed in the main thread. When the error names a peer's address (gloo), that host's
        ranks are lost: :meth:`fail`. When it only looks like a communication failure (NCCL says no address),
        wait for the heartbeat's verdict (which ends the process) up to its deadline. Otherwise, or without a
        verdict, return: the caller re-raises."""
        text = str(error)
        if not (isinstance(error, dist.DistError) or _COMM_ERROR.search(text)):
            return
        for address in _PEER_ADDRESS.findall(text):
            ranks = [r for r, (_, a) in enumerate(self.hosts) if a == address and r != self.rank]
            if ranks:
                self.fail(f"lost contact with {self._describe(ranks)}: {_first_sentence(text)}")
        if self._threads:
            for t in self._threads:
                t.join(timeout=self.deadline + 2 * self.every)

    def fail(self, verdict: str) -> None:
        """Print the verdict with what to do, record EXIT_PEER_LOST for the launcher and exit now: no cleanup
        (a collective could block it; an unfinished checkpoint never becomes ``latest``)."""
        with self._fail_lock:  # the judge and the main thread may both get here: the first one speaks
            self._verdict = verdict
            self._wake.set()
            if self.rank == 0 and self._threads:  # let the other ranks read it from the store
                self._published.wait(timeout=min(self.deadline, 5.0))
            print(f"error: {self._me()} after step {self.step}: {verdict}. "
                  f"{self._checkpoint_note()}. Check that host and the network between the hosts, then start the "
                  f"job again on every host with the same command: it resumes from that checkpoint "
                  f"(exit code {exit_status.EXIT_PEER_LOST})", file=sys.stderr, flush=True)
            exit_status.write(exit_status.EXIT_PEER_LOST)
            os._exit(exit_status.EXIT_PEER_LOST)

    def _me(self) -> str:
        name, address = self.hosts[self.rank] if self.hosts[self.rank] else this_host()
        return f"rank {self.rank} (host {name} at {address})"

    def _describe(self, ranks: list[int]) -> str:
        """'rank 1 (host n1 at 10.0.0.2)' / 'ranks 2-3 (host n2 at 10.0.0.3)', grouped by host."""
        by_host: dict[tuple, list[int]] = {}
        for r in ranks:
            by_host.setdefault(tuple(self.hosts[r]), []).append(r)
        parts = []
        for (name, address), rs in by_host.items():
            span = f"rank {rs[0]}" if len(rs) == 1 else (
                f"ranks {rs[0]}-{rs[-1]}" if rs == list(range(rs[0], rs[-1] + 1)) else f"ranks {', '.join(map(str, rs))}")
            parts.append(f"{span} (host {name} at {address})")
        return "; ".join(parts)

    def _checkpoint_note(self) -> str:
        folder = os.path.abspath(self.cfg.checkpoint_dir)
        tag = read_latest(folder)
        if tag is None:
            return f"No checkpoint was saved yet in {folder} (a restart begins at step 0)"
        return f"The last complete checkpoint is {os.path.join(folder, tag)} (step {step_of(tag)})"
