"""ZeRO-3 rule: the sequence of sub-module calls (= parameter gathers under ZeRO-3) of a block must not depend
on the tokens. A rank whose tokens all stop at loop 1 must still call the FFN as often as one whose tokens
all loop D times, or data-parallel ranks disagree on collectives (a hang on NCCL)."""
import pytest
import torch

from helpers.block import BATCH, D_MODEL, SEQ, build_block


def _call_trace(block, x, depth_logits=None, noise=None, train=False):
    """Names of the block's sub-modules in call order for one forward (and backward when training)."""
    trace, handles = [], []
    for name, mod in block.named_modules():
        if name:
            handles.append(mod.register_forward_pre_hook(lambda m, a, n=name: trace.append(n)))
    if depth_logits is not None:  # force every token's depth choice
        handles.append(block.depth_router.register_forward_hook(
            lambda m, a, out: depth_logits.expand_as(out).to(out.dtype) + 0 * out))
    block.noise_fn = (lambda shape, device: noise.expand(shape)) if noise is not None else None
    block.train(train)
    try:
        out, _ = block(x)
        if train:
            out.sum().backward()
    finally:
        for h in handles:
            h.remove()
        block.noise_fn = None
    return trace


@pytest.mark.parametrize("train", [False, True])
def test_submodule_calls_do_not_depend_on_chosen_depths(megatron_tp1, train):
    from vffn_megatron import VersatileFFNConfig

    D = 4
    block = build_block(VersatileFFNConfig(num_experts=4, top_k=2, max_depth=D, aux_loss_coeff=0.01), megatron_tp1)
    x = torch.randn(SEQ, BATCH, D_MODEL)
    traces = {}
    for depth in range(1, D + 1):  # every token at one depth: no token needs loops > depth
        logits = torch.full((D,), -10.0)
        logits[depth - 1] = 10.0
        noise = torch.zeros(D)
        traces[depth] = _call_trace(block, x, depth_logits=logits, noise=noise, train=train)
    traces["mixed"] = _call_trace(block, x, train=train)
    # the FFN runs D times whatever the depths (on empty slices when no token needs a loop); in training each
    # loop after the first runs as two calls, the tokens still looping (autograd) and the others (values only)
    assert traces[1].count("linear_fc1") == (2 * D - 1 if train else D)
    for key, trace in traces.items():
        assert trace == traces[1], f"depth {key}: {trace} != {traces[1]}"
