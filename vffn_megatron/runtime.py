"""Process-group and megatron-core initialisation, device-agnostic (CUDA + NCCL, else CPU + gloo).

The device choice, free ports and the torchrun command line live in :mod:`vffn_megatron.device` (no
megatron import, usable from launchers); they are re-exported here.
"""
from __future__ import annotations

import datetime
import os
from typing import Iterator

import torch
import torch.distributed as dist

from . import cpu_compat
from .device import (backend, configure_environment, ds_accelerator, free_port, gloo_interface, torchrun_command,
                     use_cuda)

__all__ = ["backend", "configure_environment", "destroy", "device", "ds_accelerator", "free_port",
           "init_distributed", "init_megatron", "set_vffn_step", "torchrun_command", "use_cuda", "vffn_modules"]


def device() -> torch.device:
    """This rank's device: its current CUDA device, or the CPU."""
    if use_cuda():
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def init_distributed(timeout_minutes: int = 30) -> None:
    """Join the process group described by the launcher's env (torchrun / deepspeed / SLURM-wrapped).

    Without launcher variables a single-process group is created on an in-memory store, so tools and
    tests run with plain ``python``.
    """
    if dist.is_initialized():
        return
    cuda = use_cuda()
    timeout = datetime.timedelta(minutes=timeout_minutes)
    if "RANK" not in os.environ:
        # One process: an in-memory store, no TCP port (picking a "free" port races with other jobs that
        # start at the same moment). The variables are set for libraries that read them (DeepSpeed).
        os.environ.update(RANK="0", WORLD_SIZE="1", LOCAL_RANK="0", MASTER_ADDR="127.0.0.1")
        os.environ.setdefault("MASTER_PORT", str(free_port()))
        if cuda:
            torch.cuda.set_device(0)
        dist.init_process_group(backend=backend(), store=dist.HashStore(), rank=0, world_size=1, timeout=timeout)
        return
    if cuda:
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
    elif (ifname := gloo_interface()) is not None:
        os.environ["GLOO_SOCKET_IFNAME"] = ifname  # the route to MASTER_ADDR, not loopback (see gloo_interface)
    dist.init_process_group(backend=backend(), timeout=timeout)


def init_megatron(tensor_parallel_size: int = 1, seed: int = 1234) -> None:
    """megatron parallel_state + RNG tracker (with the CPU compatibility layer when there is no CUDA)."""
    from megatron.core import parallel_state, tensor_parallel

    init_distributed()
    if not parallel_state.model_parallel_is_initialized():
        world = dist.get_world_size()
        if world % tensor_parallel_size:
            raise ValueError(f"world size {world} is not divisible by tensor_model_parallel_size "
                             f"{tensor_parallel_size}")
        parallel_state.initialize_model_parallel(tensor_model_parallel_size=tensor_parallel_size)
    cpu_compat.apply()  # no-op with CUDA
    torch.manual_seed(seed)
    tensor_parallel.model_parallel_cuda_manual_seed(seed)


def destroy() -> None:
    from megatron.core import parallel_state

    if parallel_state.model_parallel_is_initialized():
        parallel_state.destroy_model_parallel()
    if dist.is_initialized():
        dist.destroy_process_group()


def vffn_modules(model: torch.nn.Module) -> Iterator:
    from .versatile_ffn import VersatileFFN

    return (m for m in model.modules() if isinstance(m, VersatileFFN))


def set_vffn_step(model: torch.nn.Module, step: int, seed: int | None = None) -> None:
    """Tell every VersatileFFN block the global step (Gumbel temperature and noise) before a train step,
    with megatron's data-parallel rank and size (which number the micro-batches in the noise; 0 / 1 before
    ``init_megatron``)."""
    from megatron.core import parallel_state

    if parallel_state.model_parallel_is_initialized():
        dp_rank, dp_size = parallel_state.get_data_parallel_rank(), parallel_state.get_data_parallel_world_size()
    else:
        dp_rank, dp_size = 0, 1
    for m in vffn_modules(model):
        m.set_step(step, seed, dp_rank=dp_rank, dp_size=dp_size)
