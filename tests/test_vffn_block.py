"""VersatileFFN megatron module vs the straightforward reference: forward and every parameter gradient."""
import pytest
import torch

from helpers.block import BATCH, D_MODEL, FFN, SEQ, build_block, rel_err, run_both


@pytest.mark.parametrize("recompute", [False, True])
@pytest.mark.parametrize("n,k,depth", [(8, 2, 4), (4, 1, 3), (2, 2, 1)])
def test_train_parity_with_reference(megatron_tp1, n, k, depth, recompute):
    from vffn_megatron import VersatileFFNConfig

    vffn = VersatileFFNConfig(num_experts=n, top_k=k, max_depth=depth, aux_loss_coeff=0.0, recompute=recompute)
    block = build_block(vffn, megatron_tp1)
    block.set_step(300)
    noise = -torch.empty(SEQ * BATCH, depth).exponential_(generator=torch.Generator().manual_seed(5)).log()
    out, ref, grads, ref_grads = run_both(block, vffn, train=True, noise=noise)
    assert rel_err(out, ref) < 1e-5
    assert set(grads) == set(ref_grads)
    for name in grads:
        assert rel_err(grads[name], ref_grads[name]) < 1e-5, name
        if depth > 1 and not (k == 1 and name == "router.weight"):  # softmax over one logit is constant
            assert grads[name].abs().sum() > 0, f"no gradient reached {name}"


@pytest.mark.parametrize("n,k,depth", [(8, 2, 4), (4, 3, 2)])
def test_eval_parity_with_reference(megatron_tp1, n, k, depth):
    from vffn_megatron import VersatileFFNConfig

    vffn = VersatileFFNConfig(num_experts=n, top_k=k, max_depth=depth)
    block = build_block(vffn, megatron_tp1)
    out, ref, _, _ = run_both(block, vffn, train=False)
    assert rel_err(out, ref) < 1e-5
    st = block.pop_stats()
    assert st["depth_counts"].sum() == SEQ * BATCH
    assert (st["depth_counts"] > 0).sum() >= 2, "test should cover several chosen depths"


def test_gumbel_noise_is_a_pure_function_of_step(megatron_tp1):
    from vffn_megatron import VersatileFFNConfig

    block = build_block(VersatileFFNConfig(), megatron_tp1)
    block.set_step(7, seed=3)
    a = block._gumbel_noise((5, 4), torch.device("cpu"))
    b = block._gumbel_noise((5, 4), torch.device("cpu"))  # call counter is not advanced by sampling itself
    block.set_step(7, seed=3)
    c = block._gumbel_noise((5, 4), torch.device("cpu"))
    block.set_step(8, seed=3)
    d = block._gumbel_noise((5, 4), torch.device("cpu"))
    assert torch.equal(a, b) and torch.equal(a, c) and not torch.equal(a, d)


def test_temperature_schedule():
    from vffn_megatron import VersatileFFNConfig

    c = VersatileFFNConfig()
    assert c.tau(0) == 5.0
    assert c.tau(1000) == pytest.approx(5.0 * 0.99984 ** 1000)
    assert c.tau(10**6) == 0.1


def test_aux_loss_changes_gradient_not_output(megatron_tp1):
    from megatron.core.transformer.moe.moe_utils import clear_aux_losses_tracker, get_moe_layer_wise_logging_tracker

    from vffn_megatron import VersatileFFNConfig
    from vffn_megatron.versatile_ffn import AUX_LOSS_NAME

    torch.manual_seed(2)
    x = torch.randn(SEQ, BATCH, D_MODEL)
    noise = torch.zeros(SEQ * BATCH, 4)
    outs, grads = [], []
    for coeff in (0.0, 0.5):
        block = build_block(VersatileFFNConfig(aux_loss_coeff=coeff), megatron_tp1)
        block.noise_fn = lambda shape, device: noise
        block.train()
        delta, _ = block(x)
        delta.sum().backward()
        outs.append(delta.detach())
        grads.append(block.router.weight.grad.clone())
    assert torch.equal(outs[0], outs[1])
    assert not torch.allclose(grads[0], grads[1])
    tracker = get_moe_layer_wise_logging_tracker()
    assert AUX_LOSS_NAME in tracker and tracker[AUX_LOSS_NAME]["values"][0] > 0
    clear_aux_losses_tracker()


def test_recompute_gives_identical_gradients(megatron_tp1):
    from vffn_megatron import VersatileFFNConfig

    noise = torch.randn(SEQ * BATCH, 4)
    res = []
    for recompute in (False, True):
        block = build_block(VersatileFFNConfig(recompute=recompute, aux_loss_coeff=1e-2), megatron_tp1)
        out, _, grads, _ = run_both(block, block.vffn, train=True, noise=noise)
        res.append((out, grads))
    assert torch.equal(res[0][0], res[1][0])
    for name, g in res[0][1].items():
        # Same math; only the order in which autograd sums a weight's contributions (fc2 is used by the loops
        # and by the width path) differs once a loop runs inside its own backward, hence fp32 rounding.
        torch.testing.assert_close(res[1][1][name], g, rtol=1e-6, atol=1e-9, msg=name)


def test_explicit_tp_group_and_dp_rank(megatron_tp1):
    """megatron MLP's tp_group contract (None: the default TP group), and the DP rank taken from set_step."""
    from megatron.core import parallel_state
    from megatron.core.transformer.spec_utils import build_module

    from vffn_megatron import GPTConfig, VersatileFFNConfig, get_vffn_mlp_spec, transformer_config

    group = parallel_state.get_tensor_model_parallel_group()
    block = build_block(VersatileFFNConfig(), megatron_tp1)
    assert block.tp_group is group and block.linear_fc1.tp_group is group and block.linear_fc2.tp_group is group
    tcfg = transformer_config(GPTConfig(hidden_size=D_MODEL, ffn_hidden_size=FFN, num_attention_heads=4))
    explicit = build_module(get_vffn_mlp_spec(VersatileFFNConfig()), config=tcfg, tp_group=group)
    assert explicit.tp_group is group

    # micro-batch index micro * dp_size + dp_rank: DP rank 1 of 2 at micro 0 draws DP=1's micro 1
    block.set_step(7, seed=3)
    first = block._gumbel_noise((5, 4), torch.device("cpu"))
    block._micro = 1
    second = block._gumbel_noise((5, 4), torch.device("cpu"))
    block.set_step(7, seed=3, dp_rank=1, dp_size=2)
    rank1 = block._gumbel_noise((5, 4), torch.device("cpu"))
    assert torch.equal(rank1, second) and not torch.equal(rank1, first)
    with pytest.raises(ValueError, match="dp_rank < dp_size"):
        block.set_step(7, dp_rank=2, dp_size=2)
