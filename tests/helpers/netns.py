"""Two "hosts" on this machine: network namespaces joined by a veth pair, each with its own address.

Both share this machine's filesystem (like a cluster's shared file system); only the network is separate, so a
run across them talks over a real (virtual) link that a test can cut (``ip link set <veth> down``) or lose a
host on (SIGKILL to one namespace's processes). Needs root and ``ip netns``: :func:`skip_reason` says why not.
"""
from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import sys
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

SUBNET = "10.231.0"  # host i gets SUBNET.(i + 1)/24; namespaces have their own stacks, so runs never clash


@dataclass(frozen=True)
class Host:
    netns: str  # namespace name (unique per run)
    veth: str  # this host's end of the link
    address: str  # its IPv4 address

    def command(self, cmd: list[str]) -> list[str]:
        """``cmd`` run inside this host's namespace (``ip netns exec`` execs it: the PID is cmd's own)."""
        return ["ip", "netns", "exec", self.netns, *cmd]

    def set_link(self, up: bool) -> None:
        _ip("-n", self.netns, "link", "set", self.veth, "up" if up else "down")


def _ip(*args: str) -> None:
    r = subprocess.run(["ip", *args], capture_output=True, text=True, timeout=30)
    if r.returncode:
        raise RuntimeError(f"ip {' '.join(args)} failed ({r.returncode}): {r.stderr.strip()}")


def skip_reason() -> str | None:
    """Why two namespaces cannot be made here (None when they can): not root, no ``ip``, or a sandbox (CI
    containers without CAP_SYS_ADMIN / CAP_NET_ADMIN) refusing ``ip netns add``."""
    if shutil.which("ip") is None:
        return "the `ip` tool (iproute2) is not installed"
    if os.geteuid() != 0:
        return "creating network namespaces needs root"
    name = f"vffn-probe-{uuid.uuid4().hex[:8]}"
    try:
        _ip("netns", "add", name)
    except (RuntimeError, OSError, subprocess.TimeoutExpired) as e:
        return f"`ip netns add` is not permitted here ({e})"
    try:
        _ip("netns", "del", name)
    except RuntimeError:
        pass
    return None


@contextlib.contextmanager
def two_hosts() -> Iterator[tuple[Host, Host]]:
    """Two namespaces ``vffn-<id>-0|1`` with veth ends ``vf<id>a|b`` (10.231.0.1, .2); always removed (processes
    still inside keep theirs alive until they exit: kill them first)."""
    tag = uuid.uuid4().hex[:8]
    hosts = tuple(Host(f"vffn-{tag}-{i}", f"vf{tag}{'ab'[i]}", f"{SUBNET}.{i + 1}") for i in range(2))
    made: list[str] = []
    try:
        for h in hosts:
            _ip("netns", "add", h.netns)
            made.append(h.netns)
        a, b = hosts
        _ip("link", "add", a.veth, "type", "veth", "peer", "name", b.veth)
        for h in hosts:
            _ip("link", "set", h.veth, "netns", h.netns)
            _ip("-n", h.netns, "addr", "add", f"{h.address}/24", "dev", h.veth)
            _ip("-n", h.netns, "link", "set", "lo", "up")
            h.set_link(True)
        yield a, b
    finally:
        for name in made:  # deleting a namespace removes the veth end inside it (and so the pair)
            with contextlib.suppress(RuntimeError, subprocess.TimeoutExpired):
                _ip("netns", "del", name)


def launch(hosts: tuple[Host, ...], args: list[str], logs: Path, tag: str, port: int = 29533) -> list:
    """One ``launch/torchrun.sh args`` per host inside its namespace (1 process each; host 0 is the master,
    at its own address), logs in ``logs/<tag>-host<i>.txt``: the Procs, always kill()ed by the caller."""
    from helpers import REPO
    from helpers.procs import Proc, launch_env

    procs = []
    try:
        for i, h in enumerate(hosts):
            env = launch_env(NNODES=str(len(hosts)), NODE_RANK=str(i), MASTER_ADDR=hosts[0].address,
                             MASTER_PORT=str(port), NPROC_PER_NODE="1", PYTHON=sys.executable)
            procs.append(Proc(h.command(["bash", str(REPO / "launch" / "torchrun.sh"), *args]),
                              logs / f"{tag}-host{i}.txt", env))
    except BaseException:
        for p in procs:
            p.kill()
        raise
    return procs
