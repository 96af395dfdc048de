"""One VersatileFFN block (megatron module, TP=1) and the float64 reference on the same input."""
import torch

from vffn_megatron.reference import versatile_ffn as reference_vffn

D_MODEL, FFN, SEQ, BATCH = 32, 64, 6, 3


def build_block(vffn, megatron_tp1, d=D_MODEL, ffn=FFN):
    from megatron.core.transformer.spec_utils import build_module

    from vffn_megatron import GPTConfig, get_vffn_mlp_spec, transformer_config

    tcfg = transformer_config(GPTConfig(hidden_size=d, ffn_hidden_size=ffn, num_attention_heads=4))
    torch.manual_seed(0)
    block = build_module(get_vffn_mlp_spec(vffn), config=tcfg)
    block.set_layer_number(1)
    with torch.no_grad():  # non-trivial norm weight so its gradient path is exercised
        block.norm.weight.uniform_(0.5, 1.5)
        block.depth_router.weight.mul_(20)  # spread the depth choices over 1..D
    return block


def run_both(block, vffn, train, noise=None, device="cpu"):
    """The block (on ``device``) and the float64 CPU reference on the same input: (out, ref, grads, ref_grads),
    all on the CPU."""
    torch.manual_seed(1)
    x = torch.randn(SEQ, BATCH, D_MODEL)
    probe = torch.randn(SEQ, BATCH, D_MODEL)
    block.train(train)
    if noise is not None:
        block.noise_fn = lambda shape, dev: noise.to(dev)
    block.zero_grad()
    delta, bias = block(x.to(device))
    assert bias is None
    out = x + delta.cpu()
    grads = {}
    if train:
        (out * probe).sum().backward()
        grads = {n: p.grad.cpu().clone() for n, p in block.named_parameters()}
    # The reference runs in float64 so its own rounding does not blur the comparison.
    params = {n: p.detach().cpu().double().requires_grad_(True) for n, p in block.named_parameters()}
    Wg, Wu = params["linear_fc1.weight"].chunk(2, dim=0)
    ref = reference_vffn(
        x.double().reshape(-1, D_MODEL), Wg, Wu, params["linear_fc2.weight"], params["norm.weight"], block.norm.eps,
        params["router.weight"], params["depth_router.weight"], vffn.num_experts, vffn.top_k, vffn.max_depth,
        tau=block.tau, gumbel=None if noise is None else noise.double(), train=train,
    ).reshape(SEQ, BATCH, D_MODEL)
    ref_grads = {}
    if train:
        (ref * probe.double()).sum().backward()
        ref_grads = {n: p.grad.float() for n, p in params.items()}
    return out.detach(), ref.detach().float(), grads, ref_grads


def rel_err(a, b):
    return ((a - b).norm() / b.norm().clamp_min(1e-12)).item()
