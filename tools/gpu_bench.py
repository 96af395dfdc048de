#!/usr/bin/env python
"""Training throughput and MFU on one GPU: dense vs VersatileFFN at the 354M-class shape, seq 4096, bf16.

    python tools/gpu_bench.py [--peak-tflops 989] [--steps 10] [--micro-batch 2] [--json FILE]

Shape (the paper's 354M model): 15 layers, d = 1024, 16 heads, SwiGLU hidden 4096, vocab 50,304 (untied),
seq 4096; VersatileFFN N=8, k=2, D=4. One process, megatron-core GPTModel with SDPA attention, bf16
weights, torch's fused AdamW; the architectures alternate, the first step of each run is not timed.
MFU = tokens/s x training FLOPs per token (vffn_megatron.flops.num_flops_per_token, from the config) / the
GPU's dense bf16 peak (--peak-tflops; an H100/H200 SXM's datasheet figure is ~989). Prints one JSON object.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

SHAPE = dict(num_layers=15, hidden_size=1024, num_attention_heads=16, ffn_hidden_size=4096, seq_length=4096,
             vocab_size=50304)


def run(arch: str, steps: int, micro_batch: int, peak_tflops: float) -> dict:
    import torch

    from vffn_megatron import GPTConfig, VersatileFFNConfig, build_gpt_model
    from vffn_megatron.flops import num_flops_per_token

    cfg = GPTConfig(**SHAPE)
    vffn = VersatileFFNConfig(num_experts=8, top_k=2, max_depth=4) if arch == "vffn" else None
    torch.manual_seed(0)
    model = build_gpt_model(cfg, vffn, bf16=True).train()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4, fused=True)
    tokens = torch.randint(0, cfg.vocab_size, (micro_batch, cfg.seq_length + 1), device="cuda")
    pos = torch.arange(cfg.seq_length, device="cuda")[None].expand(micro_batch, -1)
    from vffn_megatron import set_vffn_step

    def step(i):
        set_vffn_step(model, 1000 + i, seed=1)
        loss = model(tokens[:, :-1], pos, None, labels=tokens[:, 1:]).float().mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        return loss

    step(0)
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    t0 = time.perf_counter()
    for i in range(steps):
        loss = step(i + 1)
    torch.cuda.synchronize()
    dt = time.perf_counter() - t0
    tok_s = steps * micro_batch * cfg.seq_length / dt
    flops = num_flops_per_token(cfg, cfg.vocab_size, vffn)
    out = {"tokens_per_sec": tok_s, "train_flops_per_token": flops,
           "mfu": tok_s * flops / (peak_tflops * 1e12), "peak_memory_gib": torch.cuda.max_memory_allocated() / 2 ** 30,
           "params": sum(p.numel() for p in model.parameters()), "final_loss": float(loss)}
    del model, opt
    torch.cuda.empty_cache()
    return out


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--peak-tflops", type=float, default=989.0, help="the GPU's dense bf16 peak, TFLOP/s")
    p.add_argument("--steps", type=int, default=10, help="timed steps per run")
    p.add_argument("--micro-batch", type=int, default=2, help="sequences of 4096 tokens per step")
    p.add_argument("--repeats", type=int, default=2, help="alternating runs per architecture; the fastest is kept")
    p.add_argument("--json", help="also write the JSON to this file")
    args = p.parse_args(argv)
    import torch

    from vffn_megatron.device import use_cuda

    if not use_cuda():
        print("gpu_bench: no CUDA GPU here (torch.cuda.is_available() is False); run it on a GPU machine",
              file=sys.stderr)
        return 2
    from vffn_megatron import init_megatron

    init_megatron(1, seed=0)
    best: dict = {}
    for _ in range(args.repeats):
        for arch in ("dense", "vffn"):
            r = run(arch, args.steps, args.micro_batch, args.peak_tflops)
            if arch not in best or r["tokens_per_sec"] > best[arch]["tokens_per_sec"]:
                best[arch] = r
    summary = {"gpu": torch.cuda.get_device_name(0), "torch": torch.__version__, "shape": SHAPE,
               "micro_batch": args.micro_batch, "peak_tflops": args.peak_tflops, **best,
               "vffn_over_dense_throughput": best["vffn"]["tokens_per_sec"] / best["dense"]["tokens_per_sec"],
               "vffn_over_dense_flops": best["vffn"]["train_flops_per_token"] / best["dense"]["train_flops_per_token"]}
    text = json.dumps(summary, indent=1)
    print(text)
    if args.json:
        Path(args.json).write_text(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
