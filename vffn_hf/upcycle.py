"""Upcycling: a dense megatron state dict -> the state dict of the same model with another FFN block.

Where every dense tensor goes is read from the one table, :mod:`vffn_hf.convert` (``TENSORS``,
``UPCYCLE_RENAMES``, ``EXPERT_SLICES``); this module only applies it. Per target (``model.arch``):

* dense: every tensor as it is (continued pretraining);
* vffn / kloop: the dense FFN becomes the shared FFN, the post-attention norm the block's own norm; VersatileFFN's
  router and depth router are fresh;
* moe: the dense FFN becomes megatron's shared expert (pre_mlp_layernorm stays); the routed experts are
  ``slices`` (expert e = the dense FFN's hidden units [e*Fe, (e+1)*Fe), Fe = F / num_experts) or ``fresh``; the
  router is fresh.

"Fresh" tensors are not in the result: the caller loads it with ``load_into_megatron(..., keep=fresh)``, so
they keep the target model's own initialisation (the run seed). Pure tensor bookkeeping, no megatron import.
"""
from __future__ import annotations

from typing import List, NamedTuple

import torch

from vffn_megatron.config import UPCYCLE_EXPERTS, MoEConfig
from vffn_megatron.model import GPTConfig

from .convert import (EXPERT_SLICES, TENSORS, UPCYCLE_RENAMES, ConversionError, FFNBlock, StateDict, _at, _check,
                      _drop_extra_state, ffn_kind, megatron_shapes)



class Upcycled(NamedTuple):
    state_dict: StateDict  # full (TP=1) megatron state dict of the target model, fresh tensors left out
    fresh: List[str]  # the target's tensors that keep the target model's initialisation
    description: str  # e.g. "upcycled dense -> moe (experts: slices; fresh router)"


def _slice(template: str, w: torch.Tensor, e: int, size: int) -> torch.Tensor:
    """Hidden units [e*size, (e+1)*size) of a dense FFN weight, laid out as the table's row says."""
    row = next(t for t in TENSORS if t.megatron == template)
    units = slice(e * size, (e + 1) * size)
    if row.split == "gated":  # [gate; up]: the same units of both halves
        gate, up = w.chunk(2, dim=0)
        return torch.cat([gate[units], up[units]], dim=0)
    return w[:, units]  # fc2: its columns


def describe(target: FFNBlock, experts: str = "slices") -> str:
    """The one-line summary of upcycling a dense model into ``target``."""
    kind = ffn_kind(target)
    if kind == "dense":
        return "weights copied (dense -> dense)"
    extra = {"vffn": " (fresh routers)", "kloop": "",
             "moe": f" (experts: {experts}; fresh router)"}[kind]
    return f"upcycled dense -> {kind}{extra}"


def upcycle_dense(sd: StateDict, m: GPTConfig, target: FFNBlock, experts: str = "slices") -> Upcycled:
    """The dense model ``sd`` (full megatron state dict of architecture ``m``) as a model whose FFN is ``target``
    (None, VersatileFFNConfig, KLoopConfig, MoEConfig); ``experts``: ``slices`` | ``fresh`` (MoE only)."""
    kind = ffn_kind(target)
    if experts not in UPCYCLE_EXPERTS:
        raise ConversionError(f"moe.upcycle_experts must be one of {', '.join(UPCYCLE_EXPERTS)}, got {experts!r}")
    sd = _drop_extra_state(sd)
    _check(sd, megatron_shapes(m, None), "the dense state dict")
    slices = kind == "moe" and experts == "slices"
    if isinstance(target, MoEConfig):
        if not target.shared_expert:
            raise ConversionError("upcycling a dense model into an MoE needs moe.shared_expert=true (the dense FFN "
                                  "becomes the shared expert)")
        size = target.expert_hidden(m.ffn_hidden_size)
        if slices and size * target.num_experts != m.ffn_hidden_size:
            raise ConversionError(
                f"moe.upcycle_experts=slices makes expert e the dense FFN's hidden slice e, so the experts' hidden "
                f"size must be ffn_hidden_size / num_experts = {m.ffn_hidden_size // target.num_experts} (got "
                f"{size}): set moe.expert_ffn_hidden_size=null, or moe.upcycle_experts=fresh")
    renames = UPCYCLE_RENAMES[kind]
    out: StateDict = {}
    for src, dst in (EXPERT_SLICES.items() if slices else ()):
        for i in range(m.num_layers):
            for e in range(target.num_experts):
                out[_at(dst.replace("{e}", str(e)), i)] = _slice(src, sd[_at(src, i)], e, size)
    layer_names = {_at(src, i): _at(dst, i) for src, dst in renames.items() for i in range(m.num_layers)}
    out.update({layer_names.get(k, k): v for k, v in sd.items()})
    expected = megatron_shapes(m, target)
    fresh = [k for k in expected if k not in out]
    _check(out, {k: s for k, s in expected.items() if k in out}, f"the model upcycled into {kind}")
    return Upcycled({k: v.contiguous() for k, v in out.items()}, fresh, describe(target, experts))
