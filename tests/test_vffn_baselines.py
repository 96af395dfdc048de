"""The k-loop and MoE baselines build into the same GPTModel and train; k-loop matches its definition; the paper's
MoE (shared expert + fine-grained experts) has the tensors of the conversion table and the paper's parameter and
FLOP ratios."""
import pytest
import torch

from helpers import REPO

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
    else:  # the paper's MoE: the dense FFN as shared expert + 4 experts of F/4 + the router, per layer
        assert n_params == n_dense + 2 * (4 * 3 * 64 * 32 + 4 * 64)
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


@pytest.mark.parametrize("moe_kw", [{}, {"top_k": 1}, {"shared_expert": False, "expert_ffn_hidden_size": 128}])
def test_moe_tensors_are_the_table_s(megatron_tp1, moe_kw):
    """Every parameter name and shape of the built MoE (paper default, top-1, Switch-style full-size experts) is the
    conversion table's (vffn_hf.convert.megatron_shapes); the shared expert is megatron's, with no gate."""
    from megatron.core.transformer.moe.shared_experts import SharedExpertMLP

    from vffn_hf.convert import megatron_shapes
    from vffn_megatron import GPTConfig, MoEConfig, build_gpt_model

    cfg = GPTConfig(num_layers=2, hidden_size=64, num_attention_heads=4, ffn_hidden_size=128, seq_length=16,
                    vocab_size=128)
    moe = MoEConfig(num_experts=4, **moe_kw)
    model = build_gpt_model(cfg, moe=moe)
    assert {n: tuple(p.shape) for n, p in model.named_parameters()} == megatron_shapes(cfg, moe)
    shared = model.decoder.layers[0].mlp.shared_experts
    if moe.shared_expert:
        assert isinstance(shared, SharedExpertMLP) and not shared.use_shared_expert_gate
        assert tuple(shared.linear_fc1.weight.shape) == (2 * 128, 64)  # the dense FFN's size
    else:
        assert shared is None


def test_moe_at_the_paper_354m_shape():
    """+53% parameters (embeddings included) and 1.25x the FFN FLOPs at the paper's 354M shape (configs/paper_354m.yaml:
    15 layers, d 1024, F 4096, vocab 50304 untied), counted as `--check` does (pretrain.params: a meta-device build,
    no 0.5B floats allocated)."""
    from pretrain.config import load_config
    from pretrain.params import count_parameters
    from vffn_megatron import MoEConfig
    from vffn_megatron.flops import ffn_flop_ratio

    preset = str(REPO / "configs" / "paper_354m.yaml")
    dense = count_parameters(load_config(preset, ["model.arch=dense"]), 50304).total
    moe = count_parameters(load_config(preset, ["model.arch=moe"]), 50304).total
    print(f"[params] 354M shape: dense {dense:,}, paper MoE {moe:,}, ratio {moe / dense:.4f}; "
          f"FFN FLOPs ratio {ffn_flop_ratio(1024, 4096, MoEConfig()):.5f}")
    assert dense == 354_712_576  # the paper's 354.71M
    assert moe == dense + 15 * (8 * 3 * 1024 * 512 + 8 * 1024)
    assert round(moe / dense - 1, 2) == 0.53
    assert round(ffn_flop_ratio(1024, 4096, MoEConfig()), 3) == 1.251  # 1.25 + the router's 8/(3F)
