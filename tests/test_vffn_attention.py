"""SDPA core attention (the default) vs megatron's local DotProductAttention: the same function.

Same weights (one state dict loaded into both models), fp32: logits and every parameter gradient agree to
round-off, for each architecture, with multi-head and grouped-query attention. TP=2 is covered in
tests/test_vffn_tp.py (one torchrun launch for all TP checks).
"""
import pytest
import torch


def _build(arch, groups, backend):
    from vffn_megatron import GPTConfig, KLoopConfig, MoEConfig, VersatileFFNConfig, build_gpt_model

    cfg = GPTConfig(num_layers=2, hidden_size=64, num_attention_heads=4, num_query_groups=groups,
                    ffn_hidden_size=128, seq_length=32, vocab_size=128)
    kw = {"vffn": dict(vffn=VersatileFFNConfig(num_experts=4, top_k=2, max_depth=2)), "dense": {},
          "kloop": dict(kloop=KLoopConfig(loops=2)), "moe": dict(moe=MoEConfig(num_experts=2, top_k=2))}[arch]
    return build_gpt_model(cfg, attention_backend=backend, **kw)


@pytest.mark.parametrize("arch, groups", [("vffn", None), ("vffn", 2), ("dense", 2), ("kloop", None), ("moe", None)])
def test_sdpa_equals_local(megatron_tp1, arch, groups):
    from megatron.core.transformer.dot_product_attention import DotProductAttention

    from vffn_megatron.attention import SDPAttention

    torch.manual_seed(0)
    sdpa, local = _build(arch, groups, "sdpa"), _build(arch, groups, "local")
    local.load_state_dict(sdpa.state_dict())
    kinds = {type(m) for m in sdpa.modules()} | {type(m) for m in local.modules()}
    assert SDPAttention in kinds and sum(isinstance(m, SDPAttention) for m in local.modules()) == 0
    assert any(type(m) is DotProductAttention for m in local.modules())
    tokens = torch.randint(0, 128, (3, 33), generator=torch.Generator().manual_seed(1))
    pos = torch.arange(32)[None].expand(3, -1)
    out = {}
    for name, model in (("sdpa", sdpa), ("local", local)):
        model.eval()  # deterministic routing (no Gumbel noise) so both see the same function
        logits = model(tokens[:, :-1], pos, None)
        logits.float().pow(2).mean().backward()
        out[name] = (logits.detach(), {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None})
    torch.testing.assert_close(out["sdpa"][0], out["local"][0], rtol=1e-5, atol=1e-5)
    assert set(out["sdpa"][1]) == set(out["local"][1])
    for n, g in out["local"][1].items():
        rel = (out["sdpa"][1][n] - g).norm() / g.norm().clamp_min(1e-12)
        assert rel < 1e-5, f"{n}: {rel:.2e}"


def test_unknown_attention_backend_is_refused(megatron_tp1):
    with pytest.raises(ValueError, match="attention_backend must be one of sdpa, local"):
        _build("dense", None, "flash")
