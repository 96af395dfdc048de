"""Benchmark one VersatileFFN block against one dense SwiGLU FFN with the same weights, side by side.

    python tools/bench_vffn.py [--sizes 512x1408,1024x2816] [--tokens 2048] [--repeats 5] [--json]

For each size it times, interleaved in one process (median of --repeats): the dense FFN (RMSNorm + megatron
MLP), our VersatileFFN block, and the straightforward algorithm (vffn_megatron/reference.py: loop over
sub-experts with weight copies, full-depth eval), in train mode (forward + backward) and eval mode.

FLOP ratios relative to the dense FFN come from the FLOP model, vffn_megatron/flops.py (train_flop_ratio:
training; eval_expected_ratio: inference at the measured mean loops and share of tokens with a width path).
Ratios are VersatileFFN time / dense time; speedups are straightforward time / our time.
It also counts the all-reduces of one block forward at TP=2 (a 2-process gloo group via torchrun).
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)


def _blocks(hidden: int, ffn: int, vffn_cfg):
    import torch
    from megatron.core.tensor_parallel import ColumnParallelLinear, RowParallelLinear
    from megatron.core.transformer.mlp import MLP, MLPSubmodules
    from megatron.core.transformer.spec_utils import build_module

    from vffn_megatron import GPTConfig, get_vffn_mlp_spec, transformer_config
    from vffn_megatron.reference import block_forward

    tcfg = transformer_config(GPTConfig(hidden_size=hidden, ffn_hidden_size=ffn, num_attention_heads=4))
    block = build_module(get_vffn_mlp_spec(vffn_cfg), config=tcfg)
    block.set_layer_number(1)
    mlp = MLP(tcfg, MLPSubmodules(linear_fc1=ColumnParallelLinear, linear_fc2=RowParallelLinear),
              ffn_hidden_size=ffn)
    with torch.no_grad():
        mlp.linear_fc1.weight.copy_(block.linear_fc1.weight)
        mlp.linear_fc2.weight.copy_(block.linear_fc2.weight)

    def dense(x):
        return mlp(block.norm(x))

    gumbel = {}  # train-mode noise of the straightforward algorithm, one [T, D] draw per token count

    def straightforward(x):
        T = x.shape[0] * x.shape[1]
        if T not in gumbel:
            gumbel[T] = -torch.empty(T, vffn_cfg.max_depth, device=x.device).exponential_().log()
        return block_forward(block, x, gumbel=gumbel[T])

    return block, dense, straightforward, [mlp]


def _timed(fn) -> float:
    import torch

    sync = torch.cuda.synchronize if torch.cuda.is_available() else (lambda: None)
    sync()
    t = time.perf_counter()
    fn()
    sync()
    return time.perf_counter() - t


def bench_size(hidden: int, ffn: int, tokens: int, repeats: int, vffn_cfg) -> dict:
    import torch

    from vffn_megatron.device import use_cuda
    from vffn_megatron.flops import ffn_flop_ratio, train_flop_ratio

    block, dense, naive, _ = _blocks(hidden, ffn, vffn_cfg)
    D = vffn_cfg.max_depth
    dev = "cuda" if use_cuda() else "cpu"
    x = torch.randn(tokens, 1, hidden, device=dev)
    probe = torch.randn(tokens, 1, hidden, device=dev)

    def full_backward(h):  # today's algorithm before compaction: every loop of every token with its backward
        block.compact_backward = False
        try:
            return block(h)
        finally:
            block.compact_backward = True

    def train(f):
        def run():
            xi = x.detach().requires_grad_(True)
            out = f(xi)
            out = out[0] if isinstance(out, tuple) else out
            (out * probe).sum().backward()
        return run

    def evaluate(f):
        def run():
            with torch.no_grad():
                f(x)
        return run

    variants = {"dense": dense, "ours": block, "naive": naive, "full_backward": full_backward}
    times = {f"{mode}_{name}": [] for mode in ("train", "eval") for name in variants
             if not (mode == "eval" and name == "full_backward")}  # the same eval path
    block.set_step(10**6)  # the late-training temperature
    for rep in range(repeats + 1):  # first round is warm-up
        for mode, wrap in (("train", train), ("eval", evaluate)):
            block.train(mode == "train")  # the straightforward algorithm follows the block's mode
            for name, f in variants.items():
                if f"{mode}_{name}" not in times:
                    continue
                t = _timed(wrap(f))
                if rep:
                    times[f"{mode}_{name}"].append(t)
    med = {key: statistics.median(v) for key, v in times.items()}

    # the benchmark batch's sampled depths (the same noise stream as the timed training forwards)
    block.train()
    block.pop_stats()
    with torch.no_grad():
        block(x)
    sampled = block.pop_stats()["depth_counts"]
    L = torch.arange(1, D + 1, dtype=torch.float64)
    mean_sampled = float((sampled * L).sum() / sampled.sum())

    block.eval()
    block.pop_stats()
    with torch.no_grad():
        block(x)
    depth_counts = block.pop_stats()["depth_counts"]
    mean_loops = float((depth_counts * L).sum() / depth_counts.sum())
    wide_share = float(depth_counts[:-1].sum() / depth_counts.sum())
    return {
        "d": hidden, "ffn": ffn, "tokens": tokens,
        "train_ratio": med["train_ours"] / med["train_dense"],
        "train_flop_ratio": ffn_flop_ratio(hidden, ffn, vffn_cfg),  # the full-backward algorithm's
        "train_compact_flop_ratio": train_flop_ratio(hidden, ffn, vffn_cfg, mean_sampled_loops=mean_sampled),
        "train_ratio_vs_compact_flops": (med["train_ours"] / med["train_dense"])
        / train_flop_ratio(hidden, ffn, vffn_cfg, mean_sampled_loops=mean_sampled),
        "train_speedup_vs_full_backward": med["train_full_backward"] / med["train_ours"],
        "mean_sampled_loops": mean_sampled,
        "train_speedup_vs_reference": med["train_naive"] / med["train_ours"],
        "eval_ratio": med["eval_ours"] / med["eval_dense"],
        "eval_expected_ratio": ffn_flop_ratio(hidden, ffn, vffn_cfg, mean_loops=mean_loops, wide_share=wide_share),
        "eval_speedup_vs_full_depth": med["eval_naive"] / med["eval_ours"],
        "mean_loops": mean_loops,
        "wide_share": wide_share,
        "seconds": med,
    }


def count_tp2_collectives(hidden: int, ffn: int, tokens: int, max_depth: int) -> dict:
    """Launch this script under torchrun with 2 ranks in --count-collectives mode; parse its JSON line."""
    from vffn_megatron.device import torchrun_command

    cmd = torchrun_command(2, [os.path.abspath(__file__), "--count-collectives", "--sizes", f"{hidden}x{ffn}",
                               "--tokens", str(tokens), "--max-depth", str(max_depth)])
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": REPO}
    out = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    for line in out.stdout.splitlines():
        if line.startswith("{"):
            return json.loads(line)
    raise RuntimeError(f"collective count run failed:\n{out.stdout[-3000:]}\n{out.stderr[-3000:]}")


def _count_collectives_worker(hidden: int, ffn: int, tokens: int, vffn_cfg) -> None:
    import torch
    import torch.distributed as dist
    from megatron.core.transformer.spec_utils import build_module

    from vffn_megatron import GPTConfig, get_vffn_mlp_spec, init_megatron, transformer_config

    init_megatron(2, seed=0)
    tcfg = transformer_config(GPTConfig(hidden_size=hidden, ffn_hidden_size=ffn, num_attention_heads=4),
                              tensor_parallel_size=2)
    block = build_module(get_vffn_mlp_spec(vffn_cfg), config=tcfg)
    calls = {"all_reduce": 0, "other": 0}
    real = {name: getattr(dist, name) for name in
            ("all_reduce", "all_gather", "all_gather_into_tensor", "reduce_scatter_tensor", "broadcast")}

    def wrap(name):
        def counted(*a, **kw):
            calls["all_reduce" if name == "all_reduce" else "other"] += 1
            return real[name](*a, **kw)
        return counted

    result = {}
    x = torch.randn(tokens, 1, hidden)
    for mode in ("train", "eval"):
        block.train(mode == "train")
        for name in real:
            setattr(dist, name, wrap(name))
        calls.update(all_reduce=0, other=0)
        with torch.set_grad_enabled(mode == "train"):
            block(x)
        for name, fn in real.items():
            setattr(dist, name, fn)
        result[f"{mode}_forward_all_reduces"] = calls["all_reduce"]
        result[f"{mode}_forward_other_collectives"] = calls["other"]
    if dist.get_rank() == 0:
        print(json.dumps(result), flush=True)


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", default="512x1408,1024x2816", help="comma-separated DxF (hidden x ffn)")
    ap.add_argument("--tokens", type=int, default=2048)
    ap.add_argument("--repeats", type=int, default=5, help="timed rounds per variant (median reported)")
    ap.add_argument("--num-experts", type=int, default=8)
    ap.add_argument("--top-k", type=int, default=2)
    ap.add_argument("--max-depth", type=int, default=4)
    ap.add_argument("--json", action="store_true", help="print one JSON object instead of a table")
    ap.add_argument("--no-tp", action="store_true", help="skip the TP=2 collective count")
    ap.add_argument("--count-collectives", action="store_true", help=argparse.SUPPRESS)
    a = ap.parse_args(argv)
    try:
        sizes = [tuple(int(v) for v in s.lower().split("x")) for s in a.sizes.split(",")]
        assert all(len(s) == 2 for s in sizes)
    except (ValueError, AssertionError):
        ap.error(f"--sizes must look like 512x1408,1024x2816; got {a.sizes!r}")

    from vffn_megatron import VersatileFFNConfig, init_megatron

    vffn_cfg = VersatileFFNConfig(num_experts=a.num_experts, top_k=a.top_k, max_depth=a.max_depth,
                                  aux_loss_coeff=0.0)
    for hidden, ffn in sizes:
        vffn_cfg.validate(ffn, tensor_parallel_size=2 if not a.no_tp else 1)
    if a.count_collectives:
        _count_collectives_worker(*sizes[0], a.tokens, vffn_cfg)
        return

    init_megatron(1, seed=0)
    results = [bench_size(h, f, a.tokens, a.repeats, vffn_cfg) for h, f in sizes]
    report = {"sizes": [{k: v for k, v in r.items() if k not in ("seconds", "wide_share")} for r in results],
              "max_depth": a.max_depth}
    if not a.no_tp:
        counts = count_tp2_collectives(*sizes[0], min(a.tokens, 256), a.max_depth)
        report["tp2_allreduces_per_block_forward"] = counts["train_forward_all_reduces"]
        report["tp2_collectives"] = counts
    if a.json:
        print(json.dumps(report))
        return
    print(f"VersatileFFN N={a.num_experts} k={a.top_k} D={a.max_depth}, {a.tokens} tokens, fp32, "
          f"{a.repeats} timed rounds (median)\n")
    print("| d | F | train ratio | train FLOP ratio (compact) | train speedup vs full backward | "
          "train speedup vs straightforward | eval ratio | eval expected | eval speedup vs full depth | "
          "mean sampled loops (train) | mean loops (eval) |")
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    for r in results:
        print(f"| {r['d']} | {r['ffn']} | {r['train_ratio']:.2f} | {r['train_compact_flop_ratio']:.2f} | "
              f"{r['train_speedup_vs_full_backward']:.2f}x | {r['train_speedup_vs_reference']:.2f}x | "
              f"{r['eval_ratio']:.2f} | {r['eval_expected_ratio']:.2f} | {r['eval_speedup_vs_full_depth']:.2f}x | "
              f"{r['mean_sampled_loops']:.2f} | {r['mean_loops']:.2f} |")
    if "tp2_collectives" in report:
        c = report["tp2_collectives"]
        print(f"\nTP=2 collectives in one block forward: train {c['train_forward_all_reduces']} all-reduces "
              f"(+{c['train_forward_other_collectives']} other), eval {c['eval_forward_all_reduces']} "
              f"all-reduces (+{c['eval_forward_other_collectives']} other); D = {a.max_depth}")


if __name__ == "__main__":
    main()
