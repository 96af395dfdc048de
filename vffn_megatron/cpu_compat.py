"""CPU compatibility for megatron-core 0.16.1.

megatron-core calls CUDA even at TP=1 with no GPU (measured on 0.16.1):
RoPE and attention buffers allocate on ``torch.cuda.current_device()``, attention forks megatron's CUDA RNG
tracker, ``tensor_parallel.checkpoint`` saves CUDA RNG states and ``dist_checkpointing.save`` calls
``torch.cuda.synchronize``, and the default causal mask is built with ``device="cuda"``. This module maps
exactly those calls onto the CPU.

It is **inert when CUDA is available** (:func:`vffn_megatron.device.use_cuda`): :func:`apply` returns False
and patches nothing, so the GPU path runs megatron-core unmodified. Call it after
``parallel_state.initialize_model_parallel`` and before ``tensor_parallel.model_parallel_cuda_manual_seed``
(see :func:`vffn_megatron.runtime.init_megatron`).
"""
from __future__ import annotations

import functools

import torch

from .device import use_cuda

_APPLIED = False


def _cpu_get_rng_state(*args, **kwargs) -> torch.Tensor:
    return torch.get_rng_state()


def _cpu_set_rng_state(state: torch.Tensor, *args, **kwargs) -> None:
    torch.set_rng_state(state.cpu() if state.device.type != "cpu" else state)


def _cpu_manual_seed(seed: int) -> None:
    torch.manual_seed(seed)


@functools.lru_cache(maxsize=8)
def _cpu_causal_mask(sq: int) -> torch.Tensor:
    return torch.triu(torch.ones(sq, sq, dtype=torch.bool), diagonal=1)


def apply() -> bool:
    """Patch the CUDA-only calls megatron-core makes; no-op (returns False) when CUDA is available."""
    global _APPLIED
    if use_cuda():
        return False
    if _APPLIED:
        return True
    from megatron.core.tensor_parallel import random as mrandom

    cpu = torch.device("cpu")
    # Device queries: RoPE's inv_freq, attention's GlobalMemoryBuffer and friends allocate here.
    torch.cuda.current_device = lambda: cpu  # type: ignore[assignment]
    torch.cuda.synchronize = lambda *a, **k: None  # type: ignore[assignment]
    # The "CUDA" generator megatron's RNG tracker forks becomes the CPU default generator, so the
    # tracker's default / tensor-parallel / expert states behave as they do on GPU.
    torch.cuda.manual_seed = _cpu_manual_seed  # type: ignore[assignment]
    torch.cuda.get_rng_state = _cpu_get_rng_state  # type: ignore[assignment]
    torch.cuda.set_rng_state = _cpu_set_rng_state  # type: ignore[assignment]
    torch.cuda.random.get_rng_state = _cpu_get_rng_state  # type: ignore[assignment]
    torch.cuda.random.set_rng_state = _cpu_set_rng_state  # type: ignore[assignment]
    mrandom._get_cuda_rng_state = _cpu_get_rng_state
    mrandom._set_cuda_rng_state = _cpu_set_rng_state
    # The causal mask used when no attention_mask is passed is built with device="cuda".
    from megatron.core.fusions import fused_softmax
    from megatron.core.transformer import utils as tutils

    fused_softmax.get_default_causal_mask = tutils.get_default_causal_mask = _cpu_causal_mask
    _APPLIED = True
    return True


def apply_te_absent_fixes() -> None:
    """megatron-core 0.16.1's MoE router references ``te_general_gemm`` even when Transformer Engine is not
    installed (NameError in ``RouterGatingLinearFunction``). Define it as None when missing; a no-op with TE."""
    from megatron.core.transformer.moe import moe_utils

    if not hasattr(moe_utils, "te_general_gemm"):
        moe_utils.te_general_gemm = None
