"""Baseline FFN blocks VersatileFFN is compared against (same GPTModel, same attention, same data).

* dense: megatron-core's own ``MLP`` (``specs.get_dense_layer_spec``);
* k-loop: depth-only recursion, the shared FFN applied k times with no gate (``KLoopFFN``);
* MoE: megatron-core's own ``MoELayer``, by default the paper's: a shared expert of the dense FFN's size (always
  applied, its output added with no gate) plus N routed experts of hidden F/N, top-k (+53% parameters and 1.25x
  the FFN FLOPs at the paper's 354M shape); ``MoEConfig(shared_expert=False, expert_ffn_hidden_size=F)`` is the
  Switch-style variant with full-size experts and no shared expert.
"""
from __future__ import annotations

import copy
import torch
from megatron.core.models.backends import LocalSpecProvider
from megatron.core.models.gpt.gpt_layer_specs import get_gpt_layer_local_spec
from megatron.core.tensor_parallel import checkpoint as tp_checkpoint
from megatron.core.transformer.identity_op import IdentityOp
from megatron.core.transformer.spec_utils import ModuleSpec

from .config import KLoopConfig, MoEConfig, VFFNConfigError  # noqa: F401 (re-exported)
from .device import use_cuda
from .shared_ffn import SharedFFNSubmodules, SharedSwiGLU
from .specs import get_dense_layer_spec


class KLoopFFN(SharedSwiGLU):
    """x_i = x_{i-1} + FFN(norm(x_{i-1})), i = 1..k, for every token; returns the residual delta x_k - x."""

    def __init__(self, config, submodules: SharedFFNSubmodules, kloop: KLoopConfig | None = None,
                 tp_group=None, **kwargs):  # tp_group: megatron MLP's (None: the default TP group)
        if config.add_bias_linear or not config.gated_linear_unit:
            raise VFFNConfigError("the k-loop FFN is a bias-free SwiGLU: set add_bias_linear=False, "
                                  "gated_linear_unit=True")
        super().__init__(config=config, submodules=submodules, tp_group=tp_group)
        self.kloop = kloop or KLoopConfig()
        self.kloop.validate()

    def _step(self, x: torch.Tensor, acc: torch.Tensor) -> torch.Tensor:
        return self._loop(x + acc)

    def forward(self, hidden_states: torch.Tensor, **kwargs):
        recompute = self.kloop.recompute and self.training and torch.is_grad_enabled()
        acc = self._loop(hidden_states) if not recompute else tp_checkpoint(self._loop, False, hidden_states)
        for _ in range(1, self.kloop.loops):
            acc = acc + (tp_checkpoint(self._step, False, hidden_states, acc) if recompute
                         else self._step(hidden_states, acc))
        return acc, None


def get_kloop_layer_spec(kloop: KLoopConfig) -> ModuleSpec:
    backend = LocalSpecProvider()
    spec = copy.deepcopy(get_dense_layer_spec())
    spec.submodules.pre_mlp_layernorm = IdentityOp  # the FFN re-normalises at every loop
    spec.submodules.mlp = ModuleSpec(
        module=KLoopFFN, params={"kloop": kloop},
        submodules=SharedFFNSubmodules(norm=backend.layer_norm(rms_norm=True),
                                       linear_fc1=backend.column_parallel_linear(),
                                       linear_fc2=backend.row_parallel_linear()),
    )
    return spec


def get_moe_layer_spec(moe: MoEConfig) -> ModuleSpec:
    """megatron's local GPT layer spec with its MoE submodules (SequentialMLP experts, SharedExpertMLP; the shared
    expert is built only when the TransformerConfig sets moe_shared_expert_intermediate_size)."""
    return get_gpt_layer_local_spec(num_experts=moe.num_experts, normalization="RMSNorm")


def configure_moe(tcfg, moe: MoEConfig):
    """Set megatron's MoE fields on a TransformerConfig (validated by ``MoEConfig.validate`` first)."""
    from . import cpu_compat

    moe.validate(tcfg.tensor_model_parallel_size, tcfg.ffn_hidden_size)
    cpu_compat.apply_te_absent_fixes()
    tcfg.num_moe_experts = moe.num_experts
    tcfg.moe_router_topk = moe.top_k
    # top-1: softmax over all experts before choosing (else the gate is 1 and the router gets no gradient)
    tcfg.moe_router_pre_softmax = moe.top_k == 1
    tcfg.moe_ffn_hidden_size = moe.expert_hidden(tcfg.ffn_hidden_size)
    tcfg.moe_shared_expert_intermediate_size = tcfg.ffn_hidden_size if moe.shared_expert else None
    tcfg.moe_shared_expert_gate = False  # the paper's shared expert: output added as it is
    # alltoall allocates a torch.cuda.Stream at construction in 0.16.1; allgather is device-agnostic.
    tcfg.moe_token_dispatcher_type = "alltoall" if use_cuda() else "allgather"
    tcfg.moe_router_load_balancing_type = "aux_loss" if moe.aux_loss_coeff > 0 else "none"
    tcfg.moe_aux_loss_coeff = moe.aux_loss_coeff
    tcfg.__post_init__()
    return tcfg
