"""Layout bookkeeping of vffn_hf.convert: TP split/merge, qkv and gated fc1 layouts, errors (no megatron), and the
mapping table itself: megatron -> HF -> megatron is the identity, and the shapes it derives are the real models'."""
import dataclasses

import pytest
import torch

from vffn_hf.convert import (ConversionError, from_hf_config, head_dim, hf_shapes, hf_to_megatron, megatron_shapes,
                             megatron_to_hf, merge_tp_shards, query_groups, router_keys, split_tp)
from vffn_megatron.config import VersatileFFNConfig
from vffn_megatron.model import GPTConfig

MODEL = GPTConfig(num_layers=1, hidden_size=8, num_attention_heads=4, num_query_groups=2, ffn_hidden_size=16,
                  vocab_size=12)
VFFN = VersatileFFNConfig(num_experts=4, top_k=2, max_depth=3)


def _random_megatron(m=MODEL, v=VFFN):
    g = torch.Generator().manual_seed(0)
    d, f, hd = m.hidden_size, m.ffn_hidden_size, head_dim(m)
    p = "decoder.layers.0."
    return {
        "embedding.word_embeddings.weight": torch.randn(m.vocab_size, d, generator=g),
        "output_layer.weight": torch.randn(m.vocab_size, d, generator=g),
        "decoder.final_layernorm.weight": torch.randn(d, generator=g),
        p + "input_layernorm.weight": torch.randn(d, generator=g),
        p + "self_attention.linear_qkv.weight": torch.randn((m.num_attention_heads + 2 * query_groups(m)) * hd, d,
                                                            generator=g),
        p + "self_attention.linear_qkv._extra_state": None,
        p + "self_attention.linear_proj.weight": torch.randn(d, d, generator=g),
        p + "mlp.norm.weight": torch.randn(d, generator=g),
        p + "mlp.linear_fc1.weight": torch.randn(2 * f, d, generator=g),
        p + "mlp.linear_fc2.weight": torch.randn(d, f, generator=g),
        p + "mlp.router.weight": torch.randn(4, d, generator=g),
        p + "mlp.depth_router.weight": torch.randn(3, d, generator=g),
    }


@pytest.mark.parametrize("tp", [1, 2, 4])
def test_split_merge_round_trip(tp):
    sd = _random_megatron()
    back = merge_tp_shards(split_tp(sd, tp))
    assert set(back) == {k for k in sd if not k.endswith("_extra_state")}
    for k, v in back.items():
        assert torch.equal(v, sd[k]), k


def test_gated_fc1_shards_are_deinterleaved():
    sd = _random_megatron()
    f = MODEL.ffn_hidden_size
    gate, up = sd["decoder.layers.0.mlp.linear_fc1.weight"].split(f)
    shards = split_tp(sd, 2)
    for r in range(2):  # megatron's layout: every rank holds [gate_r; up_r]
        local = shards[r]["decoder.layers.0.mlp.linear_fc1.weight"]
        assert torch.equal(local, torch.cat([gate[r * f // 2:(r + 1) * f // 2], up[r * f // 2:(r + 1) * f // 2]]))
    assert torch.equal(shards[1]["decoder.layers.0.mlp.linear_fc2.weight"],
                       sd["decoder.layers.0.mlp.linear_fc2.weight"][:, f // 2:])


def test_qkv_layout_per_query_group():
    sd = _random_megatron()
    hf = megatron_to_hf(sd, MODEL, VFFN)
    qkv = sd["decoder.layers.0.self_attention.linear_qkv.weight"]
    hd = head_dim(MODEL)  # 2 groups of (2 query heads, 1 key head, 1 value head)
    rows = lambda i: qkv[i * hd:(i + 1) * hd]  # noqa: E731
    q = hf["model.layers.0.self_attn.q_proj.weight"]
    assert torch.equal(q, torch.cat([rows(0), rows(1), rows(4), rows(5)]))
    assert torch.equal(hf["model.layers.0.self_attn.k_proj.weight"], torch.cat([rows(2), rows(6)]))
    assert torch.equal(hf["model.layers.0.self_attn.v_proj.weight"], torch.cat([rows(3), rows(7)]))
    back = hf_to_megatron(hf, MODEL, VFFN)
    assert all(torch.equal(back[k], v) for k, v in sd.items() if v is not None)


def test_errors_name_the_problem():
    sd = _random_megatron()
    with pytest.raises(ConversionError, match="VersatileFFN vs dense"):
        megatron_to_hf(sd, MODEL, None)
    bad = dict(sd)
    bad["decoder.layers.0.mlp.linear_fc2.weight"] = torch.zeros(8, 4)
    with pytest.raises(ConversionError, match="wrong shapes.*linear_fc2"):
        megatron_to_hf(bad, MODEL, VFFN)
    shards = split_tp(sd, 2)
    shards[1]["decoder.layers.0.mlp.router.weight"] += 1
    with pytest.raises(ConversionError, match="replicated tensor differs"):
        merge_tp_shards(shards)
    with pytest.raises(ConversionError, match="not divisible"):
        split_tp(sd, 3)
    with pytest.raises(ConversionError, match="already a VersatileFFN"):
        hf_to_megatron(megatron_to_hf(sd, MODEL, VFFN), MODEL, VFFN, target_vffn=VFFN)
    with pytest.raises(ConversionError, match="vocab_size is unknown"):
        megatron_shapes(dataclasses.replace(MODEL, vocab_size=None), VFFN)


def test_parse_size():
    from vffn_hf.export import parse_size

    assert parse_size("2GB") == 2 * 10**9 and parse_size("1.5GiB") == int(1.5 * 2**30) and parse_size(100) == 100
    with pytest.raises(ValueError, match="cannot parse"):
        parse_size("lots")


# ----------------------------------------------------------------------------------------- the mapping table
# GQA and MHA, untied and tied, several layers: every row of the table, in every variant.
ARCHS = {
    "vffn_gqa": (GPTConfig(num_layers=3, hidden_size=16, num_attention_heads=4, num_query_groups=2,
                           ffn_hidden_size=32, vocab_size=20), VersatileFFNConfig(num_experts=4, top_k=2, max_depth=3)),
    "dense_gqa": (GPTConfig(num_layers=3, hidden_size=16, num_attention_heads=4, num_query_groups=2,
                            ffn_hidden_size=32, vocab_size=20), None),
    "vffn_mha_tied": (GPTConfig(num_layers=2, hidden_size=16, num_attention_heads=2, ffn_hidden_size=24,
                                vocab_size=10, untie_embeddings_and_output_weights=False),
                      VersatileFFNConfig(num_experts=2, top_k=1, max_depth=5)),
    "dense_mha_tied": (GPTConfig(num_layers=2, hidden_size=16, num_attention_heads=2, ffn_hidden_size=24,
                                 vocab_size=10, untie_embeddings_and_output_weights=False), None),
}


def _random_from_shapes(shapes, seed=0):
    g = torch.Generator().manual_seed(seed)
    return {k: torch.randn(s, generator=g) for k, s in shapes.items()}


@pytest.mark.parametrize("name", list(ARCHS))
def test_table_round_trip_is_the_identity(name):
    m, v = ARCHS[name]
    sd = _random_from_shapes(megatron_shapes(m, v))
    hf = megatron_to_hf(sd, m, v)
    assert {k: tuple(t.shape) for k, t in hf.items()} == hf_shapes(m, v)
    back = hf_to_megatron(hf, m, v)
    assert list(back) == list(sd)
    for k, t in sd.items():
        assert torch.equal(back[k], t), k
    # and HF -> megatron -> HF (random HF tensors; a tied lm_head is the embedding)
    hf_rand = _random_from_shapes(hf_shapes(m, v), seed=1)
    if not m.untie_embeddings_and_output_weights:
        hf_rand["lm_head.weight"] = hf_rand["model.embed_tokens.weight"]
    again = megatron_to_hf(hf_to_megatron(hf_rand, m, v), m, v)
    assert set(again) == set(hf_rand) and all(torch.equal(again[k], t) for k, t in hf_rand.items())


@pytest.mark.parametrize("name", list(ARCHS))
def test_table_round_trip_through_tp_shards(name):
    m, v = ARCHS[name]
    sd = _random_from_shapes(megatron_shapes(m, v))
    merged = merge_tp_shards(split_tp(sd, 2))
    back = hf_to_megatron(megatron_to_hf(merged, m, v), m, v)
    assert all(torch.equal(back[k], t) for k, t in sd.items())


def test_upcycling_maps_the_dense_norm_and_leaves_the_routers():
    m, v = ARCHS["dense_gqa"][0], ARCHS["vffn_gqa"][1]
    dense = _random_from_shapes(megatron_shapes(m, None))
    up = hf_to_megatron(megatron_to_hf(dense, m, None), m, None, target_vffn=v)
    vffn_keys = set(megatron_shapes(m, v))
    assert set(up) == vffn_keys - set(router_keys(m.num_layers))
    assert set(router_keys(m.num_layers)) == {f"decoder.layers.{i}.mlp.{n}.weight" for i in range(3)
                                              for n in ("router", "depth_router")}
    for i in range(m.num_layers):
        p = f"decoder.layers.{i}."
        assert torch.equal(up[p + "mlp.norm.weight"], dense[p + "pre_mlp_layernorm.weight"])
    assert all(torch.equal(up[k], t) for k, t in dense.items() if "pre_mlp_layernorm" not in k)


@pytest.mark.parametrize("name", list(ARCHS))
def test_hf_config_round_trip(name):
    from vffn_hf.export import hf_config

    m, v = ARCHS[name]
    back_m, back_v = from_hf_config(hf_config(m, v))
    assert back_m == m
    assert (back_v is None) == (v is None)
    if v is not None:
        assert all(getattr(back_v, k) == getattr(v, k) for k in VersatileFFNConfig.ARCH_FIELDS)


@pytest.mark.parametrize("name", list(ARCHS))
def test_derived_hf_shapes_are_the_transformers_models(name):
    from transformers import LlamaForCausalLM

    from vffn_hf.export import hf_config
    from vffn_hf.modeling_vffn import VersatileFFNLlamaForCausalLM

    m, v = ARCHS[name]
    model = (LlamaForCausalLM if v is None else VersatileFFNLlamaForCausalLM)(hf_config(m, v))
    real = {k: tuple(t.shape) for k, t in model.state_dict().items()}
    assert real == hf_shapes(m, v)


@pytest.mark.parametrize("name", list(ARCHS))
def test_derived_megatron_shapes_are_the_built_models(megatron_tp1, name):
    from vffn_megatron import build_gpt_model

    m, v = ARCHS[name]
    real = {k: tuple(t.shape) for k, t in build_gpt_model(m, v).state_dict().items() if not k.endswith("_extra_state")}
    assert real == megatron_shapes(m, v)


def test_vffn_arch_fields_have_one_owner():
    """The fields that shape a VersatileFFN model are VersatileFFNConfig's; the HF config names them vffn_<field>."""
    from vffn_hf.configuration_vffn import VersatileFFNLlamaConfig

    assert VersatileFFNConfig.ARCH_FIELDS == ("num_experts", "top_k", "max_depth")
    assert "ARCH_FIELDS" not in {f.name for f in dataclasses.fields(VersatileFFNConfig)}
    hf_fields = set(VersatileFFNLlamaConfig.__annotations__)
    assert {f"vffn_{k}" for k in VersatileFFNConfig.ARCH_FIELDS} <= hf_fields
