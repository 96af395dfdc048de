"""Compacted training backward (loops past a token's sampled depth run as values only) == the full-backward
algorithm: outputs, the input gradient and every parameter gradient to fp32 round-off, with and without loop
recomputation, aux loss on. TP=2 is in tests/test_vffn_tp.py (one torchrun launch for every TP check)."""
import pytest
import torch

from helpers.block import build_block


def _run(block, x, probe, compact):
    block.compact_backward = compact
    block.zero_grad()
    x = x.clone().requires_grad_(True)
    out, _ = block(x)
    (out * probe).sum().backward()
    return out.detach(), x.grad, {n: p.grad.clone() for n, p in block.named_parameters()}


@pytest.mark.parametrize("recompute", [False, True])
@pytest.mark.parametrize("n,k,depth", [(8, 2, 4), (4, 1, 3), (4, 2, 1)])
def test_compact_equals_full_backward(megatron_tp1, n, k, depth, recompute):
    from vffn_megatron import VersatileFFNConfig

    block = build_block(VersatileFFNConfig(num_experts=n, top_k=k, max_depth=depth, aux_loss_coeff=0.05,
                                           recompute=recompute), megatron_tp1).train()
    torch.manual_seed(2)
    x = torch.randn(24, 3, block.config.hidden_size)
    probe = torch.randn_like(x)
    noise = -torch.empty(72, depth).exponential_(generator=torch.Generator().manual_seed(9)).log()
    block.noise_fn = lambda shape, device: noise
    block.set_step(400)  # a low temperature: the sampled depths are spread over 1..D
    compact, full = _run(block, x, probe, True), _run(block, x, probe, False)
    assert torch.equal(compact[0], full[0]) or torch.allclose(compact[0], full[0], rtol=1e-6, atol=1e-7)
    torch.testing.assert_close(compact[1], full[1], rtol=1e-5, atol=1e-7)
    for name, g in full[2].items():
        rel = (compact[2][name] - g).norm() / g.norm().clamp_min(1e-12)
        assert rel < 1e-5, f"{name}: relative gradient difference {rel:.2e}"
    depths = block.pop_stats()["depth_counts"]
    assert depth == 1 or (depths > 0).sum() >= 2, depths  # the case is not trivial


def test_full_depth_rank_still_gives_router_gradients(megatron_tp1):
    """All tokens at depth D (m = 0): the width path runs as values only, yet every parameter still gets a
    gradient tensor, as on a rank with other tokens (DeepSpeed reduces the same tensors on every DP rank)."""
    from vffn_megatron import VersatileFFNConfig

    block = build_block(VersatileFFNConfig(num_experts=4, top_k=2, max_depth=3, aux_loss_coeff=0.0),
                        megatron_tp1).train()
    block.noise_fn = lambda shape, device: torch.tensor([-50.0, -50.0, 50.0]).expand(shape)
    out, _ = block(torch.randn(6, 2, block.config.hidden_size))
    out.sum().backward()
    assert block.pop_stats()["depth_counts"].tolist() == [0, 0, 12]
    assert all(p.grad is not None for p in block.parameters())
