"""Training throughput of the VersatileFFN model vs the dense and k-loop baselines, same config, same process.

    torchrun --nproc_per_node 2 -m pretrain.benchmark --config configs/tiny.yaml --steps 40 [key=value ...]

Every run uses the config as given except ``model.arch``: vffn (the trainer's compacted backward),
vffn_full_backward (the same model with the full-backward algorithm, every loop's backward for every token:
the algorithm before compaction, selectable here only), dense (megatron's SwiGLU MLP with the same
ffn_hidden_size, i.e. the same FFN parameters) and kloop with kloop.loops = vffn.max_depth. Checkpoints,
evaluation and TensorBoard are off. The runs alternate ``--repeats`` times; tokens/s excludes each run's
first step (allocation / warm-up).
"""
from __future__ import annotations

import argparse
import json
import os
import sys


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m pretrain.benchmark", description=__doc__.split("\n\n")[0])
    p.add_argument("--config", required=True)
    p.add_argument("overrides", nargs="*")
    p.add_argument("--steps", type=int, default=30)
    p.add_argument("--repeats", type=int, default=1)
    p.add_argument("--json", help="also write the results to this file (rank 0)")
    args = p.parse_args(argv)
    from vffn_megatron.device import configure_environment

    configure_environment()  # DS_ACCELERATOR, before anything imports DeepSpeed
    import torch.distributed as dist

    from .checks import preflight
    from .config import ConfigError, load_config, validate
    from .train import train

    fixed = [f"schedule.train_steps={args.steps}", "schedule.eval_interval=0", "checkpoint.interval=0",
             "checkpoint.save_at_end=false", "checkpoint.resume=none", "logging.tensorboard=false",
             "logging.progress=none"]
    world = int(os.environ.get("WORLD_SIZE", "1"))
    runs = {}
    try:
        base = load_config(args.config, args.overrides)
        for name in ("vffn", "vffn_full_backward", "dense", "kloop"):
            arch = "vffn" if name.startswith("vffn") else name
            # paths every rank sees: <output_dir>/benchmark/<name>, shared data cache
            cfg = load_config(args.config, args.overrides + fixed + [
                f"model.arch={arch}", f"output_dir={os.path.join(base.output_dir, 'benchmark', name)}",
                f"data.cache_dir={base.data_cache_dir}", f"kloop.loops={base.vffn.max_depth}"])
            validate(cfg, world_size=world)
            runs[name] = cfg
        tokenizer, vocab = preflight(runs["vffn"])
    except ConfigError as e:
        print(f"config error: {e}", file=sys.stderr)
        return 2
    results = {arch: [] for arch in runs}
    for _ in range(args.repeats):
        for arch, cfg in runs.items():
            from vffn_megatron.versatile_ffn import VersatileFFN

            VersatileFFN.compact_backward = arch != "vffn_full_backward"
            try:
                r = train(cfg, tokenizer, vocab)
            finally:
                VersatileFFN.compact_backward = True
            results[arch].append({"tokens_per_sec": r.tokens_per_sec, "final_loss": r.losses[r.final_step]})
    params = {}
    if dist.get_rank() == 0:
        from .train import build_model

        for arch, cfg in runs.items():  # parameter counts of the TP-rank-0 shard, for the table
            params[arch] = sum(p.numel() for p in build_model(cfg, vocab).parameters())
        cfg = runs["vffn"]
        tp = cfg.parallel.tensor_model_parallel_size
        print(f"\n{world} process(es), TP={tp}, DP={world // tp}, ZeRO-{cfg.parallel.zero_stage}, {cfg.precision}, "
              f"global batch {cfg.schedule.global_batch_size} x {cfg.model.seq_length} tokens, {args.steps} steps")
        print(f"{'model':20} {'params/rank':>12} {'tokens/s':>10} {'final loss':>11}")
        mean = {arch: sum(r["tokens_per_sec"] for r in rs) / len(rs) for arch, rs in results.items()}
        for arch, rs in results.items():
            print(f"{arch:20} {params[arch]:>12,} {mean[arch]:>10,.0f} {rs[-1]['final_loss']:>11.4f}")
        ratio = mean["vffn"] / mean["dense"]
        ratios = {"vffn_over_dense": ratio, "vffn_over_kloop": mean["vffn"] / mean["kloop"],
                  "compact_speedup_vs_full_backward": mean["vffn"] / mean["vffn_full_backward"]}
        print(f"VersatileFFN / dense throughput: {ratio:.2f}; VersatileFFN / k-loop (k = D): "
              f"{ratios['vffn_over_kloop']:.2f}; compacted / full backward: "
              f"{ratios['compact_speedup_vs_full_backward']:.2f}")
        if args.json:
            with open(args.json, "w") as f:
                json.dump({"results": results, "params": params, "ratio": ratio, **ratios}, f, indent=1)
    from vffn_megatron.runtime import destroy

    destroy()
    return 0


if __name__ == "__main__":
    sys.exit(main())
