"""megatron-core GPTModel state dicts <-> Hugging Face Llama / VersatileFFN-Llama state dicts.

Pure tensor bookkeeping (no megatron import), in three layers:

* :class:`Arch` - the architecture facts a conversion needs, from the trainer's model config or an HF config;
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

import re
from dataclasses import dataclass, field
from typing import Dict, List, Optional

import torch

StateDict = Dict[str, torch.Tensor]


class ConversionError(ValueError):
    """A checkpoint that does not fit the expected architecture; the message says what differs."""


# ----------------------------------------------------------------------------------------- architecture
@dataclass
class Arch:
    """What a conversion needs to know; ``vffn`` is None for the dense baseline."""

    num_layers: int
    hidden_size: int
    num_attention_heads: int
    ffn_hidden_size: int
    vocab_size: int
    num_query_groups: Optional[int] = None
    seq_length: int = 2048
    rotary_base: float = 10000
    norm_epsilon: float = 1e-5
    untie_embeddings_and_output_weights: bool = True
    vffn: Optional[dict] = None  # {"num_experts", "top_k", "max_depth"}
    extra: dict = field(default_factory=dict)

    @property
    def groups(self) -> int:
        return self.num_query_groups or self.num_attention_heads

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_attention_heads

    @classmethod
    def from_megatron(cls, model_cfg, vffn_cfg=None, vocab_size: Optional[int] = None) -> "Arch":
        """From a ``GPTConfig``-like object (attributes or a dict) and a ``VersatileFFNConfig``-like one or None."""
        get = (lambda k, d=None: model_cfg.get(k, d)) if isinstance(model_cfg, dict) else \
            (lambda k, d=None: getattr(model_cfg, k, d))
        vffn = None
        if vffn_cfg is not None:
            vget = (lambda k: vffn_cfg[k]) if isinstance(vffn_cfg, dict) else (lambda k: getattr(vffn_cfg, k))
            vffn = {k: int(vget(k)) for k in ("num_experts", "top_k", "max_depth")}
        vocab = vocab_size if vocab_size is not None else get("vocab_size")
        if vocab is None:
            raise ConversionError("the model's vocab_size is unknown (config has vocab_size: null); pass it explicitly")
        return cls(num_layers=get("num_layers"), hidden_size=get("hidden_size"),
                   num_attention_heads=get("num_attention_heads"), num_query_groups=get("num_query_groups"),
                   ffn_hidden_size=get("ffn_hidden_size"), vocab_size=int(vocab), seq_length=get("seq_length", 2048),
                   rotary_base=get("rotary_base", 10000), norm_epsilon=get("norm_epsilon", 1e-5),
                   untie_embeddings_and_output_weights=get("untie_embeddings_and_output_weights", True), vffn=vffn)

    @classmethod
    def from_hf_config(cls, cfg) -> "Arch":
        """From a ``LlamaConfig`` (or the VersatileFFN subclass); refuses Llama variants megatron's spec lacks."""
        def refuse(why):
            raise ConversionError(f"cannot convert this HF model: {why}")

        if getattr(cfg, "hidden_act", "silu") != "silu":
            refuse(f"hidden_act={cfg.hidden_act!r} (only SwiGLU with silu is supported)")
        if getattr(cfg, "attention_bias", False) or getattr(cfg, "mlp_bias", False):
            refuse("attention_bias / mlp_bias are set (the megatron models are bias-free)")
        head_dim = getattr(cfg, "head_dim", None) or cfg.hidden_size // cfg.num_attention_heads
        if head_dim * cfg.num_attention_heads != cfg.hidden_size:
            refuse(f"head_dim ({head_dim}) x num_attention_heads ({cfg.num_attention_heads}) != hidden_size "
                   f"({cfg.hidden_size})")
        rope = dict(getattr(cfg, "rope_parameters", None) or {})
        if rope.get("rope_type", "default") != "default":
            refuse(f"rope_type={rope['rope_type']!r} (only plain RoPE is supported)")
        if rope.get("partial_rotary_factor", 1.0) != 1.0:
            refuse("partial_rotary_factor != 1")
        theta = rope.get("rope_theta", getattr(cfg, "rope_theta", 10000.0))
        vffn = None
        if getattr(cfg, "vffn_num_experts", None) is not None:
            vffn = {"num_experts": cfg.vffn_num_experts, "top_k": cfg.vffn_top_k, "max_depth": cfg.vffn_max_depth}
        kv = cfg.num_key_value_heads or cfg.num_attention_heads
        return cls(num_layers=cfg.num_hidden_layers, hidden_size=cfg.hidden_size,
                   num_attention_heads=cfg.num_attention_heads,
                   num_query_groups=None if kv == cfg.num_attention_heads else kv,
                   ffn_hidden_size=cfg.intermediate_size, vocab_size=cfg.vocab_size,
                   seq_length=cfg.max_position_embeddings, rotary_base=theta, norm_epsilon=cfg.rms_norm_eps,
                   untie_embeddings_and_output_weights=not cfg.tie_word_embeddings, vffn=vffn)

    def with_vffn(self, vffn: Optional[dict]) -> "Arch":
        return Arch(**{**self.__dict__, "vffn": dict(vffn) if vffn else None})


# ----------------------------------------------------------------------------------------- tensor parallelism
_COLUMN = re.compile(r"(self_attention\.linear_qkv|mlp\.linear_fc1|output_layer|embedding\.word_embeddings)\.weight$")
_ROW = re.compile(r"(self_attention\.linear_proj|mlp\.linear_fc2)\.weight$")
_GATED = re.compile(r"mlp\.linear_fc1\.weight$")


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
def _qkv_split(w: torch.Tensor, a: Arch):
    per = a.num_attention_heads // a.groups
    w = w.view(a.groups, per + 2, a.head_dim, -1)
    return (w[:, :per].reshape(a.num_attention_heads * a.head_dim, -1),
            w[:, per].reshape(a.groups * a.head_dim, -1), w[:, per + 1].reshape(a.groups * a.head_dim, -1))


def _qkv_join(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, a: Arch) -> torch.Tensor:
    per, hd = a.num_attention_heads // a.groups, a.head_dim
    d = q.shape[-1]
    return torch.cat([q.view(a.groups, per, hd, d), k.view(a.groups, 1, hd, d), v.view(a.groups, 1, hd, d)],
                     dim=1).reshape(-1, d)


def _expected_shapes_megatron(a: Arch) -> Dict[str, tuple]:
    d, f, hd = a.hidden_size, a.ffn_hidden_size, a.head_dim
    shapes = {"embedding.word_embeddings.weight": (a.vocab_size, d), "decoder.final_layernorm.weight": (d,)}
    if a.untie_embeddings_and_output_weights:
        shapes["output_layer.weight"] = (a.vocab_size, d)
    for i in range(a.num_layers):
        p = f"decoder.layers.{i}."
        shapes[p + "input_layernorm.weight"] = (d,)
        shapes[p + "self_attention.linear_qkv.weight"] = ((a.num_attention_heads + 2 * a.groups) * hd, d)
        shapes[p + "self_attention.linear_proj.weight"] = (d, a.num_attention_heads * hd)
        shapes[p + "mlp.linear_fc1.weight"] = (2 * f, d)
        shapes[p + "mlp.linear_fc2.weight"] = (d, f)
        if a.vffn:
            shapes[p + "mlp.norm.weight"] = (d,)
            shapes[p + "mlp.router.weight"] = (a.vffn["num_experts"], d)
            shapes[p + "mlp.depth_router.weight"] = (a.vffn["max_depth"], d)
        else:
            shapes[p + "pre_mlp_layernorm.weight"] = (d,)
    return shapes


def _check(sd: StateDict, expected: Dict[str, tuple], what: str, optional: tuple = ()) -> None:
    """Every expected tensor present with its shape, nothing unexpected: a wrong-architecture checkpoint fails
    here, naming keys, rather than converting into a silently different model."""
    missing = [k for k in expected if k not in sd and k not in optional]
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
        raise ConversionError(f"{what} does not match the architecture{hint}: " + " | ".join(lines))


def megatron_to_hf(sd: StateDict, a: Arch) -> StateDict:
    """Full (TP-merged) megatron GPTModel state dict -> HF ``LlamaForCausalLM`` / ``VersatileFFNLlamaForCausalLM``."""
    sd = _drop_extra_state(sd)
    _check(sd, _expected_shapes_megatron(a), "megatron state dict")
    f = a.ffn_hidden_size
    out: StateDict = {"model.embed_tokens.weight": sd["embedding.word_embeddings.weight"],
                      "model.norm.weight": sd["decoder.final_layernorm.weight"]}
    out["lm_head.weight"] = sd["output_layer.weight" if a.untie_embeddings_and_output_weights
                               else "embedding.word_embeddings.weight"]
    for i in range(a.num_layers):
        m, h = f"decoder.layers.{i}.", f"model.layers.{i}."
        out[h + "input_layernorm.weight"] = sd[m + "input_layernorm.weight"]
        q, k, v = _qkv_split(sd[m + "self_attention.linear_qkv.weight"], a)
        out[h + "self_attn.q_proj.weight"], out[h + "self_attn.k_proj.weight"], out[h + "self_attn.v_proj.weight"] = q, k, v
        out[h + "self_attn.o_proj.weight"] = sd[m + "self_attention.linear_proj.weight"]
        fc1 = sd[m + "mlp.linear_fc1.weight"]
        out[h + "mlp.gate_proj.weight"], out[h + "mlp.up_proj.weight"] = fc1[:f], fc1[f:]
        out[h + "mlp.down_proj.weight"] = sd[m + "mlp.linear_fc2.weight"]
        if a.vffn:
            for name in ("norm", "router", "depth_router"):
                out[h + f"mlp.{name}.weight"] = sd[m + f"mlp.{name}.weight"]
        else:
            out[h + "post_attention_layernorm.weight"] = sd[m + "pre_mlp_layernorm.weight"]
    return {k: v.contiguous() for k, v in out.items()}


def _expected_shapes_hf(a: Arch) -> Dict[str, tuple]:
    d, f, hd = a.hidden_size, a.ffn_hidden_size, a.head_dim
    shapes = {"model.embed_tokens.weight": (a.vocab_size, d), "model.norm.weight": (d,),
              "lm_head.weight": (a.vocab_size, d)}
    for i in range(a.num_layers):
        p = f"model.layers.{i}."
        shapes[p + "input_layernorm.weight"] = (d,)
        shapes[p + "self_attn.q_proj.weight"] = (a.num_attention_heads * hd, d)
        shapes[p + "self_attn.k_proj.weight"] = (a.groups * hd, d)
        shapes[p + "self_attn.v_proj.weight"] = (a.groups * hd, d)
        shapes[p + "self_attn.o_proj.weight"] = (d, a.num_attention_heads * hd)
        for n, shape in (("gate_proj", (f, d)), ("up_proj", (f, d)), ("down_proj", (d, f))):
            shapes[p + f"mlp.{n}.weight"] = shape
        if a.vffn:
            shapes[p + "mlp.norm.weight"] = (d,)
            shapes[p + "mlp.router.weight"] = (a.vffn["num_experts"], d)
            shapes[p + "mlp.depth_router.weight"] = (a.vffn["max_depth"], d)
        else:
            shapes[p + "post_attention_layernorm.weight"] = (d,)
    return shapes


def hf_to_megatron(sd: StateDict, a: Arch, target_vffn: Optional[dict] = None) -> StateDict:
    """HF state dict (architecture ``a``) -> full megatron state dict.

    ``target_vffn`` (upcycling): convert a *dense* HF model into a VersatileFFN megatron model with these block
    hyper-parameters. The dense post-attention norm becomes the block's own norm and the dense FFN its shared
    FFN; the routers are not in the result (the caller keeps the target model's fresh initialisation).
    """
    sd = {k: v for k, v in sd.items() if not k.endswith("rotary_emb.inv_freq")}
    optional = () if a.untie_embeddings_and_output_weights else ("lm_head.weight",)
    if not a.untie_embeddings_and_output_weights and "lm_head.weight" in sd:
        sd = {k: v for k, v in sd.items() if k != "lm_head.weight"}  # tied: the embedding is the output layer
    _check(sd, _expected_shapes_hf(a), "HF state dict", optional=optional)
    if target_vffn is not None and a.vffn is not None:
        raise ConversionError("upcycling takes a dense model, but this HF model is already a VersatileFFN model")
    vffn_out = target_vffn is not None or a.vffn is not None
    out: StateDict = {"embedding.word_embeddings.weight": sd["model.embed_tokens.weight"],
                      "decoder.final_layernorm.weight": sd["model.norm.weight"]}
    if a.untie_embeddings_and_output_weights:
        out["output_layer.weight"] = sd["lm_head.weight"]
    for i in range(a.num_layers):
        m, h = f"decoder.layers.{i}.", f"model.layers.{i}."
        out[m + "input_layernorm.weight"] = sd[h + "input_layernorm.weight"]
        out[m + "self_attention.linear_qkv.weight"] = _qkv_join(
            sd[h + "self_attn.q_proj.weight"], sd[h + "self_attn.k_proj.weight"], sd[h + "self_attn.v_proj.weight"], a)
        out[m + "self_attention.linear_proj.weight"] = sd[h + "self_attn.o_proj.weight"]
        out[m + "mlp.linear_fc1.weight"] = torch.cat([sd[h + "mlp.gate_proj.weight"], sd[h + "mlp.up_proj.weight"]])
        out[m + "mlp.linear_fc2.weight"] = sd[h + "mlp.down_proj.weight"]
        if a.vffn:
            for name in ("norm", "router", "depth_router"):
                out[m + f"mlp.{name}.weight"] = sd[h + f"mlp.{name}.weight"]
        elif vffn_out:
            out[m + "mlp.norm.weight"] = sd[h + "post_attention_layernorm.weight"]
        else:
            out[m + "pre_mlp_layernorm.weight"] = sd[h + "post_attention_layernorm.weight"]
    return {k: v.contiguous() for k, v in out.items()}


def router_keys(num_layers: int) -> List[str]:
    """The megatron keys an upcycled model takes from its fresh initialisation (not from the dense model)."""
    return [f"decoder.layers.{i}.mlp.{n}.weight" for i in range(num_layers) for n in ("router", "depth_router")]


def load_into_megatron(model: torch.nn.Module, sd: StateDict, keep: tuple = ()) -> None:
    """Load a (TP-local) converted state dict into a built megatron model, strictly: only ``_extra_state``
    entries and the names in ``keep`` (left at the model's own initialisation) may be absent."""
    result = model.load_state_dict(sd, strict=False)
    missing = [k for k in result.missing_keys if not k.endswith("_extra_state") and k not in keep]
    if missing or result.unexpected_keys:
        raise ConversionError(f"state dict does not fit the megatron model: missing {missing[:4]}, "
                              f"unexpected {list(result.unexpected_keys)[:4]}")
