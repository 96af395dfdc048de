"""Run under torchrun with 2 ranks: a tiny VersatileFFN GPTModel at TP=2, then at TP=1 (DP=2, rank 0 compared),
same seed and batch, Gumbel sampling active; then TP=2 again with megatron's local attention instead of SDPA,
and with the full-backward training algorithm instead of the compacted one.
Rank 0 writes losses, eval logits and gathered gradients to OUT."""
import sys

import torch
import torch.distributed as dist

from vffn_megatron import GPTConfig, VersatileFFNConfig, build_gpt_model, init_megatron, set_vffn_step
from megatron.core import parallel_state


def gather_full(name, p, grad):
    from megatron.core import parallel_state as ps

    if not getattr(p, "tensor_model_parallel", False) or ps.get_tensor_model_parallel_world_size() == 1:
        return grad.clone()
    group = ps.get_tensor_model_parallel_group()
    parts = [torch.empty_like(grad) for _ in range(dist.get_world_size(group))]
    dist.all_gather(parts, grad.contiguous(), group=group)
    if name.endswith("linear_fc1.weight"):  # gated layout: rank r holds [gate_r; up_r]
        gates, ups = zip(*(t.chunk(2, dim=0) for t in parts))
        return torch.cat([*gates, *ups], dim=0)
    return torch.cat(parts, dim=p.partition_dim)


def count_block_all_reduces(model, hidden):
    """All-reduces of one VersatileFFN block forward, train and eval (counted on this rank)."""
    block = next(m for m in model.modules() if hasattr(m, "compact_backward"))
    calls, real = [0], dist.all_reduce

    def counted(*a, **kw):
        calls[0] += 1
        return real(*a, **kw)

    out = {}
    for mode in ("train", "eval"):
        block.train(mode == "train")
        dist.all_reduce, calls[0] = counted, 0
        try:
            with torch.set_grad_enabled(mode == "train"):
                block(hidden)
        finally:
            dist.all_reduce = real
        out[mode] = calls[0]
    block.pop_stats()
    return out


def run(tp, attention_backend="sdpa", steps=4, compact_backward=True):
    init_megatron(tp, seed=42)
    cfg = GPTConfig(num_layers=2, hidden_size=64, num_attention_heads=4, ffn_hidden_size=128, seq_length=16,
                    vocab_size=128)
    model = build_gpt_model(cfg, VersatileFFNConfig(num_experts=4, top_k=2, max_depth=3, aux_loss_coeff=1e-2),
                            tensor_parallel_size=tp, attention_backend=attention_backend)
    for m in model.modules():
        if hasattr(m, "compact_backward"):
            m.compact_backward = compact_backward
    g = torch.Generator().manual_seed(0)
    tokens = torch.randint(0, cfg.vocab_size, (2, cfg.seq_length + 1), generator=g)
    inp, labels = tokens[:, :-1], tokens[:, 1:]
    pos = torch.arange(cfg.seq_length)[None].expand(2, -1)
    opt = torch.optim.SGD(model.parameters(), lr=0.5)
    losses, first_grads = [], None
    for step in range(steps):
        set_vffn_step(model, step * 500, seed=7)  # large steps: a low temperature, so choices matter
        model.train()
        loss = model(inp, pos, None, labels=labels).mean()
        opt.zero_grad()
        loss.backward()
        if first_grads is None:
            first_grads = {n: gather_full(n, p, p.grad) for n, p in model.named_parameters()}
        opt.step()
        losses.append(loss.item())
    model.eval()
    with torch.no_grad():
        logits = model(inp, pos, None)
    from megatron.core.tensor_parallel import gather_from_tensor_model_parallel_region
    logits = gather_from_tensor_model_parallel_region(logits)
    depth_counts = sum(m.pop_stats()["depth_counts"] for m in model.modules() if hasattr(m, "pop_stats"))
    hidden = torch.randn(16, 2, cfg.hidden_size, generator=torch.Generator().manual_seed(1))
    all_reduces = count_block_all_reduces(model, hidden)
    res = {"all_reduces": all_reduces, "losses": losses, "grads": first_grads, "logits": logits, "depth_counts": depth_counts}
    parallel_state.destroy_model_parallel()  # keep the process group: re-creating it under torchrun hangs
    return res


if __name__ == "__main__":
    out = sys.argv[1]
    r2 = run(2)
    r2_local = run(2, "local")
    r2_full = run(2, compact_backward=False)
    r1 = run(1)
    import os
    if int(os.environ["RANK"]) == 0:
        torch.save({"tp2": r2, "tp1": r1, "tp2_local": r2_local, "tp2_full_backward": r2_full}, out)
