"""Configuration of the VersatileFFN block (hyper-parameters of the paper, validated up front)."""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Optional


class VFFNConfigError(ValueError):
    """A VersatileFFN configuration that cannot work; the message says what and how to fix it."""


@dataclass
class VersatileFFNConfig:
    """Hyper-parameters of one VersatileFFN block (shared by every layer of a model).

    num_experts: N virtual sub-experts; sub-expert e owns hidden units [e*F/N, (e+1)*F/N).
    top_k: sub-experts mixed per token on the width path.
    max_depth: D, the most recursive applications of the shared FFN on the depth path.
    tau_start / tau_decay / tau_end: Gumbel temperature tau(step) = max(tau_start * tau_decay**step, tau_end).
    aux_loss_coeff: Switch-style load-balancing loss on the width router (0 disables it).
    recompute: recompute each loop iteration in backward (activation memory flat in D).
    """

    num_experts: int = 8
    top_k: int = 2
    max_depth: int = 4
    tau_start: float = 5.0
    tau_decay: float = 0.99984
    tau_end: float = 0.1
    # the paper's 1e-5 (arXiv 2512.14531); the released code's yaml says 5e-5 and the released code applies no
    # aux loss at all (aux_loss_coeff: 0 reproduces that)
    aux_loss_coeff: float = 1e-5
    recompute: bool = False

    # The fields that shape the weights or the function a model computes (all counts, hence integers): a
    # checkpoint, an exported HF model and the run resuming or importing it must agree on them. The others
    # (temperature schedule, aux-loss coefficient, recompute) may change between runs of one model.
    ARCH_FIELDS = ("num_experts", "top_k", "max_depth")  # a class constant, not a config key (no annotation)

    def tau(self, step: int) -> float:
        """Gumbel-softmax temperature at a global step: a pure function, so resume reproduces it."""
        return max(self.tau_start * self.tau_decay ** max(int(step), 0), self.tau_end)

    def validate(self, ffn_hidden_size: int | None = None, tensor_parallel_size: int = 1) -> None:
        """Raise VFFNConfigError naming the offending field and how to fix it."""
        def need(ok: bool, msg: str) -> None:
            if not ok:
                raise VFFNConfigError(f"invalid VersatileFFN config: {msg}")

        for name in self.ARCH_FIELDS:
            v = getattr(self, name)
            need(isinstance(v, int) and not isinstance(v, bool), f"vffn.{name} must be an integer, got {v!r}")
        need(self.num_experts >= 1, f"vffn.num_experts must be >= 1, got {self.num_experts}")
        need(1 <= self.top_k <= self.num_experts,
             f"vffn.top_k must satisfy 1 <= top_k <= num_experts ({self.num_experts}), got {self.top_k}")
        need(self.max_depth >= 1, f"vffn.max_depth must be >= 1, got {self.max_depth}")
        for name in ("tau_start", "tau_decay", "tau_end", "aux_loss_coeff"):
            v = getattr(self, name)
            need(isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v),
                 f"vffn.{name} must be a finite number, got {v!r}")
        need(self.tau_end > 0, f"vffn.tau_end must be > 0 (it divides the logits), got {self.tau_end}")
        need(self.tau_start >= self.tau_end,
             f"vffn.tau_start ({self.tau_start}) must be >= vffn.tau_end ({self.tau_end})")
        need(0 < self.tau_decay <= 1, f"vffn.tau_decay must be in (0, 1], got {self.tau_decay}")
        need(self.aux_loss_coeff >= 0, f"vffn.aux_loss_coeff must be >= 0, got {self.aux_loss_coeff}")
        need(isinstance(self.recompute, bool), f"vffn.recompute must be true or false, got {self.recompute!r}")
        need(isinstance(tensor_parallel_size, int) and tensor_parallel_size >= 1,
             f"tensor_parallel_size must be a positive integer, got {tensor_parallel_size!r}")
        need(self.num_experts % tensor_parallel_size == 0,
             f"vffn.num_experts ({self.num_experts}) must be divisible by the tensor-parallel size "
             f"({tensor_parallel_size}): each rank owns whole sub-experts. Use num_experts a multiple of "
             f"{tensor_parallel_size} or a smaller tensor_model_parallel_size")
        if ffn_hidden_size is not None:
            need(ffn_hidden_size % self.num_experts == 0,
                 f"ffn_hidden_size ({ffn_hidden_size}) must be divisible by vffn.num_experts "
                 f"({self.num_experts}) so every sub-expert is a contiguous slice of equal size")


@dataclass
class KLoopConfig:
    loops: int = 2
    recompute: bool = False

    ARCH_FIELDS = ("loops",)  # the fields that shape the function (see VersatileFFNConfig.ARCH_FIELDS)

    def validate(self) -> None:
        if not isinstance(self.loops, int) or isinstance(self.loops, bool) or self.loops < 1:
            raise VFFNConfigError(f"invalid k-loop config: kloop.loops must be an integer >= 1, got {self.loops!r}")


@dataclass
class MoEConfig:
    """megatron-core's MoELayer baseline. The defaults are the paper's MoE: the dense FFN kept as a shared expert
    (``shared_expert``) plus ``num_experts`` fine-grained routed experts of hidden F/num_experts, top-2, aux 1e-5.

    ``shared_expert: false`` + ``expert_ffn_hidden_size: <F>`` is the "Switch-style full-size experts" variant
    (no shared expert; every routed expert the dense FFN's size). With ``top_k: 1`` the router applies its
    softmax before choosing (Switch's top-1: the gate is the chosen expert's probability over all experts);
    a softmax over the single chosen logit would be 1 and give the router no gradient.
    """

    num_experts: int = 8
    top_k: int = 2
    aux_loss_coeff: float = 1e-5
    shared_expert: bool = True  # megatron's shared expert of the dense FFN's size (moe_shared_expert_intermediate_size)
    expert_ffn_hidden_size: Optional[int] = None  # routed experts' hidden size; None = ffn_hidden_size / num_experts

    ARCH_FIELDS = ("num_experts", "top_k", "shared_expert", "expert_ffn_hidden_size")  # shape the weights / function

    def expert_hidden(self, ffn_hidden_size: int) -> int:
        """The routed experts' hidden size for a model of FFN hidden size ``ffn_hidden_size``."""
        if self.expert_ffn_hidden_size is not None:
            return self.expert_ffn_hidden_size
        return ffn_hidden_size // self.num_experts

    def validate(self, tensor_parallel_size: int = 1, ffn_hidden_size: Optional[int] = None) -> None:
        """Raise VFFNConfigError naming the field and the fix (before megatron's TransformerConfig sees it)."""
        def need(ok: bool, msg: str) -> None:
            if not ok:
                raise VFFNConfigError(f"invalid MoE config: {msg}")

        def is_int(v) -> bool:
            return isinstance(v, int) and not isinstance(v, bool)

        need(is_int(self.num_experts) and self.num_experts >= 1,
             f"moe.num_experts must be an integer >= 1, got {self.num_experts!r}")
        need(is_int(self.top_k) and 1 <= self.top_k <= self.num_experts,
             f"moe.top_k must satisfy 1 <= top_k <= num_experts ({self.num_experts}), got {self.top_k!r}")
        need(isinstance(self.aux_loss_coeff, (int, float)) and not isinstance(self.aux_loss_coeff, bool)
             and math.isfinite(self.aux_loss_coeff) and self.aux_loss_coeff >= 0,
             f"moe.aux_loss_coeff must be >= 0 and finite, got {self.aux_loss_coeff}")
        need(isinstance(self.shared_expert, bool), f"moe.shared_expert must be true or false, got {self.shared_expert!r}")
        fe = self.expert_ffn_hidden_size
        need(fe is None or (is_int(fe) and fe >= 1),
             f"moe.expert_ffn_hidden_size must be a positive integer or null (= ffn_hidden_size / num_experts), "
             f"got {fe!r}")
        if ffn_hidden_size is None:
            return
        need(fe is not None or ffn_hidden_size % self.num_experts == 0,
             f"ffn_hidden_size ({ffn_hidden_size}) must be divisible by moe.num_experts ({self.num_experts}) for "
             f"experts of hidden ffn_hidden_size / num_experts; choose another num_experts or set "
             f"moe.expert_ffn_hidden_size explicitly")
        hidden = self.expert_hidden(ffn_hidden_size)
        need(hidden % tensor_parallel_size == 0,
             f"the routed experts' hidden size ({hidden}) must be divisible by the tensor-parallel size "
             f"({tensor_parallel_size}): megatron shards every expert's FFN over the TP ranks. Choose "
             f"moe.expert_ffn_hidden_size / moe.num_experts accordingly or a smaller tensor_model_parallel_size")


# moe.upcycle_experts: how an MoE's routed experts start when a dense checkpoint is upcycled (vffn_hf/upcycle.py)
UPCYCLE_EXPERTS = ("slices", "fresh")

# model.attention_backend: sdpa = torch's scaled_dot_product_attention (vffn_megatron.attention.SDPAttention),
# local = megatron-core's DotProductAttention
ATTENTION_BACKENDS = ("sdpa", "local")
