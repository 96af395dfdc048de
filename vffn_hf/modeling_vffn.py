"""Hugging Face model: a Llama decoder whose FFN is the VersatileFFN block.

Self-contained (imports only torch and transformers, plus the sibling config file): it is copied next to
``config.json`` in exported folders and loaded through ``auto_map`` with ``trust_remote_code=True``.
Attention, rotary embedding, RMSNorm, the model/causal-LM forwards and ``generate()`` are transformers' Llama
ones; only the decoder layer and the FFN block are new.

The block (the numbers megatron's ``vffn_megatron.versatile_ffn.VersatileFFN`` computes in eval mode):
one shared SwiGLU FFN(u) = down(silu(gate(norm(u))) * up(norm(u))), its own RMSNorm re-applied at every use;
sub-expert e = hidden units [e*F/N, (e+1)*F/N).

* depth: x_0 = x, x_i = x_{i-1} + FFN(x_{i-1}); L = argmax(depth_router(x)) + 1 loops per token;
* width: top-k of router(x), softmax over those k logits; x_wide = x + sum_e w_e FFN_e(x);
* fusion: m = (D - L) / D; out = (1 - m) x_L + m x_wide.

Both routers read the un-normalised residual stream. The block returns ``out`` (residual included): the
decoder layer adds nothing after it and has no post-attention norm.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from transformers import GenerationMixin
from transformers.models.llama.modeling_llama import (
    LlamaAttention,
    LlamaForCausalLM,
    LlamaModel,
    LlamaPreTrainedModel,
    LlamaRMSNorm,
    LlamaRotaryEmbedding,
)
from transformers.modeling_layers import GradientCheckpointingLayer

from .configuration_vffn import VersatileFFNLlamaConfig


class VersatileFFNBlock(nn.Module):
    """VersatileFFN on the post-attention residual stream x [..., d] -> block output [..., d] (residual included)."""

    def __init__(self, config: VersatileFFNLlamaConfig):
        super().__init__()
        d, f = config.hidden_size, config.intermediate_size
        self.num_experts, self.top_k, self.max_depth = config.vffn_num_experts, config.vffn_top_k, config.vffn_max_depth
        self.expert_size = f // self.num_experts
        self.gumbel_tau = config.vffn_gumbel_tau
        self.norm = LlamaRMSNorm(d, eps=config.rms_norm_eps)
        self.gate_proj = nn.Linear(d, f, bias=False)
        self.up_proj = nn.Linear(d, f, bias=False)
        self.down_proj = nn.Linear(f, d, bias=False)
        self.router = nn.Linear(d, self.num_experts, bias=False)
        self.depth_router = nn.Linear(d, self.max_depth, bias=False)

    def _hidden(self, u: torch.Tensor) -> torch.Tensor:
        v = self.norm(u)
        return F.silu(self.gate_proj(v)) * self.up_proj(v)

    def _width(self, x: torch.Tensor, h: torch.Tensor) -> torch.Tensor:
        """sum_e w_e FFN_e for tokens x [T, d] with first-loop hidden activations h [T, F].

        FFN_e(x) = down[:, e] h[e], so the weighted sum is down(w ⊙ h) with each weight spread over its
        sub-expert's units (zero off the top-k): one matmul, no per-expert loop.
        """
        logits = self.router(x).float()
        top_val, top_idx = torch.topk(logits, self.top_k, dim=-1)
        w = torch.zeros_like(logits).scatter(-1, top_idx, torch.softmax(top_val, dim=-1)).to(h.dtype)
        t = h.shape[0]
        return self.down_proj((h.view(t, self.num_experts, self.expert_size) * w.unsqueeze(-1)).view(t, -1))

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        x = hidden_states.reshape(-1, hidden_states.shape[-1])
        delta = self._delta_train(x) if self.training else self._delta_eval(x)
        return (x + delta).view_as(hidden_states)

    def _delta_eval(self, x: torch.Tensor) -> torch.Tensor:
        t, depth = x.shape[0], self.max_depth
        loops = self.depth_router(x).float().argmax(dim=-1) + 1  # L per token, 1..D
        m = (depth - loops).to(x.dtype) / depth
        h = self._hidden(x)
        f = self.down_proj(h)
        deep = f.clone()  # x_L - x, accumulated as deltas (no difference of large numbers)
        idx, u = torch.arange(t, device=x.device), x + f
        for i in range(2, depth + 1):  # loop i runs only for the tokens with L >= i
            keep = torch.nonzero(loops.index_select(0, idx) >= i).squeeze(1)
            if keep.numel() == 0:
                break
            idx, u = idx.index_select(0, keep), u.index_select(0, keep)
            f = self.down_proj(self._hidden(u))
            u = u + f
            deep.index_add_(0, idx, f)
        delta = (1 - m)[:, None] * deep
        wide = torch.nonzero(loops < depth).squeeze(1)  # m > 0: the only tokens that need the width path
        if wide.numel():
            width = self._width(x.index_select(0, wide), h.index_select(0, wide))
            delta.index_add_(0, wide, m.index_select(0, wide)[:, None] * width)
        return delta

    def _delta_train(self, x: torch.Tensor) -> torch.Tensor:
        """Hard Gumbel-softmax over the depth logits (straight-through gradient) at temperature
        ``self.gumbel_tau``; every token runs all D loops so every choice gets a gradient."""
        depth = self.max_depth
        q = self.depth_router(x).float()
        y = F.gumbel_softmax(q, tau=self.gumbel_tau, hard=True)  # [T, D]
        h = self._hidden(x)
        acc = self.down_proj(h)
        deep = y[:, :1].to(x.dtype) * acc
        for i in range(1, depth):
            acc = acc + self.down_proj(self._hidden(x + acc))
            deep = deep + y[:, i:i + 1].to(x.dtype) * acc
        loops = (y * torch.arange(1, depth + 1, device=y.device, dtype=y.dtype)).sum(-1)
        m = ((depth - loops) / depth).to(x.dtype)[:, None]
        return (1 - m) * deep + m * self._width(x, h)


class VersatileFFNLlamaDecoderLayer(GradientCheckpointingLayer):
    """Llama decoder layer with the VersatileFFN block in place of (post_attention_layernorm + MLP + residual)."""

    def __init__(self, config: VersatileFFNLlamaConfig, layer_idx: int):
        super().__init__()
        self.hidden_size = config.hidden_size
        self.self_attn = LlamaAttention(config=config, layer_idx=layer_idx)
        self.input_layernorm = LlamaRMSNorm(config.hidden_size, eps=config.rms_norm_eps)
        self.mlp = VersatileFFNBlock(config)

    def forward(self, hidden_states, attention_mask=None, position_ids=None, past_key_values=None, use_cache=False,
                position_embeddings=None, **kwargs):
        residual = hidden_states
        hidden_states, _ = self.self_attn(
            hidden_states=self.input_layernorm(hidden_states), attention_mask=attention_mask,
            position_ids=position_ids, past_key_values=past_key_values, use_cache=use_cache,
            position_embeddings=position_embeddings, **kwargs,
        )
        # The block owns its norm and its residual: nothing is added after it.
        return self.mlp(residual + hidden_states)


class VersatileFFNLlamaPreTrainedModel(LlamaPreTrainedModel):
    config_class = VersatileFFNLlamaConfig
    config: VersatileFFNLlamaConfig
    _no_split_modules = ["VersatileFFNLlamaDecoderLayer"]
    _can_compile_fullgraph = False  # per-token loop counts select data-dependent token subsets
    _can_record_outputs = {"hidden_states": VersatileFFNLlamaDecoderLayer, "attentions": LlamaAttention}


class VersatileFFNLlamaModel(VersatileFFNLlamaPreTrainedModel):
    def __init__(self, config: VersatileFFNLlamaConfig):
        super().__init__(config)
        self.padding_idx = config.pad_token_id
        self.vocab_size = config.vocab_size
        self.embed_tokens = nn.Embedding(config.vocab_size, config.hidden_size, self.padding_idx)
        self.layers = nn.ModuleList(
            [VersatileFFNLlamaDecoderLayer(config, i) for i in range(config.num_hidden_layers)])
        self.norm = LlamaRMSNorm(config.hidden_size, eps=config.rms_norm_eps)
        self.rotary_emb = LlamaRotaryEmbedding(config=config)
        self.gradient_checkpointing = False
        self.post_init()

    # Same attributes as LlamaModel, so its forward (embeddings, cache, causal mask, RoPE, final norm) applies.
    forward = LlamaModel.forward


class VersatileFFNLlamaForCausalLM(VersatileFFNLlamaPreTrainedModel, GenerationMixin):
    _tied_weights_keys = {"lm_head.weight": "model.embed_tokens.weight"}

    def __init__(self, config: VersatileFFNLlamaConfig):
        super().__init__(config)
        self.model = VersatileFFNLlamaModel(config)
        self.vocab_size = config.vocab_size
        self.lm_head = nn.Linear(config.hidden_size, config.vocab_size, bias=False)
        self.post_init()

    forward = LlamaForCausalLM.forward


__all__ = [
    "VersatileFFNBlock", "VersatileFFNLlamaDecoderLayer", "VersatileFFNLlamaPreTrainedModel",
    "VersatileFFNLlamaModel", "VersatileFFNLlamaForCausalLM",
]
