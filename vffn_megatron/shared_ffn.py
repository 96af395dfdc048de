"""The shared SwiGLU FFN that VersatileFFN and the k-loop baseline reuse: own RMSNorm, fc1, fc2."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional, Union

import torch
import torch.nn.functional as F
from megatron.core.transformer.mlp import apply_swiglu_sharded_factory
from megatron.core.transformer.module import MegatronModule
from megatron.core.transformer.spec_utils import ModuleSpec, build_module
from megatron.core.transformer.transformer_config import TransformerConfig
from megatron.core.utils import get_tensor_model_parallel_group_if_none

from .config import VFFNConfigError


@dataclass
class SharedFFNSubmodules:
    norm: Union[ModuleSpec, type, None] = None
    linear_fc1: Union[ModuleSpec, type, None] = None
    linear_fc2: Union[ModuleSpec, type, None] = None


class SharedSwiGLU(MegatronModule):
    """RMSNorm + column-parallel gated fc1 + row-parallel fc2, applied to the raw residual stream.

    The norm belongs to the FFN (not to the layer) because recursive use re-normalises at every loop.
    ``tp_group`` is megatron ``MLP``'s: the tensor-parallel group of fc1 / fc2 (None: megatron's default TP
    group, resolved as ``MLP`` does); subclasses use ``self.tp_group`` for their own TP rank and collectives.
    """

    def __init__(self, config: TransformerConfig, submodules: SharedFFNSubmodules,
                 tp_group: Optional[torch.distributed.ProcessGroup] = None):
        super().__init__(config=config)
        d, ffn = config.hidden_size, config.ffn_hidden_size
        self.tp_group = get_tensor_model_parallel_group_if_none(tp_group)
        if self.tp_group is not None and self.tp_group.size() != config.tensor_model_parallel_size:
            raise VFFNConfigError(f"tp_group has {self.tp_group.size()} ranks but tensor_model_parallel_size is "
                                  f"{config.tensor_model_parallel_size}")
        self.layer_number: Optional[int] = None
        self.norm = build_module(submodules.norm, config=config, hidden_size=d, eps=config.layernorm_epsilon)
        self.linear_fc1 = build_module(
            submodules.linear_fc1, d, 2 * ffn, config=config, init_method=config.init_method,
            gather_output=False, bias=False, skip_bias_add=True, is_expert=False,
            tp_comm_buffer_name="fc1", tp_group=self.tp_group, stride=2,  # each TP rank holds [gate_r; up_r]
        )
        self.linear_fc2 = build_module(
            submodules.linear_fc2, ffn, d, config=config, init_method=config.output_layer_init_method,
            bias=False, input_is_parallel=True, skip_bias_add=True, is_expert=False, tp_comm_buffer_name="fc2",
            tp_group=self.tp_group,
        )

    def set_layer_number(self, layer_number: int) -> None:  # called by TransformerLayer
        self.layer_number = layer_number

    def _hidden(self, u: torch.Tensor) -> torch.Tensor:
        """SwiGLU hidden activations of this rank's hidden units: [T, 1, F/t]."""
        a, _ = self.linear_fc1(self.norm(u))
        gate, up = torch.chunk(a, 2, dim=-1)
        return F.silu(gate) * up

    def _loop(self, u: torch.Tensor) -> torch.Tensor:
        """FFN(norm(u)), reduced across TP (one all-reduce)."""
        out, _ = self.linear_fc2(self._hidden(u))
        return out

    def sharded_state_dict(self, prefix: str = "", sharded_offsets: tuple = (), metadata: Optional[dict] = None):
        sd = super().sharded_state_dict(prefix, sharded_offsets, metadata)
        singleton = (metadata or {}).get("singleton_local_shards", False)
        key = f"{prefix}linear_fc1.weight"
        if key in sd:  # gated fc1: [gate_r; up_r] per rank, resharded like megatron's SwiGLU MLP
            sd[key] = apply_swiglu_sharded_factory(sd[key], sharded_offsets, singleton)
        return sd
