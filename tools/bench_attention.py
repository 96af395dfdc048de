#!/usr/bin/env python
"""SDPA vs megatron's local attention, side by side: training tokens/s and peak memory of a GPTModel step.

    python tools/bench_attention.py [--json FILE] [--repeat 3] [--steps 4]

Shapes: the tiny preset (configs/tiny.yaml's model, seq 128) and a seq-1024 model. Each (shape, backend)
runs in its own fresh process (so peak memory is its own), alternating backends; the fastest of --repeat
runs is kept and the ratios sdpa / local are printed. Peak memory = the process's peak RSS during the timed
steps minus its RSS before them (the s x s score matrices of local attention show up here). A benchmark,
not a test: absolute numbers depend on the machine, the ratios much less.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)

SHAPES = {
    "tiny_seq128": dict(num_layers=2, hidden_size=64, num_attention_heads=4, ffn_hidden_size=128, seq_length=128,
                        vocab_size=4096, batch=8),
    "d256_seq1024": dict(num_layers=4, hidden_size=256, num_attention_heads=4, ffn_hidden_size=704,
                         seq_length=1024, vocab_size=4096, batch=2),
}


def _worker(shape: str, backend: str, steps: int) -> dict:
    import resource
    import time

    import psutil
    import torch

    from vffn_megatron import GPTConfig, VersatileFFNConfig, build_gpt_model, init_megatron

    init_megatron(1, seed=0)
    spec = dict(SHAPES[shape])
    batch = spec.pop("batch")
    cfg = GPTConfig(**spec)
    model = build_gpt_model(cfg, VersatileFFNConfig(num_experts=4, top_k=2, max_depth=2),
                            attention_backend=backend).train()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    tokens = torch.randint(0, cfg.vocab_size, (batch, cfg.seq_length + 1))
    pos = torch.arange(cfg.seq_length)[None].expand(batch, -1)

    def step():
        loss = model(tokens[:, :-1], pos, None, labels=tokens[:, 1:]).mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    step()  # warm-up: allocations, optimizer state
    rss0 = psutil.Process().memory_info().rss
    t0 = time.perf_counter()
    for _ in range(steps):
        step()
    dt = time.perf_counter() - t0
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # Linux: KiB
    return {"tokens_per_sec": steps * batch * cfg.seq_length / dt, "peak_mib": max(0, peak - rss0) / 2 ** 20}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--json", help="also write the results as JSON to this file")
    p.add_argument("--repeat", type=int, default=3, help="runs per (shape, backend); the fastest is kept")
    p.add_argument("--steps", type=int, default=4, help="timed training steps per run")
    p.add_argument("--shapes", nargs="+", default=list(SHAPES), choices=list(SHAPES))
    p.add_argument("--worker", nargs=2, metavar=("SHAPE", "BACKEND"), help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.worker:
        print(json.dumps(_worker(*args.worker, args.steps)))
        return 0
    env = {**os.environ, "PYTHONPATH": REPO, "PYTHONWARNINGS": "ignore"}
    results: dict = {}
    for shape in args.shapes:
        runs = {"sdpa": [], "local": []}
        for _ in range(args.repeat):
            for backend in ("sdpa", "local"):  # alternating: drifts in machine load hit both
                out = subprocess.run([sys.executable, __file__, "--worker", shape, backend, "--steps", str(args.steps)],
                                     env=env, capture_output=True, text=True, check=True)
                runs[backend].append(json.loads(out.stdout.strip().splitlines()[-1]))
        best = {b: {"tokens_per_sec": max(r["tokens_per_sec"] for r in rs), "peak_mib": max(r["peak_mib"] for r in rs)}
                for b, rs in runs.items()}
        best["speedup_sdpa_vs_local"] = best["sdpa"]["tokens_per_sec"] / best["local"]["tokens_per_sec"]
        best["peak_memory_ratio_sdpa_vs_local"] = best["sdpa"]["peak_mib"] / max(best["local"]["peak_mib"], 1e-9)
        results[shape] = best
        print(f"{shape}: sdpa {best['sdpa']['tokens_per_sec']:,.0f} tok/s, peak +{best['sdpa']['peak_mib']:.0f} MiB | "
              f"local {best['local']['tokens_per_sec']:,.0f} tok/s, peak +{best['local']['peak_mib']:.0f} MiB | "
              f"speedup {best['speedup_sdpa_vs_local']:.2f}x, memory {best['peak_memory_ratio_sdpa_vs_local']:.2f}x",
              flush=True)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
