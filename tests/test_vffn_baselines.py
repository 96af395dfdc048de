"""The k-loop and MoE baselines build into the same GPTModel and train; k-loop matches its definition."""
import pytest
import torch

from vffn_megatron.reference import ffn as ref_ffn


def test_kloop_matches_definition(megatron_tp1):
    from megatron.core.transformer.spec_utils import build_module

    from vffn_megatron import GPTConfig, KLoopConfig, get_kloop_layer_spec, transformer_config

    tcfg = transformer_config(GPTConfig(hidden_size=32, ffn_hidden_size=64))
    for recompute in (False, True):
        block = build_module(get_kloop_layer_spec(KLoopConfig(loops=3, recompute=recompute)).submodules.mlp,
                             config=tcfg).train()
        x = torch.randn(5, 2, 32, requires_grad=True)
        delta, _ = block(x)
        Wg, Wu = block.linear_fc1.weight.chunk(2, 0)
        u = x
        for _ in range(3):
            u = u + ref_ffn(u, Wg, Wu, block.linear_fc2.weight, block.norm.weight, block.norm.eps)
        torch.testing.assert_close(x + delta, u, rtol=1e-5, atol=1e-6)
        delta.sum().backward()
        assert block.linear_fc1.weight.grad is not None


@pytest.mark.parametrize("kind", ["kloop", "moe"])
def test_baseline_gpt_trains(megatron_tp1, kind):
    from vffn_megatron import GPTConfig, KLoopConfig, MoEConfig, build_gpt_model

    torch.manual_seed(0)
    cfg = GPTConfig(num_layers=2, hidden_size=64, num_attention_heads=4, ffn_hidden_size=128, seq_length=16,
                    vocab_size=128)
    kw = {"kloop": KLoopConfig(loops=2)} if kind == "kloop" else {"moe": MoEConfig(num_experts=4, top_k=2)}
    model = build_gpt_model(cfg, **kw)
    dense = build_gpt_model(cfg)
    n_params = sum(p.numel() for p in model.parameters())
    n_dense = sum(p.numel() for p in dense.parameters())
    if kind == "kloop":
        assert n_params == n_dense  # same parameters, more compute
    else:
        assert n_params > n_dense + 2 * 2 * 3 * 64 * 128  # 3 extra experts per layer
    tokens = torch.randint(0, 128, (4, 17))
    pos = torch.arange(16)[None].expand(4, -1)
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    losses = []
    for _ in range(20):
        loss = model(tokens[:, :-1], pos, None, labels=tokens[:, 1:]).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < 0.7 * losses[0]


def test_no_unknown_mlp_warning_per_layer(megatron_tp1, caplog):
    """megatron's "Unknown MLP type ... Using default kwargs" line (once per layer per model) is not printed
    for our blocks, and the layer still builds them with the default TP group."""
    import logging

    from vffn_megatron import GPTConfig, KLoopConfig, VersatileFFNConfig, build_gpt_model

    cfg = GPTConfig(num_layers=2, hidden_size=32, num_attention_heads=4, ffn_hidden_size=64, seq_length=8,
                    vocab_size=64)
    with caplog.at_level(logging.WARNING):
        build_gpt_model(cfg, VersatileFFNConfig(num_experts=4, top_k=2, max_depth=2))
        build_gpt_model(cfg, kloop=KLoopConfig(loops=2))
    assert not [r for r in caplog.records if "Unknown MLP type" in r.getMessage()]
