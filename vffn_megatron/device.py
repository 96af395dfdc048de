"""Every device and launch decision, in one place: CUDA or CPU, NCCL or gloo, DeepSpeed's accelerator,
a free port, the torchrun command line.

The rule: CUDA when ``torch.cuda.is_available()`` (DeepSpeed accelerator ``cuda``, backend NCCL), else CPU
(accelerator ``cpu``, backend gloo, megatron-core's CUDA-only calls mapped by :mod:`.cpu_compat`). A
``DS_ACCELERATOR`` the user set is kept as it is.

Light on purpose: no megatron (or DeepSpeed) import, and torch only inside the functions that need it, so
the shell launchers ask it cheaply (``python -m vffn_megatron.device --ds-accelerator``) and every Python
entry point calls :func:`configure_environment` before anything imports DeepSpeed (which reads
``DS_ACCELERATOR`` once, at import). :mod:`vffn_megatron.runtime` (process groups, megatron init) builds on
it; its ``device()`` is this rank's ``torch.device``.
"""
from __future__ import annotations

import argparse
import os
import sys
from typing import MutableMapping, Sequence

DEEPSPEED_DEFAULT_PORT = 29500  # often held by another job on a shared machine: never picked


def use_cuda() -> bool:
    """True when this process should run on CUDA: the only GPU probe in the project."""
    import torch

    return torch.cuda.is_available()


def backend() -> str:
    """torch.distributed backend: NCCL on CUDA, gloo on CPU."""
    return "nccl" if use_cuda() else "gloo"


def ds_accelerator(env: MutableMapping[str, str] | None = None) -> str:
    """DeepSpeed's accelerator name: the user's ``DS_ACCELERATOR`` if set, else ``cuda`` or ``cpu``."""
    env = os.environ if env is None else env
    return env.get("DS_ACCELERATOR") or ("cuda" if use_cuda() else "cpu")


def configure_environment(env: MutableMapping[str, str] | None = None) -> MutableMapping[str, str]:
    """Set ``DS_ACCELERATOR`` in ``env`` (default: this process's environment) unless the user set it.

    Call before DeepSpeed is imported: it then uses that accelerator without probing (on CPU its probe
    warns "unable to detect" a GPU). Returns ``env``.
    """
    env = os.environ if env is None else env
    env["DS_ACCELERATOR"] = ds_accelerator(env)
    return env


def local_device_count() -> int:
    """Processes per node a launcher starts by default: the GPUs, or 2 without one."""
    import torch

    return torch.cuda.device_count() if use_cuda() else 2


def free_port() -> int:
    """A free loopback port (never DeepSpeed's default 29500, which other jobs may hold)."""
    import socket

    while True:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        if port != DEEPSPEED_DEFAULT_PORT:
            return port


def torchrun_command(nproc: int, args: Sequence[str], port: int | None = None, nnodes: int = 1,
                     node_rank: int = 0, master_addr: str = "127.0.0.1",
                     python: str | None = None) -> list[str]:
    """argv of ``python -m torch.distributed.run`` (static rendezvous) running ``args`` (a script and its
    arguments, or ``-m module ...``) on ``nproc`` local processes; ``port`` defaults to a free one."""
    return [python or sys.executable, "-m", "torch.distributed.run", f"--nproc_per_node={nproc}",
            f"--nnodes={nnodes}", f"--node_rank={node_rank}", f"--master_addr={master_addr}",
            f"--master_port={port or free_port()}", *args]


def route_to(address: str) -> tuple[str, str | None]:
    """(this machine's address on the route to ``address``, the interface holding it, or None): what the
    other hosts of a multi-node job reach this one at. No packet is sent (a UDP connect only picks a route)."""
    import socket

    import psutil

    with socket.socket(socket.AF_INET6 if ":" in address else socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.connect((address, 9))
        local = s.getsockname()[0]
    names = [n for n, addrs in psutil.net_if_addrs().items() if any(a.address == local for a in addrs)]
    return local, names[0] if names else None


def gloo_interface(env: MutableMapping[str, str] | None = None) -> str | None:
    """The interface gloo should use when ``GLOO_SOCKET_IFNAME`` is unset: the one on the route to
    ``MASTER_ADDR``, when that is another host. gloo otherwise binds to the address this machine's hostname
    resolves to, and falls back to loopback when that is not local (Debian's ``127.0.1.1`` entry, a
    container, a network namespace): the other hosts are then told to connect to 127.0.0.1 and the job never
    starts ("Gloo connectFullMesh failed ... remote=[127.0.0.1]"). None: nothing to set."""
    env = os.environ if env is None else env
    master = env.get("MASTER_ADDR", "")
    if env.get("GLOO_SOCKET_IFNAME") or not master:
        return None
    import ipaddress
    import socket

    try:
        address = socket.gethostbyname(master)
        return None if ipaddress.ip_address(address).is_loopback else route_to(address)[1]
    except (OSError, ValueError):
        return None  # unresolvable / unroutable: init_process_group reports it with the address


_QUERIES = {  # command-line flag -> (answer, help)
    "--ds-accelerator": (ds_accelerator, "DeepSpeed accelerator: cuda|cpu (DS_ACCELERATOR if set)"),
    "--backend": (backend, "torch.distributed backend: nccl|gloo"),
    "--nproc": (local_device_count, "default processes per node: the GPUs, or 2 without one"),
    "--free-port": (free_port, "a free loopback TCP port (never 29500)"),
}


def main(argv: Sequence[str] | None = None) -> int:
    """For shell launchers: print the answers asked for, in that order, on one line (one torch import)."""
    p = argparse.ArgumentParser(prog="python -m vffn_megatron.device", description=main.__doc__)
    for flag, (fn, help_) in _QUERIES.items():
        p.add_argument(flag, dest="asked", action="append_const", const=fn, help=help_)
    asked = p.parse_args(argv).asked or [ds_accelerator]
    print(" ".join(str(fn()) for fn in asked))
    return 0


if __name__ == "__main__":
    sys.exit(main())
