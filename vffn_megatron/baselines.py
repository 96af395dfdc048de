"""Baseline FFN blocks VersatileFFN is compared against (same GPTModel, same attention, same data).

* dense: megatron-core's own ``MLP`` (``specs.get_dense_layer_spec``);
* k-loop: depth-only recursion, the shared FFN applied k times with no gate (``KLoopFFN``);
* MoE: megatron-core's own ``MoELayer`` with N experts of the dense FFN's size, top-k routing — N times the
  FFN parameters, so it is the "more parameters" reference point.
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
    return get_gpt_layer_local_spec(num_experts=moe.num_experts, normalization="RMSNorm")


def configure_moe(tcfg, moe: MoEConfig):
    """Set megatron's MoE fields on a TransformerConfig: experts of the dense FFN's size, aux-loss routing."""
    from . import cpu_compat

    cpu_compat.apply_te_absent_fixes()
    tcfg.num_moe_experts = moe.num_experts
    tcfg.moe_router_topk = moe.top_k
    tcfg.moe_ffn_hidden_size = tcfg.ffn_hidden_size
    # alltoall allocates a torch.cuda.Stream at construction in 0.16.1; allgather is device-agnostic.
    tcfg.moe_token_dispatcher_type = "alltoall" if use_cuda() else "allgather"
    tcfg.moe_router_load_balancing_type = "aux_loss" if moe.aux_loss_coeff > 0 else "none"
    tcfg.moe_aux_loss_coeff = moe.aux_loss_coeff
    tcfg.__post_init__()
    return tcfg
