"""The FLOP model (vffn_megatron/flops.py): per-block ratios to the dense FFN and whole-model FLOPs per token."""
import pytest

from vffn_megatron.config import KLoopConfig, MoEConfig, VersatileFFNConfig
from vffn_megatron.flops import (
    dense_ffn_macs, ffn_flop_ratio, ffn_macs_per_token, num_flops_per_token, TRAIN_FLOPS_FORMULA,
)


def test_importable_without_megatron():
    import subprocess
    import sys

    code = ("import sys, vffn_megatron.flops; "
            "sys.exit(1 if any(m.startswith('megatron') for m in sys.modules) else 0)")
    assert subprocess.run([sys.executable, "-c", code]).returncode == 0


def test_dense_is_one_and_kloop_is_k():
    assert dense_ffn_macs(64, 128) == 3 * 64 * 128
    assert ffn_macs_per_token(64, 128) == dense_ffn_macs(64, 128)
    assert ffn_flop_ratio(64, 128) == 1
    for k in (1, 2, 5):
        assert ffn_flop_ratio(64, 128, KLoopConfig(loops=k)) == k


def test_moe_is_shared_plus_top_k_experts_plus_router():
    d, F = 64, 128
    moe = MoEConfig(num_experts=4, top_k=2)  # paper MoE: shared expert of F + experts of F/4
    assert ffn_macs_per_token(d, F, moe) == 3 * d * F + 2 * 3 * d * (F // 4) + d * 4
    assert ffn_flop_ratio(d, F, moe) == pytest.approx(1 + 2 / 4 + 4 / (3 * F))
    switch = MoEConfig(num_experts=4, top_k=2, shared_expert=False, expert_ffn_hidden_size=F)
    assert ffn_macs_per_token(d, F, switch) == 2 * 3 * d * F + d * 4
    assert ffn_flop_ratio(d, F, switch) == pytest.approx(2 + 4 / (3 * F))


def test_moe_paper_shape_is_1_25x_ffn_flops():
    """The paper's 354M shape (d 1024, F 4096, N 8 experts of F/8, top-2): 1.25x the dense FFN + the router."""
    d, F = 1024, 4096
    r = ffn_flop_ratio(d, F, MoEConfig())
    assert r == pytest.approx(1.25 + 8 / (3 * F), rel=1e-12)
    print(f"[flops] paper MoE / dense FFN FLOPs at d {d}, F {F}: {r:.5f}")
    assert "MoE 3·h·F (shared expert) + top_k·3·h·Fe" in TRAIN_FLOPS_FORMULA


@pytest.mark.parametrize("N,k,D,F", [(8, 2, 4, 1408), (4, 2, 3, 128), (8, 1, 1, 64)])
def test_vffn_train_is_D_plus_width_share_plus_routers(N, k, D, F):
    d = 32
    v = VersatileFFNConfig(num_experts=N, top_k=k, max_depth=D)
    assert ffn_flop_ratio(d, F, v) == pytest.approx(D + (k / N) / 3 + (N + D) / (3 * F), rel=1e-12)
    assert ffn_macs_per_token(d, F, v) == D * 3 * d * F + d * F * k // N + d * (N + D)  # N divides F


def test_vffn_inference_at_measured_depths():
    d, F = 32, 1408
    v = VersatileFFNConfig(num_experts=8, top_k=2, max_depth=4)
    r = ffn_flop_ratio(d, F, v, mean_loops=2.55, wide_share=0.7)
    assert r == pytest.approx(2.55 + 0.7 * (2 / 8) / 3 + 12 / (3 * F), rel=1e-12)
    # every token at full depth: no width path, the training count minus the width fc2
    full = ffn_flop_ratio(d, F, v, mean_loops=4, wide_share=0.0)
    assert full == pytest.approx(ffn_flop_ratio(d, F, v) - (2 / 8) / 3, rel=1e-12)


def test_inference_arguments_are_checked():
    with pytest.raises(ValueError, match="VersatileFFN inference only"):
        ffn_macs_per_token(32, 64, KLoopConfig(), mean_loops=2.0, wide_share=0.5)
    with pytest.raises(ValueError, match="both mean_loops and wide_share"):
        ffn_macs_per_token(32, 64, VersatileFFNConfig(), mean_loops=2.0)
    with pytest.raises(TypeError, match="no FLOP model"):
        ffn_macs_per_token(32, 64, object())


def test_num_flops_per_token_whole_model():
    from types import SimpleNamespace

    m = SimpleNamespace(hidden_size=64, ffn_hidden_size=128, num_layers=2, seq_length=128)
    vocab = 4096
    d, F, L, s = 64, 128, 2, 128
    attn_and_output = 6 * (L * 4 * d * d + d * vocab) + 6 * L * s * d
    assert num_flops_per_token(m, vocab) == attn_and_output + 6 * L * 3 * d * F
    v = VersatileFFNConfig(num_experts=4, top_k=2, max_depth=3)
    assert num_flops_per_token(m, vocab, v) == attn_and_output + 6 * L * (3 * 3 * d * F + d * F * 2 // 4 + d * 7)
    assert num_flops_per_token(m, vocab, KLoopConfig(loops=3)) == attn_and_output + 6 * L * 3 * 3 * d * F
    assert f"{num_flops_per_token(m, vocab) / 1e6:.2f}" == "2.16"
    assert f"{num_flops_per_token(m, vocab, v) / 1e6:.2f}" == "2.81"
    # the compare_tiny figures in results/compare.md (4 layers, F=4d): dense 3.34, 4-loop 6.88 MFLOP / token
    m4 = SimpleNamespace(hidden_size=64, ffn_hidden_size=256, num_layers=4, seq_length=128)
    assert f"{num_flops_per_token(m4, vocab) / 1e6:.2f}" == "3.34"
    assert f"{num_flops_per_token(m4, vocab, KLoopConfig(loops=4)) / 1e6:.2f}" == "6.88"
    assert "VersatileFFN D·3·h·F + h·F·k/N" in TRAIN_FLOPS_FORMULA


def test_compacted_training_ratio():
    from vffn_megatron.flops import train_flop_ratio

    d, F = 32, 1408
    v = VersatileFFNConfig(num_experts=8, top_k=2, max_depth=4)
    assert train_flop_ratio(d, F, v, mean_sampled_loops=2.5) == pytest.approx((4 + 5) / 3 + (2 / 8) / 3 + 12 / (3 * F))
    # every token at full depth: the compacted backward does what the full one does
    assert train_flop_ratio(d, F, v, mean_sampled_loops=4) == pytest.approx(train_flop_ratio(d, F, v))
    assert train_flop_ratio(d, F, KLoopConfig(loops=3)) == 3
    with pytest.raises(ValueError, match="in \\[1, 4\\]"):
        train_flop_ratio(d, F, v, mean_sampled_loops=5)
    m = type("M", (), dict(hidden_size=64, ffn_hidden_size=176, num_layers=2, seq_length=128))()
    full, compact = num_flops_per_token(m, 512, v), num_flops_per_token(m, 512, v, mean_sampled_loops=1)
    assert full - compact == pytest.approx(6 * 2 * 3 * 64 * 176 * (4 - 2) * 1)  # 2 layers x (D - (D+2)/3) x 3dF x 6
