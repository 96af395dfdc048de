"""megatron-core GPTModel state dicts <-> Hugging Face Llama / VersatileFFN-Llama state dicts.

Pure tensor bookkeeping (no megatron import). The architecture is the trainer's own ``GPTConfig`` plus the FFN
block's config: None (dense), ``VersatileFFNConfig``, ``KLoopConfig`` or ``MoEConfig``, as
``vffn_megatron.model.build_gpt_model`` takes them. Only dense and VersatileFFN models have an HF counterpart;
the k-loop and MoE baselines' rows serve the TP merge / split, shape checks and upcycling.

* :data:`TENSORS` - the one table: every tensor's megatron name, HF name(s), shape and tensor-parallel split,
  templated by layer (and by routed expert). Both conversion directions, the expected shapes of both sides, the
  TP split / merge rules and the routers an upcycled model keeps are read from it; :data:`UPCYCLE_RENAMES` /
  :data:`EXPERT_SLICES` say where a dense model's tensors go in every other architecture
  (:mod:`vffn_hf.upcycle`);
* :func:`hf_config_fields` / :func:`from_hf_config` - the trainer's configs <-> an HF ``LlamaConfig``;
* :func:`merge_tp_shards` / :func:`split_tp` - per-tensor-parallel-rank megatron state dicts <-> the full one;
* :func:`megatron_to_hf` / :func:`hf_to_megatron` - renaming and re-laying out the full tensors.

Layout facts (megatron-core 0.16.1, local layer spec):

* ``linear_qkv.weight`` is [groups x (q heads of the group, k, v) x head_dim, d]: per query group its query
  heads, then its key head, then its value head. HF keeps q_proj / k_proj / v_proj separately.
* ``linear_fc1.weight`` of a SwiGLU MLP is [gate; up] at TP=1, but under TP=t every rank holds its own
  [gate_r; up_r], so concatenating the shards is NOT [gate; up]: shards are de-interleaved.
* Column-parallel weights (qkv, fc1, output layer, word embeddings) are split on dim 0, row-parallel ones
  (linear_proj, linear_fc2) on dim 1, everything else (norms, VersatileFFN routers) is replicated.
  Contiguous dim-0 splits of qkv are whole query groups, so the qkv layout survives plain concatenation.
* RoPE is non-interleaved (rotate_half) in both, with megatron's ``rotary_base`` = HF ``rope_theta``.
"""
from __future__ import annotations

import dataclasses
import re
from dataclasses import dataclass
from typing import Dict, Iterator, List, Optional, Tuple, Union

import torch

from vffn_megatron.config import KLoopConfig, MoEConfig, VersatileFFNConfig
from vffn_megatron.model import GPTConfig

StateDict = Dict[str, torch.Tensor]
FFNBlock = Union[None, VersatileFFNConfig, KLoopConfig, MoEConfig]  # None: the dense FFN


class ConversionError(ValueError):
    """A checkpoint that does not fit the expected architecture; the message says what differs."""


# ----------------------------------------------------------------------------------------- the table
@dataclass(frozen=True)
class TensorRow:
    """One megatron tensor and its HF counterpart(s). ``{i}`` in a name is the layer index."""

    megatron: str  # ``{e}``: a routed expert's index (MoE)
    hf: Tuple[str, ...]  # several: the megatron tensor is split (``split``) into these, in this order; () = none
    shape: Tuple[str, ...]  # megatron shape, in the named sizes of :func:`_sizes`
    tp: Optional[str] = None  # "column" (split on dim 0), "row" (dim 1), None (replicated)
    split: Optional[str] = None  # the only two re-layouts: "qkv" (per query group), "gated" ([gate; up])
    # present only with one of these tags (:func:`_tags`): "untied" embeddings, the FFN kind ("dense", "vffn",
    # "kloop", "moe"), "moe_shared" (an MoE with a shared expert); None: always
    only: Optional[Tuple[str, ...]] = None


_M, _H = "decoder.layers.{i}.", "model.layers.{i}."
TENSORS: Tuple[TensorRow, ...] = (
    TensorRow("embedding.word_embeddings.weight", ("model.embed_tokens.weight",), ("vocab", "hidden"), tp="column"),
    TensorRow("decoder.final_layernorm.weight", ("model.norm.weight",), ("hidden",)),
    TensorRow("output_layer.weight", ("lm_head.weight",), ("vocab", "hidden"), tp="column", only=("untied",)),
    TensorRow(_M + "input_layernorm.weight", (_H + "input_layernorm.weight",), ("hidden",)),
    TensorRow(_M + "self_attention.linear_qkv.weight",
              (_H + "self_attn.q_proj.weight", _H + "self_attn.k_proj.weight", _H + "self_attn.v_proj.weight"),
              ("qkv", "hidden"), tp="column", split="qkv"),
    TensorRow(_M + "self_attention.linear_proj.weight", (_H + "self_attn.o_proj.weight",), ("hidden", "attn"),
              tp="row"),
    TensorRow(_M + "mlp.linear_fc1.weight", (_H + "mlp.gate_proj.weight", _H + "mlp.up_proj.weight"),
              ("gate+up", "hidden"), tp="column", split="gated", only=("dense", "vffn", "kloop")),
    TensorRow(_M + "mlp.linear_fc2.weight", (_H + "mlp.down_proj.weight",), ("hidden", "ffn"), tp="row",
              only=("dense", "vffn", "kloop")),
    TensorRow(_M + "pre_mlp_layernorm.weight", (_H + "post_attention_layernorm.weight",), ("hidden",),
              only=("dense", "moe")),
    TensorRow(_M + "mlp.norm.weight", (_H + "mlp.norm.weight",), ("hidden",), only=("vffn", "kloop")),
    TensorRow(_M + "mlp.router.weight", (_H + "mlp.router.weight",), ("experts", "hidden"), only=("vffn", "moe")),
    TensorRow(_M + "mlp.depth_router.weight", (_H + "mlp.depth_router.weight",), ("depth", "hidden"), only=("vffn",)),
    # megatron's MoELayer (local spec: SequentialMLP experts, SharedExpertMLP); no HF counterpart
    TensorRow(_M + "mlp.shared_experts.linear_fc1.weight", (), ("gate+up", "hidden"), tp="column", split="gated",
              only=("moe_shared",)),
    TensorRow(_M + "mlp.shared_experts.linear_fc2.weight", (), ("hidden", "ffn"), tp="row", only=("moe_shared",)),
    TensorRow(_M + "mlp.experts.local_experts.{e}.linear_fc1.weight", (), ("expert_gate+up", "hidden"),
              tp="column", split="gated", only=("moe",)),
    TensorRow(_M + "mlp.experts.local_experts.{e}.linear_fc2.weight", (), ("hidden", "expert_ffn"), tp="row",
              only=("moe",)),
)
# Upcycling a dense model into each architecture: where a dense tensor goes when its name changes (the others keep
# theirs). VersatileFFN and k-loop: the post-attention norm becomes the block's own norm (re-applied every loop);
# MoE: the dense FFN becomes the shared expert (pre_mlp_layernorm stays). Target tensors no dense tensor maps to
# keep the target model's fresh initialisation (routers; MoE routed experts unless sliced: EXPERT_SLICES).
_FC1, _FC2 = _M + "mlp.linear_fc1.weight", _M + "mlp.linear_fc2.weight"
UPCYCLE_RENAMES: Dict[str, Dict[str, str]] = {
    "dense": {},
    "vffn": {_M + "pre_mlp_layernorm.weight": _M + "mlp.norm.weight"},
    "kloop": {_M + "pre_mlp_layernorm.weight": _M + "mlp.norm.weight"},
    "moe": {_FC1: _M + "mlp.shared_experts.linear_fc1.weight", _FC2: _M + "mlp.shared_experts.linear_fc2.weight"},
}
UPCYCLED = UPCYCLE_RENAMES["vffn"]  # dense -> VersatileFFN
# MoE upcycle_experts=slices: routed expert e = hidden units [e*Fe, (e+1)*Fe) of the dense FFN (of its gate and up
# rows, of its down projection's columns), the way VersatileFFN's sub-experts are slices of its shared FFN.
EXPERT_SLICES = {_FC1: _M + "mlp.experts.local_experts.{e}.linear_fc1.weight",
                 _FC2: _M + "mlp.experts.local_experts.{e}.linear_fc2.weight"}


def ffn_kind(block: FFNBlock) -> str:
    """model.arch of an FFN block config: dense (None), vffn, kloop or moe."""
    if block is None:
        return "dense"
    for kind, cls in (("vffn", VersatileFFNConfig), ("kloop", KLoopConfig), ("moe", MoEConfig)):
        if isinstance(block, cls):
            return kind
    raise TypeError(f"no tensor table for an FFN block of type {type(block).__name__}")


def query_groups(m: GPTConfig) -> int:
    return m.num_query_groups or m.num_attention_heads


def head_dim(m: GPTConfig) -> int:
    return m.hidden_size // m.num_attention_heads


def _vocab(m: GPTConfig) -> int:
    if m.vocab_size is None:
        raise ConversionError("the model's vocab_size is unknown (config has vocab_size: null); pass it explicitly")
    return int(m.vocab_size)


def _sizes(m: GPTConfig, v: FFNBlock) -> Dict[str, int]:
    hd = head_dim(m)
    sizes = {"vocab": _vocab(m), "hidden": m.hidden_size, "attn": m.num_attention_heads * hd,
             "qkv": (m.num_attention_heads + 2 * query_groups(m)) * hd, "ffn": m.ffn_hidden_size,
             "gate+up": 2 * m.ffn_hidden_size}
    if isinstance(v, VersatileFFNConfig):
        sizes.update(experts=v.num_experts, depth=v.max_depth)
    elif isinstance(v, MoEConfig):
        fe = v.expert_hidden(m.ffn_hidden_size)
        sizes.update(experts=v.num_experts, expert_ffn=fe, **{"expert_gate+up": 2 * fe})
    return sizes


def _tags(m: GPTConfig, v: FFNBlock) -> set:
    tags = {ffn_kind(v)}
    if m.untie_embeddings_and_output_weights:
        tags.add("untied")
    if isinstance(v, MoEConfig) and v.shared_expert:
        tags.add("moe_shared")
    return tags


def _at(template: str, i: Optional[int]) -> str:
    return template if i is None else template.format(i=i)


def _expand(m: GPTConfig, v: FFNBlock) -> Iterator[Tuple[TensorRow, Optional[int]]]:
    """(row, layer index or None) of every tensor of the architecture: the global ones, then layer by layer (a
    routed-expert row once per expert, its ``{e}`` filled in)."""
    tags = _tags(m, v)
    rows = []
    for t in TENSORS:
        if t.only is None or tags.intersection(t.only):
            experts = range(v.num_experts) if "{e}" in t.megatron else [None]
            rows += [t if e is None else dataclasses.replace(t, megatron=t.megatron.replace("{e}", str(e)))
                     for e in experts]
    yield from ((t, None) for t in rows if "{i}" not in t.megatron)
    for i in range(m.num_layers):
        yield from ((t, i) for t in rows if "{i}" in t.megatron)


def _hf_block(v: FFNBlock) -> Optional[VersatileFFNConfig]:
    """``v`` for the HF side, which has dense and VersatileFFN models only."""
    if ffn_kind(v) not in ("dense", "vffn"):
        raise ConversionError(f"a {ffn_kind(v)} model has no Hugging Face counterpart here (only dense and "
                              f"VersatileFFN models convert)")
    return v


def _to_hf(t: TensorRow, w: torch.Tensor, m: GPTConfig) -> List[torch.Tensor]:
    if t.split == "qkv":
        groups, hd, heads = query_groups(m), head_dim(m), m.num_attention_heads
        per = heads // groups
        w = w.view(groups, per + 2, hd, -1)
        return [w[:, :per].reshape(heads * hd, -1), w[:, per].reshape(groups * hd, -1),
                w[:, per + 1].reshape(groups * hd, -1)]
    if t.split == "gated":
        return list(w.chunk(2, dim=0))
    return [w]


def _to_megatron(t: TensorRow, parts: List[torch.Tensor], m: GPTConfig) -> torch.Tensor:
    if t.split == "qkv":
        groups, hd = query_groups(m), head_dim(m)
        q, k, v = parts
        d = q.shape[-1]
        return torch.cat([q.view(groups, -1, hd, d), k.view(groups, 1, hd, d), v.view(groups, 1, hd, d)],
                         dim=1).reshape(-1, d)
    if t.split == "gated":
        return torch.cat(parts)
    return parts[0]


def megatron_shapes(m: GPTConfig, v: FFNBlock = None) -> Dict[str, tuple]:
    """Name -> shape of every tensor of the full (TP=1) megatron model (any FFN kind)."""
    sizes = _sizes(m, v)
    return {_at(t.megatron, i): tuple(sizes[s] for s in t.shape) for t, i in _expand(m, v)}


def hf_shapes(m: GPTConfig, v: Optional[VersatileFFNConfig] = None) -> Dict[str, tuple]:
    """Name -> shape of every tensor of the HF model (``lm_head.weight`` included when tied): the megatron
    shapes carried through the conversion itself, on meta tensors."""
    meta = {k: torch.empty(s, device="meta") for k, s in megatron_shapes(m, _hf_block(v)).items()}
    return {k: tuple(x.shape) for k, x in _megatron_to_hf(meta, m, v).items()}


# ----------------------------------------------------------------------------------------- configs
# GPTConfig field -> LlamaConfig attribute, where the value carries over as it is.
_CONFIG_NAMES = {"num_layers": "num_hidden_layers", "hidden_size": "hidden_size",
                 "num_attention_heads": "num_attention_heads", "ffn_hidden_size": "intermediate_size",
                 "vocab_size": "vocab_size", "seq_length": "max_position_embeddings", "norm_epsilon": "rms_norm_eps"}
# VersatileFFNLlamaConfig.vffn_<name> is VersatileFFNConfig.<name>, for the fields that shape the weights.
HF_VFFN_PREFIX = "vffn_"


def hf_config_fields(m: GPTConfig, v: Optional[VersatileFFNConfig] = None) -> dict:
    """The ``LlamaConfig`` / ``VersatileFFNLlamaConfig`` keyword arguments that describe this architecture."""
    fields = {hf: getattr(m, name) for name, hf in _CONFIG_NAMES.items()}
    fields.update(vocab_size=_vocab(m), num_key_value_heads=query_groups(m), head_dim=head_dim(m),
                  tie_word_embeddings=not m.untie_embeddings_and_output_weights,
                  rope_parameters={"rope_type": "default", "rope_theta": float(m.rotary_base)},
                  hidden_act="silu", attention_bias=False, mlp_bias=False)
    if v is not None:
        fields.update({HF_VFFN_PREFIX + k: getattr(v, k) for k in VersatileFFNConfig.ARCH_FIELDS})
    return fields


def from_hf_config(cfg) -> Tuple[GPTConfig, Optional[VersatileFFNConfig]]:
    """(GPTConfig, VersatileFFNConfig or None) of a ``LlamaConfig`` (or the VersatileFFN subclass); refuses
    Llama variants megatron's spec lacks. The VersatileFFNConfig carries the HF model's block shape; its
    training-only fields (temperature schedule, aux loss, recompute) are the defaults."""
    def refuse(why):
        raise ConversionError(f"cannot convert this HF model: {why}")

    if getattr(cfg, "hidden_act", "silu") != "silu":
        refuse(f"hidden_act={cfg.hidden_act!r} (only SwiGLU with silu is supported)")
    if getattr(cfg, "attention_bias", False) or getattr(cfg, "mlp_bias", False):
        refuse("attention_bias / mlp_bias are set (the megatron models are bias-free)")
    hd = getattr(cfg, "head_dim", None) or cfg.hidden_size // cfg.num_attention_heads
    if hd * cfg.num_attention_heads != cfg.hidden_size:
        refuse(f"head_dim ({hd}) x num_attention_heads ({cfg.num_attention_heads}) != hidden_size "
               f"({cfg.hidden_size})")
    rope = dict(getattr(cfg, "rope_parameters", None) or {})
    if rope.get("rope_type", "default") != "default":
        refuse(f"rope_type={rope['rope_type']!r} (only plain RoPE is supported)")
    if rope.get("partial_rotary_factor", 1.0) != 1.0:
        refuse("partial_rotary_factor != 1")
    kv = cfg.num_key_value_heads or cfg.num_attention_heads
    model = GPTConfig(**{name: getattr(cfg, hf) for name, hf in _CONFIG_NAMES.items()},
                      num_query_groups=None if kv == cfg.num_attention_heads else kv,
                      rotary_base=rope.get("rope_theta", getattr(cfg, "rope_theta", 10000.0)),
                      untie_embeddings_and_output_weights=not cfg.tie_word_embeddings)
    vffn = None
    if getattr(cfg, HF_VFFN_PREFIX + VersatileFFNConfig.ARCH_FIELDS[0], None) is not None:
        vffn = VersatileFFNConfig(**{k: getattr(cfg, HF_VFFN_PREFIX + k) for k in VersatileFFNConfig.ARCH_FIELDS})
    return model, vffn


# ----------------------------------------------------------------------------------------- tensor parallelism
def _name_pattern(rows) -> "re.Pattern":
    """The names of these rows (layer ones by their part after the layer prefix; any expert index) at the end of
    a key."""
    names = (re.escape(t.megatron.split("{i}.")[-1]).replace(re.escape("{e}"), r"\d+") for t in rows)
    return re.compile(r"(?:^|\.)(" + "|".join(names) + ")$")


_COLUMN = _name_pattern([t for t in TENSORS if t.tp == "column"])
_ROW = _name_pattern([t for t in TENSORS if t.tp == "row"])
_GATED = _name_pattern([t for t in TENSORS if t.split == "gated"])


def _drop_extra_state(sd: StateDict) -> StateDict:
    """megatron's ``*._extra_state`` entries (None, or FP8 metadata bytes) carry no weights."""
    return {k: v for k, v in sd.items() if not k.endswith("_extra_state")}


def merge_tp_shards(shards: List[StateDict]) -> StateDict:
    """Full megatron state dict from the state dicts of TP ranks 0..t-1 (in rank order).

    Column-parallel weights are concatenated on dim 0 (fc1 per half: gate shards, then up shards), row-parallel
    ones on dim 1; replicated tensors must be equal on every rank (a mismatch means mixed-up checkpoints).
    """
    if not shards:
        raise ConversionError("no tensor-parallel shards given")
    shards = [_drop_extra_state(s) for s in shards]
    keys = list(shards[0])
    for r, s in enumerate(shards[1:], 1):
        if set(s) != set(keys):
            diff = sorted(set(s) ^ set(keys))[:5]
            raise ConversionError(f"TP rank {r} has different parameter names than rank 0, e.g. {diff}")
    out: StateDict = {}
    for k in keys:
        parts = [s[k] for s in shards]
        if len(parts) == 1:
            out[k] = parts[0]
        elif _GATED.search(k):
            gates, ups = zip(*(p.chunk(2, dim=0) for p in parts))
            out[k] = torch.cat([*gates, *ups], dim=0)
        elif _COLUMN.search(k):
            out[k] = torch.cat(parts, dim=0)
        elif _ROW.search(k):
            out[k] = torch.cat(parts, dim=1)
        else:
            for r, p in enumerate(parts[1:], 1):
                if p.shape != parts[0].shape or not torch.equal(p, parts[0]):
                    raise ConversionError(f"{k}: replicated tensor differs between TP rank 0 and rank {r}")
            out[k] = parts[0]
    return out


def split_tp(sd: StateDict, tp: int) -> List[StateDict]:
    """Inverse of :func:`merge_tp_shards`: the state dict of every TP rank (views, cloned contiguous)."""
    if tp < 1:
        raise ConversionError(f"tensor-parallel size must be >= 1, got {tp}")
    ranks: List[StateDict] = [{} for _ in range(tp)]
    for k, v in _drop_extra_state(sd).items():
        if tp == 1:
            parts = [v]
        elif _GATED.search(k):
            gate, up = v.chunk(2, dim=0)
            parts = [torch.cat(pair, dim=0) for pair in zip(_chunk(k, gate, tp, 0), _chunk(k, up, tp, 0))]
        elif _COLUMN.search(k):
            parts = _chunk(k, v, tp, 0)
        elif _ROW.search(k):
            parts = _chunk(k, v, tp, 1)
        else:
            parts = [v] * tp
        for r in range(tp):
            ranks[r][k] = parts[r].clone().contiguous()
    return ranks


def _chunk(name: str, t: torch.Tensor, tp: int, dim: int) -> List[torch.Tensor]:
    if t.shape[dim] % tp:
        raise ConversionError(f"{name}: size {t.shape[dim]} on dim {dim} is not divisible by tensor-parallel size {tp}")
    return list(t.chunk(tp, dim=dim))


# ----------------------------------------------------------------------------------------- megatron <-> HF
def _check(sd: StateDict, expected: Dict[str, tuple], what: str) -> None:
    """Every expected tensor present with its shape, nothing unexpected: a wrong-architecture checkpoint fails
    here, naming keys, rather than converting into a silently different model."""
    missing = [k for k in expected if k not in sd]
    unexpected = [k for k in sd if k not in expected]
    wrong = [f"{k}: {tuple(sd[k].shape)} != expected {expected[k]}" for k in expected
             if k in sd and tuple(sd[k].shape) != tuple(expected[k])]
    if missing or unexpected or wrong:
        lines = []
        if missing:
            lines.append(f"missing {len(missing)} tensor(s), e.g. {missing[:4]}")
        if unexpected:
            lines.append(f"unexpected {len(unexpected)} tensor(s), e.g. {unexpected[:4]}")
        if wrong:
            lines.append("wrong shapes: " + "; ".join(wrong[:4]))
        hint = ""
        if any(".mlp.router." in k for k in unexpected) or any(".mlp.router." in k for k in missing):
            hint = " (VersatileFFN vs dense: check model.arch / the vffn section of the config)"
        elif any(".mlp." in k for k in unexpected + missing):
            hint = " (another FFN kind: check model.arch and its section of the config)"
        raise ConversionError(f"{what} does not match the architecture{hint}: " + " | ".join(lines))


def _megatron_to_hf(sd: StateDict, m: GPTConfig, v: Optional[VersatileFFNConfig]) -> StateDict:
    out: StateDict = {}
    for t, i in _expand(m, v):
        out.update(zip((_at(h, i) for h in t.hf), _to_hf(t, sd[_at(t.megatron, i)], m)))
    if not m.untie_embeddings_and_output_weights:
        out["lm_head.weight"] = out["model.embed_tokens.weight"]  # tied: HF still names the output layer
    return out


def megatron_to_hf(sd: StateDict, m: GPTConfig, v: Optional[VersatileFFNConfig] = None) -> StateDict:
    """Full (TP-merged) megatron GPTModel state dict -> HF ``LlamaForCausalLM`` / ``VersatileFFNLlamaForCausalLM``."""
    _hf_block(v)
    sd = _drop_extra_state(sd)
    _check(sd, megatron_shapes(m, v), "megatron state dict")
    return {k: x.contiguous() for k, x in _megatron_to_hf(sd, m, v).items()}


def hf_to_megatron(sd: StateDict, m: GPTConfig, v: Optional[VersatileFFNConfig] = None,
                   target_vffn: Optional[VersatileFFNConfig] = None) -> StateDict:
    """HF state dict (architecture ``m`` / ``v``) -> full megatron state dict.

    ``target_vffn`` (upcycling): convert a *dense* HF model into a VersatileFFN megatron model with these block
    hyper-parameters (:func:`vffn_hf.upcycle.upcycle_dense`); the routers are not in the result (the caller keeps
    the target model's fresh initialisation: :func:`router_keys`).
    """
    sd = {k: x for k, x in sd.items() if not k.endswith("rotary_emb.inv_freq")}
    expected = hf_shapes(m, v)
    if not m.untie_embeddings_and_output_weights:  # tied: the embedding is the output layer
        sd.pop("lm_head.weight", None)
        expected.pop("lm_head.weight")
    _check(sd, expected, "HF state dict")
    if target_vffn is not None and v is not None:
        raise ConversionError("upcycling takes a dense model, but this HF model is already a VersatileFFN model")
    out: StateDict = {}
    for t, i in _expand(m, v):
        out[_at(t.megatron, i)] = _to_megatron(t, [sd[_at(h, i)] for h in t.hf], m)
    out = {k: x.contiguous() for k, x in out.items()}
    if target_vffn is not None:
        from .upcycle import upcycle_dense

        out = upcycle_dense(out, m, target_vffn).state_dict
    return out


def router_keys(num_layers: int) -> List[str]:
    """The megatron keys an upcycled model takes from its fresh initialisation (not from the dense model)."""
    fresh = [t.megatron for t in TENSORS if t.only and "vffn" in t.only and "dense" not in t.only
             and t.megatron not in UPCYCLED.values()]
    return [name.format(i=i) for i in range(num_layers) for name in fresh]


def load_into_megatron(model: torch.nn.Module, sd: StateDict, keep: tuple = ()) -> None:
    """Load a (TP-local) converted state dict into a built megatron model, strictly: only ``_extra_state``
    entries and the names in ``keep`` (left at the model's own initialisation) may be absent."""
    result = model.load_state_dict(sd, strict=False)
    missing = [k for k in result.missing_keys if not k.endswith("_extra_state") and k not in keep]
    if missing or result.unexpected_keys:
        raise ConversionError(f"state dict does not fit the megatron model: missing {missing[:4]}, "
                              f"unexpected {list(result.unexpected_keys)[:4]}")
