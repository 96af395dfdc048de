"""Hugging Face config of a Llama-style decoder whose FFN is the VersatileFFN block.

Self-contained (imports only transformers): it is copied next to ``config.json`` in exported folders and
loaded through ``auto_map`` with ``trust_remote_code=True``.
"""
from huggingface_hub.dataclasses import strict
from transformers import LlamaConfig


@strict
class VersatileFFNLlamaConfig(LlamaConfig):
    r"""``LlamaConfig`` plus the VersatileFFN hyper-parameters.

    vffn_num_experts: N virtual sub-experts; sub-expert e owns hidden units [e*F/N, (e+1)*F/N) of the shared FFN.
    vffn_top_k: sub-experts mixed per token on the width path (softmax over the k largest router logits).
    vffn_max_depth: D, the most recursive applications of the shared FFN on the depth path.
    vffn_gumbel_tau: Gumbel-softmax temperature of training-mode forwards in this implementation (inference
        uses the argmax and ignores it). The megatron trainer anneals its own temperature; this is only used
        when fine-tuning the exported model.
    """

    model_type = "vffn_llama"
    # transformers' tensor-parallel plan for the attention only: the shared FFN is sliced by sub-experts and
    # must not be split column-/row-wise behind the block's back.
    base_model_tp_plan = {
        "layers.*.self_attn.q_proj": "colwise",
        "layers.*.self_attn.k_proj": "colwise",
        "layers.*.self_attn.v_proj": "colwise",
        "layers.*.self_attn.o_proj": "rowwise",
    }

    vffn_num_experts: int = 8
    vffn_top_k: int = 2
    vffn_max_depth: int = 4
    vffn_gumbel_tau: float = 0.1

    def validate_architecture(self):
        super().validate_architecture()
        n, k, d = self.vffn_num_experts, self.vffn_top_k, self.vffn_max_depth
        if n < 1 or self.intermediate_size % n:
            raise ValueError(f"intermediate_size ({self.intermediate_size}) must be divisible by vffn_num_experts "
                             f"({n} >= 1): every sub-expert is an equal contiguous slice of the FFN")
        if not 1 <= k <= n:
            raise ValueError(f"vffn_top_k must satisfy 1 <= vffn_top_k <= vffn_num_experts ({n}), got {k}")
        if d < 1:
            raise ValueError(f"vffn_max_depth must be >= 1, got {d}")
        if self.vffn_gumbel_tau <= 0:
            raise ValueError(f"vffn_gumbel_tau must be > 0, got {self.vffn_gumbel_tau}")
        if self.hidden_act != "silu" or self.mlp_bias:
            raise ValueError("VersatileFFN is a bias-free SwiGLU FFN: hidden_act='silu', mlp_bias=False")


__all__ = ["VersatileFFNLlamaConfig"]
