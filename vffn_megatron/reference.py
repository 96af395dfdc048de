"""The straightforward VersatileFFN, written from the paper's equations: the one reference implementation.

Deliberately naive (the algorithm as written, as in the paper's released reference): the width path is a
Python loop over sub-experts, each running a separate FFN_e (norm + fc1 + fc2) on copied weight slices for
every token, weighted by w_e (zero where e is not in the token's top-k); the depth path runs every token
through all D loops in training and through the batch's deepest choice at inference, then picks x_L.
Pure functions of tensors (no megatron, no module state), single device: the tests compare the optimised
block (``versatile_ffn.VersatileFFN``) with it, and ``tools/bench_vffn.py`` times it as the baseline.
"""
from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F


def rmsnorm(u, weight, eps):
    """u / sqrt(mean(u^2) + eps) * weight over the last dimension."""
    return F.rms_norm(u, (u.shape[-1],), weight, eps)


def ffn(u, Wg, Wu, W2, norm_w, eps, units=None):
    """FFN(norm(u)) = W2 (silu(Wg z) * (Wu z)), z = rmsnorm(u); ``units``: only those hidden units (copied)."""
    z = rmsnorm(u, norm_w, eps)
    if units is not None:
        Wg, Wu, W2 = Wg[units].clone(), Wu[units].clone(), W2[:, units].clone()
    return F.linear(F.silu(F.linear(z, Wg)) * F.linear(z, Wu), W2)


def versatile_ffn(x, Wg, Wu, W2, norm_w, eps, Wr, Wq, N, k, D, tau=1.0, gumbel=None, train=True,
                  routing_dtype: Optional[torch.dtype] = None, residual: bool = True):
    """The VersatileFFN block output for tokens x: [T, d] (including the residual unless ``residual=False``).

    Wg, Wu: [F, d] gate / up; W2: [d, F]; Wr: [N, d] width router; Wq: [D, d] depth router; gumbel: [T, D]
    noise (train mode). routing_dtype: the dtype of the router logits, softmaxes and depth mix (default x's;
    ``torch.float32`` mirrors the block, which routes in float32 whatever the activations' dtype).

    Written with residual deltas x_i - x (the block's form): out = x + (1 - m) sum_i y_i (x_i - x) + m wide,
    which is the paper's (1 - m) sum_i y_i x_i + m x_wide as sum_i y_i = 1 (straight-through, up to rounding).
    """
    rd = routing_dtype or x.dtype
    size = Wg.shape[0] // N
    # width path: every sub-expert on every token, weighted by w_e (0 where not chosen)
    top_v, top_i = torch.topk(F.linear(x, Wr).to(rd), k, dim=-1)
    w = torch.softmax(top_v, dim=-1).to(x.dtype)
    wide = torch.zeros_like(x)
    for e in range(N):
        we = (w * (top_i == e)).sum(-1, keepdim=True)
        wide = wide + we * ffn(x, Wg, Wu, W2, norm_w, eps, units=slice(e * size, (e + 1) * size))
    # depth path: x_i = x_{i-1} + FFN(norm(x_{i-1})), kept as deltas x_i - x
    q = F.linear(x, Wq).to(rd)
    depth = D if train else int(q.argmax(-1).max()) + 1
    deltas, u = [], x
    for _ in range(depth):
        u = u + ffn(u, Wg, Wu, W2, norm_w, eps)
        deltas.append(u - x)
    if train:
        y_soft = torch.softmax((q + gumbel.to(rd)) / tau, dim=-1)
        y = F.one_hot(y_soft.argmax(-1), D).to(rd) - y_soft.detach() + y_soft  # straight-through
        deep = sum(y[:, i, None].to(x.dtype) * deltas[i] for i in range(D))
        loops = (y * torch.arange(1, D + 1, dtype=rd, device=x.device)).sum(-1)
    else:
        L = q.argmax(-1)
        deep = torch.stack(deltas, 0)[L, torch.arange(x.shape[0], device=x.device)]
        loops = (L + 1).to(rd)
    m = ((D - loops) / D).to(x.dtype)[:, None]
    delta = (1 - m) * deep + m * wide
    return x + delta if residual else delta


def block_forward(block, hidden_states: torch.Tensor, gumbel: Optional[torch.Tensor] = None):
    """``versatile_ffn`` on a ``VersatileFFN`` block's parameters, with the block's calling convention:
    [s, b, d] in, (residual delta [s, b, d], None) out; train or eval by ``block.training``. Reads only the
    block's parameters and hyper-parameters (TP=1); gumbel: [s*b, D] noise, required in train mode."""
    s, b, d = hidden_states.shape
    Wg, Wu = block.linear_fc1.weight.chunk(2, dim=0)
    delta = versatile_ffn(
        hidden_states.reshape(s * b, d), Wg, Wu, block.linear_fc2.weight, block.norm.weight, block.norm.eps,
        block.router.weight, block.depth_router.weight, block.num_experts, block.top_k, block.max_depth,
        tau=block.tau, gumbel=gumbel, train=block.training, routing_dtype=torch.float32, residual=False)
    return delta.reshape(s, b, d), None
