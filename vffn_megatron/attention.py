"""Core attention through ``torch.nn.functional.scaled_dot_product_attention`` (``model.attention_backend: sdpa``).

megatron-core's local ``DotProductAttention`` materialises the full [b, heads, s, s] score matrix (baddbmm,
masked softmax, bmm): at seq 4096 that dominates a GPU's memory and time. SDPA computes the same function and
lets PyTorch pick a fused kernel (flash / memory-efficient / cuDNN on GPUs, a fused flash kernel on CPU).

It is a drop-in ``core_attention`` submodule: it subclasses ``DotProductAttention`` for the constructor (heads
and query groups per TP partition, softmax scale, dropout) and replaces only ``forward``. Layouts are
megatron's: query [sq, b, heads/tp, hn], key/value [sk, b, groups/tp, hn] in, context [sq, b, heads/tp * hn]
out. GQA is passed to SDPA as such (``enable_gqa``), so no repeated key/value copies are made.
"""
from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F
from megatron.core import tensor_parallel
from megatron.core.transformer.dot_product_attention import DotProductAttention
from megatron.core.transformer.enums import AttnMaskType



class SDPAttention(DotProductAttention):
    """megatron ``DotProductAttention`` computed by ``scaled_dot_product_attention``."""

    def __init__(self, config, layer_number: int, attn_mask_type: AttnMaskType, attention_type: str, **kwargs):
        super().__init__(config, layer_number, attn_mask_type, attention_type, **kwargs)
        if config.softmax_type != "vanilla":
            raise ValueError(f"attention_backend sdpa supports softmax_type 'vanilla' only, got "
                             f"{config.softmax_type!r}; use attention_backend local")
        if config.window_size is not None:
            raise ValueError("attention_backend sdpa does not implement sliding-window attention "
                             "(config.window_size); use attention_backend local")
        # DotProductAttention divides its scale by the layer number under query-key layer scaling and multiplies
        # it back inside the fp32 softmax; SDPA's softmax is computed in fp32 anyway: use the plain scale.
        self.sdpa_scale = self.softmax_scale * (self.layer_number if config.apply_query_key_layer_scaling else 1)

    def forward(self, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
                attention_mask: Optional[torch.Tensor], attn_mask_type: Optional[AttnMaskType] = None,
                attention_bias: Optional[torch.Tensor] = None, packed_seq_params=None) -> torch.Tensor:
        if packed_seq_params is not None or attention_bias is not None:
            raise ValueError("attention_backend sdpa supports neither packed sequences nor attention_bias; "
                             "use attention_backend local")
        mask_type = attn_mask_type if attn_mask_type is not None else self.attn_mask_type
        sq, b, heads, hn = query.shape
        sk = key.shape[0]
        # [s, b, n, hn] -> [b, n, s, hn]
        q, k, v = (t.permute(1, 2, 0, 3) for t in (query, key, value))
        is_causal, mask = False, None
        if attention_mask is not None:  # megatron's boolean mask: True = masked out
            mask = ~attention_mask
            if mask_type == AttnMaskType.causal and sq > 1:
                mask = mask & torch.ones(sq, sk, dtype=torch.bool, device=q.device).tril()
        elif mask_type == AttnMaskType.causal and sq > 1:  # sq == 1: a decoding step sees every key, as local does
            if sq != sk:
                raise ValueError(f"causal attention needs sq == sk, got {sq} and {sk}")
            is_causal = True
        dropout = self.attention_dropout.p if self.training else 0.0
        gqa = {"enable_gqa": True} if k.shape[1] != heads else {}
        if dropout > 0 and not self.config.sequence_parallel:
            with tensor_parallel.get_cuda_rng_tracker().fork():  # same dropout RNG rule as DotProductAttention
                ctx = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=dropout, is_causal=is_causal,
                                                     scale=self.sdpa_scale, **gqa)
        else:
            ctx = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=dropout, is_causal=is_causal,
                                                 scale=self.sdpa_scale, **gqa)
        # [b, n, sq, hn] -> [sq, b, n * hn]
        return ctx.permute(2, 0, 1, 3).reshape(sq, b, self.hidden_size_per_partition)
