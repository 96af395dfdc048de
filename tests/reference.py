"""Straightforward single-device VersatileFFN, written from the paper's equations for the tests.

Deliberately naive: a Python loop over sub-experts with sliced weight copies, every token through all D loops.
Returns the block output *including* the residual.
"""
import torch
import torch.nn.functional as F


def rmsnorm(u, weight, eps):
    return u * torch.rsqrt(u.pow(2).mean(-1, keepdim=True) + eps) * weight


def ffn(u, Wg, Wu, W2, norm_w, eps, units=None):
    z = rmsnorm(u, norm_w, eps)
    if units is not None:
        Wg, Wu, W2 = Wg[units], Wu[units], W2[:, units]
    return (F.silu(z @ Wg.T) * (z @ Wu.T)) @ W2.T


def versatile_ffn(x, Wg, Wu, W2, norm_w, eps, Wr, Wq, N, k, D, tau=1.0, gumbel=None, train=True):
    """x: [T, d]. gumbel: [T, D] noise (train mode)."""
    Fh = Wg.shape[0]
    size = Fh // N
    # width path
    top_v, top_i = torch.topk(x @ Wr.T, k, dim=-1)
    w = torch.softmax(top_v, dim=-1)
    wide = torch.zeros_like(x)
    for e in range(N):
        sel = (top_i == e).to(x.dtype)  # [T, k]
        we = (w * sel).sum(-1, keepdim=True)
        wide = wide + we * ffn(x, Wg, Wu, W2, norm_w, eps, units=slice(e * size, (e + 1) * size))
    x_wide = x + wide
    # depth path
    xs = [x]
    for _ in range(D):
        xs.append(xs[-1] + ffn(xs[-1], Wg, Wu, W2, norm_w, eps))
    q = x @ Wq.T
    if train:
        y_soft = torch.softmax((q + gumbel) / tau, dim=-1)
        y = F.one_hot(y_soft.argmax(-1), D).to(x.dtype) - y_soft.detach() + y_soft
        x_deep = sum(y[:, i:i + 1] * xs[i + 1] for i in range(D))
        loops = (y * torch.arange(1, D + 1, dtype=x.dtype)).sum(-1)
    else:
        L = q.argmax(-1) + 1
        x_deep = torch.stack(xs[1:], 0)[L - 1, torch.arange(x.shape[0])]
        loops = L.to(x.dtype)
    m = ((D - loops) / D)[:, None]
    return (1 - m) * x_deep + m * x_wide
