"""Activation-memory accounting: bytes that autograd keeps for backward (measured with saved-tensor hooks)."""
from __future__ import annotations

from typing import Callable

import torch


def saved_activation_bytes(fn: Callable[[], torch.Tensor], params: list[torch.Tensor] | None = None) -> int:
    """Run ``fn`` (a forward with grad enabled) and return the bytes of distinct storages saved for backward.

    Parameters are excluded (they live anyway); views of one storage count once, as in real memory.
    """
    skip = {p.untyped_storage().data_ptr() for p in (params or [])}
    seen: dict[int, int] = {}

    def pack(t: torch.Tensor):
        st = t.untyped_storage()
        if st.data_ptr() not in skip:
            seen[st.data_ptr()] = st.nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        out = fn()
    del out
    return sum(seen.values())


def recompute_memory_table(hidden: int, ffn: int, tokens: int, depths=(1, 2, 4, 8), compact: bool = True) -> dict:
    """{(D, recompute): saved bytes} for one VersatileFFN layer in train mode (megatron must be initialised).

    compact: the trainer's compacted backward (loops past a token's sampled depth saved nothing), else the
    full-backward algorithm. The sampled depths are those of the block's first step (temperature tau_start)."""
    from megatron.core.transformer.spec_utils import build_module

    from .config import VersatileFFNConfig
    from .model import GPTConfig, transformer_config
    from .specs import get_vffn_mlp_spec

    tcfg = transformer_config(GPTConfig(hidden_size=hidden, ffn_hidden_size=ffn, num_attention_heads=4))
    x = torch.randn(tokens, 1, hidden, requires_grad=True)
    table = {}
    for depth in depths:
        for recompute in (False, True):
            vffn = VersatileFFNConfig(max_depth=depth, recompute=recompute)
            block = build_module(get_vffn_mlp_spec(vffn), config=tcfg).train()
            block.compact_backward = compact
            table[(depth, recompute)] = saved_activation_bytes(lambda: block(x)[0], list(block.parameters()))
    return table
