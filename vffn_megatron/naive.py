"""The straightforward VersatileFFN algorithm (as in the paper's released reference), for benchmarks and tests.

Width path: a Python loop over sub-experts that copies each expert's weight slices and runs a separate
FFN_e (norm + fc1 + fc2) on every token, weighted by w_e (zero where e is not in the token's top-k), i.e.
``sum_e w_e FFN_e(norm(x))`` as written. Depth path: every token through every loop in training and through the batch's maximum
chosen depth at inference, then the chosen x_L is picked. Shares the parameters of a ``VersatileFFN`` so
outputs can be compared exactly; TP=1 only.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F


class NaiveVersatileFFN(torch.nn.Module):
    def __init__(self, block):
        super().__init__()
        self.block = block

    def _ffn(self, u, Wg, Wu, W2):
        z = self.block.norm(u)
        return F.linear(F.silu(F.linear(z, Wg)) * F.linear(z, Wu), W2)

    def forward(self, hidden_states: torch.Tensor):
        b = self.block
        s, bs, d = hidden_states.shape
        x = hidden_states.reshape(s * bs, d)
        N, k, D = b.num_experts, b.top_k, b.max_depth
        Wg, Wu = b.linear_fc1.weight.chunk(2, dim=0)
        W2 = b.linear_fc2.weight
        size = Wg.shape[0] // N
        # width: loop over sub-experts with copied weight slices
        top_v, top_i = torch.topk(b.router(x).float(), k, dim=-1)
        w = torch.softmax(top_v, dim=-1).to(x.dtype)
        wide = torch.zeros_like(x)
        for e in range(N):  # every sub-expert on every token, weighted by w_e (0 where not chosen)
            we = (w * (top_i == e)).sum(-1, keepdim=True)
            sl = slice(e * size, (e + 1) * size)
            wide = wide + we * self._ffn(x, Wg[sl].clone(), Wu[sl].clone(), W2[:, sl].clone())
        q = b.depth_router(x).float()
        # depth: all tokens through all D loops in training, through the batch's deepest choice at inference
        depth = D if self.training else int(q.argmax(-1).max()) + 1
        xs, u = [], x
        for _ in range(depth):
            u = u + self._ffn(u, Wg, Wu, W2)
            xs.append(u - x)
        if self.training:
            y_soft = torch.softmax((q + b._gumbel_noise(tuple(q.shape), q.device)) / b.tau, dim=-1)
            b._micro += 1
            y = F.one_hot(y_soft.argmax(-1), D).to(y_soft.dtype) - y_soft.detach() + y_soft
            deep = sum(y[:, i, None].to(x.dtype) * xs[i] for i in range(D))
            loops = (y * torch.arange(1, D + 1, dtype=y.dtype, device=y.device)).sum(-1)
        else:
            L = q.argmax(-1)
            deep = torch.stack(xs, 0)[L, torch.arange(x.shape[0], device=x.device)]
            loops = (L + 1).to(q.dtype)
        m = ((D - loops) / D).to(x.dtype)[:, None]
        return ((1 - m) * deep + m * wide).reshape(s, bs, d), None
