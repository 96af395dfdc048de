"""TransformerLayer specs: VersatileFFN in the MLP slot, or megatron's own dense MLP (the baseline).

Both start from megatron-core's local (no Transformer Engine) GPT layer spec, so attention, norms and
bias-dropout-add are identical and a ``GPTModel`` is built the same way for every architecture.
"""
from __future__ import annotations

import copy
import logging
from typing import Optional

from megatron.core.models.backends import LocalSpecProvider
from megatron.core.models.gpt.gpt_layer_specs import get_gpt_layer_local_spec
from megatron.core.transformer.identity_op import IdentityOp
from megatron.core.transformer.spec_utils import ModuleSpec

from .config import ATTENTION_BACKENDS, VersatileFFNConfig
from .versatile_ffn import VersatileFFN, VersatileFFNSubmodules


class _KnownMLPFilter(logging.Filter):
    """``TransformerLayer`` warns "Unknown MLP type ... Using default kwargs" for every layer whose MLP class is
    not one of megatron's own; our blocks take exactly those default kwargs by design (the TP group falls back
    to megatron's default group, as megatron's MLP does), so the line is noise on every layer of every rank."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith("Unknown MLP type")


_layer_logger = logging.getLogger("megatron.core.transformer.transformer_layer")
if not any(isinstance(f, _KnownMLPFilter) for f in _layer_logger.filters):
    _layer_logger.addFilter(_KnownMLPFilter())


def with_attention_backend(spec: ModuleSpec, backend: str = "sdpa") -> ModuleSpec:
    """The layer spec with its core attention chosen: ``sdpa`` (torch's scaled_dot_product_attention, the
    default: fused flash / memory-efficient kernels) or ``local`` (megatron's DotProductAttention)."""
    from megatron.core.transformer.dot_product_attention import DotProductAttention

    from .attention import SDPAttention

    if backend not in ATTENTION_BACKENDS:
        raise ValueError(f"attention_backend must be one of {', '.join(ATTENTION_BACKENDS)}, got {backend!r}")
    spec = copy.deepcopy(spec)
    spec.submodules.self_attention.submodules.core_attention = SDPAttention if backend == "sdpa" else DotProductAttention
    return spec


def get_dense_layer_spec(attention_backend: str = "sdpa") -> ModuleSpec:
    """Dense SwiGLU baseline: megatron-core's own ``MLP`` with a pre-MLP RMSNorm."""
    return with_attention_backend(get_gpt_layer_local_spec(normalization="RMSNorm"), attention_backend)


def get_vffn_mlp_spec(vffn: VersatileFFNConfig) -> ModuleSpec:
    backend = LocalSpecProvider()
    return ModuleSpec(
        module=VersatileFFN,
        params={"vffn": vffn},
        submodules=VersatileFFNSubmodules(
            norm=backend.layer_norm(rms_norm=True),
            linear_fc1=backend.column_parallel_linear(),
            linear_fc2=backend.row_parallel_linear(),
        ),
    )


def get_layer_spec(vffn: Optional[VersatileFFNConfig] = None, attention_backend: str = "sdpa") -> ModuleSpec:
    """The ``TransformerLayer`` spec for a VersatileFFN model, or the dense baseline when ``vffn`` is None.

    With VersatileFFN the layer's ``pre_mlp_layernorm`` becomes an identity: the block owns its RMSNorm
    because it re-applies it at every loop.
    """
    spec = get_dense_layer_spec(attention_backend)
    if vffn is None:
        return spec
    spec = copy.deepcopy(spec)
    spec.submodules.pre_mlp_layernorm = IdentityOp
    spec.submodules.mlp = get_vffn_mlp_spec(vffn)
    return spec
