"""Build a megatron-core ``GPTModel`` (RoPE, RMSNorm, SwiGLU, untied embeddings) with either MLP spec."""
from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import Optional

import torch
import torch.nn.functional as F

from .config import VersatileFFNConfig, VFFNConfigError
from .device import use_cuda


@dataclass
class GPTConfig:
    """Architecture of the decoder (Llama-style); the FFN kind is chosen by passing a VersatileFFNConfig."""

    num_layers: int = 2
    hidden_size: int = 64
    num_attention_heads: int = 4
    num_query_groups: Optional[int] = None  # GQA; None = multi-head attention
    ffn_hidden_size: int = 176
    seq_length: int = 128
    vocab_size: int = 512
    rotary_base: int = 10000
    norm_epsilon: float = 1e-5
    init_method_std: float = 0.02
    untie_embeddings_and_output_weights: bool = True

    def validate(self, tensor_parallel_size: int = 1) -> None:
        def need(ok, msg):
            if not ok:
                raise VFFNConfigError(f"invalid model config: {msg}")

        for name in ("num_layers", "hidden_size", "num_attention_heads", "ffn_hidden_size", "seq_length",
                     "vocab_size"):
            v = getattr(self, name)
            need(isinstance(v, int) and not isinstance(v, bool) and v >= 1,
                 f"model.{name} must be a positive integer, got {v!r}")
        need(self.hidden_size % self.num_attention_heads == 0,
             f"model.hidden_size ({self.hidden_size}) must be divisible by model.num_attention_heads "
             f"({self.num_attention_heads})")
        need((self.hidden_size // self.num_attention_heads) % 2 == 0,
             "the head dimension (hidden_size / num_attention_heads) must be even for RoPE")
        need(self.num_attention_heads % tensor_parallel_size == 0,
             f"model.num_attention_heads ({self.num_attention_heads}) must be divisible by the tensor-parallel "
             f"size ({tensor_parallel_size}); choose a tensor_model_parallel_size that divides it")
        groups = self.num_query_groups or self.num_attention_heads
        need(self.num_attention_heads % groups == 0,
             f"model.num_query_groups ({groups}) must divide model.num_attention_heads ({self.num_attention_heads})")
        need(groups % tensor_parallel_size == 0,
             f"model.num_query_groups ({groups}) must be divisible by the tensor-parallel size ({tensor_parallel_size})")
        need(self.ffn_hidden_size % tensor_parallel_size == 0,
             f"model.ffn_hidden_size ({self.ffn_hidden_size}) must be divisible by the tensor-parallel size "
             f"({tensor_parallel_size})")


def transformer_config(cfg: GPTConfig, tensor_parallel_size: int = 1, bf16: bool = False,
                       use_cpu_initialization: Optional[bool] = None):
    from megatron.core.transformer.transformer_config import TransformerConfig

    if use_cpu_initialization is None:
        use_cpu_initialization = not use_cuda()
    return TransformerConfig(
        num_layers=cfg.num_layers, hidden_size=cfg.hidden_size, num_attention_heads=cfg.num_attention_heads,
        num_query_groups=cfg.num_query_groups, ffn_hidden_size=cfg.ffn_hidden_size,
        tensor_model_parallel_size=tensor_parallel_size, normalization="RMSNorm", layernorm_epsilon=cfg.norm_epsilon,
        gated_linear_unit=True, activation_func=F.silu, add_bias_linear=False, add_qkv_bias=False,
        hidden_dropout=0.0, attention_dropout=0.0, init_method_std=cfg.init_method_std,
        bf16=bf16, params_dtype=torch.bfloat16 if bf16 else torch.float32,
        # CPU init builds each full master weight from the seed and slices it: same global weights at any TP.
        use_cpu_initialization=use_cpu_initialization,
    )


def build_gpt_model(cfg: GPTConfig, vffn: Optional[VersatileFFNConfig] = None, tensor_parallel_size: int = 1,
                    bf16: bool = False, kloop=None, moe=None, attention_backend: str = "sdpa", meta: bool = False):
    """GPTModel whose FFN is VersatileFFN (``vffn``), the k-loop baseline (``kloop``: KLoopConfig), megatron's
    MoE (``moe``: MoEConfig), or the dense baseline (none given). ``attention_backend``: sdpa (torch's fused
    scaled_dot_product_attention) or local (megatron's DotProductAttention): the same function, the same
    weights. ``meta``: every tensor on the meta device (shapes only, no memory, no initialisation: parameter
    counts of paper-size models). Call init_megatron first."""
    from megatron.core.models.gpt import GPTModel

    from .baselines import configure_moe, get_kloop_layer_spec, get_moe_layer_spec
    from .specs import get_layer_spec, with_attention_backend

    chosen = [n for n, v in (("vffn", vffn), ("kloop", kloop), ("moe", moe)) if v is not None]
    if len(chosen) > 1:
        raise VFFNConfigError(f"choose one FFN kind, got {chosen}")
    cfg.validate(tensor_parallel_size)
    # meta: megatron's GPU initialisation would allocate on the CUDA device whatever the default device is
    tcfg = transformer_config(cfg, tensor_parallel_size, bf16, use_cpu_initialization=True if meta else None)
    tcfg.perform_initialization = not meta
    if vffn is not None:
        vffn.validate(cfg.ffn_hidden_size, tensor_parallel_size)
        spec = get_layer_spec(vffn)
    elif kloop is not None:
        kloop.validate()
        spec = get_kloop_layer_spec(kloop)
    elif moe is not None:
        tcfg = configure_moe(tcfg, moe)
        spec = get_moe_layer_spec(moe)
    else:
        spec = get_layer_spec(None)
    spec = with_attention_backend(spec, attention_backend)
    with torch.device("meta") if meta else contextlib.nullcontext():
        model = GPTModel(
            config=tcfg, transformer_layer_spec=spec, vocab_size=cfg.vocab_size,
            max_sequence_length=cfg.seq_length, position_embedding_type="rope", rotary_base=cfg.rotary_base,
            share_embeddings_and_output_weights=not cfg.untie_embeddings_and_output_weights,
        )
    if use_cuda() and not meta:
        model = model.cuda()
    return model
