"""The optimised block (sparse width fc2 fused into loop 1, per-token depth at inference) equals the
straightforward algorithm (vffn_megatron/reference.py) in outputs and gradients. TP=2 == TP=1 for the optimised
path is tests/test_vffn_tp.py."""
import pytest
import torch

from helpers.block import build_block  # noqa: E402


@pytest.mark.parametrize("train", [True, False])
@pytest.mark.parametrize("n,k,depth", [(8, 2, 4), (4, 4, 2), (8, 1, 3)])
def test_optimised_equals_straightforward(megatron_tp1, train, n, k, depth):
    from vffn_megatron import VersatileFFNConfig
    from vffn_megatron.reference import block_forward

    block = build_block(VersatileFFNConfig(num_experts=n, top_k=k, max_depth=depth, aux_loss_coeff=0.0),
                        megatron_tp1)
    # float64 on both sides: the comparison is of algorithms, not of their fp32 rounding
    block.double()
    torch.manual_seed(3)
    x = torch.randn(16, 4, block.config.hidden_size, dtype=torch.float64)
    probe = torch.randn_like(x)
    noise = torch.randn(64, depth)
    block.noise_fn = lambda shape, device: noise
    results = []
    block.train(train)
    for impl in (block, lambda h: block_forward(block, h, gumbel=noise)):
        block.zero_grad()
        with torch.set_grad_enabled(train):
            out = impl(x)[0]
        grads = {}
        if train:
            (out * probe).sum().backward()
            grads = {n_: p.grad.clone() for n_, p in block.named_parameters()}
        results.append((out.detach(), grads))
    (o_fast, g_fast), (o_ref, g_ref) = results
    torch.testing.assert_close(o_fast, o_ref, rtol=1e-7, atol=1e-9)
    for name, g in g_ref.items():
        torch.testing.assert_close(g_fast[name], g, rtol=1e-9, atol=1e-12, msg=name)


def test_eval_skips_width_for_full_depth_tokens(megatron_tp1):
    """Tokens that choose all D loops have m = 0: the width path must not run for them."""
    from vffn_megatron import VersatileFFNConfig

    block = build_block(VersatileFFNConfig(max_depth=3), megatron_tp1).eval()
    with torch.no_grad():
        block.depth_router.weight.zero_()
        block.depth_router.weight[2].fill_(1.0)  # all tokens with positive feature sum choose D
    seen = []
    orig = block._width_partial
    block._width_partial = lambda h, w, idx: seen.append(h.shape[0]) or orig(h, w, idx)
    x = torch.rand(4, 2, block.config.hidden_size) + 0.1  # positive: every token picks depth 3
    with torch.no_grad():
        block(x)
    assert seen and sum(seen) == 0  # called (every rank uses the weights alike), on no token
    assert block.pop_stats()["depth_counts"].tolist() == [0, 0, 8]
