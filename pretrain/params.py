"""Parameter counts of a run's model without allocating it: the model is built on the meta device.

The count is of the whole model (built at TP=1, whatever parallel.tensor_model_parallel_size says), for every
model.arch, so it is the figure a paper's table gives; ``python -m pretrain --check`` prints it.
"""
from __future__ import annotations

import contextlib
import dataclasses
from dataclasses import dataclass

from .config import RunConfig


@dataclass(frozen=True)
class ParamCount:
    total: int
    embedding: int  # input embedding + output layer (one matrix when tied)
    routed_experts: int = 0  # an MoE's routed experts (megatron's "experts"; the shared expert is not one)
    active_experts: int = 0  # of those, what one token uses: top_k / num_experts of them

    @property
    def non_embedding(self) -> int:
        return self.total - self.embedding

    @property
    def active(self) -> int:
        """Parameters one token's forward uses (MoE: all but the routed experts it is not sent to)."""
        return self.total - self.routed_experts + self.active_experts

    def describe(self) -> str:
        return (f"parameters: {_short(self.total)} total ({self.total:,}) = embedding {_short(self.embedding)} "
                f"({self.embedding:,}) + non-embedding {_short(self.non_embedding)} ({self.non_embedding:,})")


def _short(n: int) -> str:
    return f"{n / 1e9:.3f}B" if n >= 1e9 else f"{n / 1e6:.2f}M"


def _is_embedding(name: str) -> bool:
    return "word_embeddings" in name or name.startswith("output_layer")


@contextlib.contextmanager
def _megatron_tp1():
    """megatron's parallel state at TP=1: the caller's, or a one-process gloo group of our own for the build
    (no launcher variables are read: under torchrun, --check must not join the job's group)."""
    import torch.distributed as dist
    from megatron.core import parallel_state as ps

    from vffn_megatron import cpu_compat

    if ps.model_parallel_is_initialized():
        if ps.get_tensor_model_parallel_world_size() != 1:
            raise RuntimeError("count_parameters needs megatron's tensor-parallel size 1 (it counts the whole "
                               "model), or no process group at all")
        yield
        return
    if dist.is_initialized():
        raise RuntimeError("count_parameters: a process group exists without megatron's parallel state; call it "
                           "before init_distributed or after init_megatron(1)")
    dist.init_process_group("gloo", store=dist.HashStore(), rank=0, world_size=1)
    try:
        ps.initialize_model_parallel(tensor_model_parallel_size=1)
        cpu_compat.apply()  # no-op with CUDA; without it megatron's torch.cuda.current_device() calls would fail
        try:
            yield
        finally:
            ps.destroy_model_parallel()
    finally:
        dist.destroy_process_group()


def count_parameters(cfg: RunConfig, vocab_size: int) -> ParamCount:
    """Total / embedding parameters of ``cfg``'s model with ``vocab_size`` embedding rows (seconds, no memory)."""
    from .train import build_model

    whole = dataclasses.replace(cfg, parallel=dataclasses.replace(cfg.parallel, tensor_model_parallel_size=1))
    with _megatron_tp1():
        model = build_model(whole, vocab_size, meta=True)
    total = emb = routed = 0
    for name, p in model.named_parameters():  # named_parameters() yields a tied matrix once
        total += p.numel()
        emb += p.numel() if _is_embedding(name) else 0
        routed += p.numel() if ".experts." in name else 0  # the shared expert is "shared_experts"
    moe = cfg.moe_or_none
    active = routed * moe.top_k // moe.num_experts if moe is not None else routed
    return ParamCount(total=total, embedding=emb, routed_experts=routed, active_experts=active)
