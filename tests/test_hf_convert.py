"""Layout bookkeeping of vffn_hf.convert without megatron: TP split/merge, qkv and gated fc1 layouts, errors."""
import pytest
import torch

from vffn_hf.convert import Arch, ConversionError, hf_to_megatron, megatron_to_hf, merge_tp_shards, split_tp

ARCH = Arch(num_layers=1, hidden_size=8, num_attention_heads=4, num_query_groups=2, ffn_hidden_size=16,
            vocab_size=12, vffn={"num_experts": 4, "top_k": 2, "max_depth": 3})


def _random_megatron(a=ARCH):
    g = torch.Generator().manual_seed(0)
    d, f, hd = a.hidden_size, a.ffn_hidden_size, a.head_dim
    p = "decoder.layers.0."
    return {
        "embedding.word_embeddings.weight": torch.randn(a.vocab_size, d, generator=g),
        "output_layer.weight": torch.randn(a.vocab_size, d, generator=g),
        "decoder.final_layernorm.weight": torch.randn(d, generator=g),
        p + "input_layernorm.weight": torch.randn(d, generator=g),
        p + "self_attention.linear_qkv.weight": torch.randn((a.num_attention_heads + 2 * a.groups) * hd, d, generator=g),
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
    f = ARCH.ffn_hidden_size
    gate, up = sd["decoder.layers.0.mlp.linear_fc1.weight"].split(f)
    shards = split_tp(sd, 2)
    for r in range(2):  # megatron's layout: every rank holds [gate_r; up_r]
        local = shards[r]["decoder.layers.0.mlp.linear_fc1.weight"]
        assert torch.equal(local, torch.cat([gate[r * f // 2:(r + 1) * f // 2], up[r * f // 2:(r + 1) * f // 2]]))
    assert torch.equal(shards[1]["decoder.layers.0.mlp.linear_fc2.weight"],
                       sd["decoder.layers.0.mlp.linear_fc2.weight"][:, f // 2:])


def test_qkv_layout_per_query_group():
    sd = _random_megatron()
    hf = megatron_to_hf(sd, ARCH)
    qkv = sd["decoder.layers.0.self_attention.linear_qkv.weight"]
    hd = ARCH.head_dim  # 2 groups of (2 query heads, 1 key head, 1 value head)
    rows = lambda i: qkv[i * hd:(i + 1) * hd]  # noqa: E731
    q = hf["model.layers.0.self_attn.q_proj.weight"]
    assert torch.equal(q, torch.cat([rows(0), rows(1), rows(4), rows(5)]))
    assert torch.equal(hf["model.layers.0.self_attn.k_proj.weight"], torch.cat([rows(2), rows(6)]))
    assert torch.equal(hf["model.layers.0.self_attn.v_proj.weight"], torch.cat([rows(3), rows(7)]))
    back = hf_to_megatron(hf, ARCH)
    assert all(torch.equal(back[k], v) for k, v in sd.items() if v is not None)


def test_errors_name_the_problem():
    sd = _random_megatron()
    dense = ARCH.with_vffn(None)
    with pytest.raises(ConversionError, match="VersatileFFN vs dense"):
        megatron_to_hf(sd, dense)
    bad = dict(sd)
    bad["decoder.layers.0.mlp.linear_fc2.weight"] = torch.zeros(8, 4)
    with pytest.raises(ConversionError, match="wrong shapes.*linear_fc2"):
        megatron_to_hf(bad, ARCH)
    shards = split_tp(sd, 2)
    shards[1]["decoder.layers.0.mlp.router.weight"] += 1
    with pytest.raises(ConversionError, match="replicated tensor differs"):
        merge_tp_shards(shards)
    with pytest.raises(ConversionError, match="not divisible"):
        split_tp(sd, 3)
    with pytest.raises(ConversionError, match="already a VersatileFFN"):
        hf_to_megatron(megatron_to_hf(sd, ARCH), ARCH, target_vffn={"num_experts": 4, "top_k": 2, "max_depth": 3})


def test_parse_size():
    from vffn_hf.export import parse_size

    assert parse_size("2GB") == 2 * 10**9 and parse_size("1.5GiB") == int(1.5 * 2**30) and parse_size(100) == 100
    with pytest.raises(ValueError, match="cannot parse"):
        parse_size("lots")
