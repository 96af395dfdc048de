#!/usr/bin/env python
"""Benchmark tools/preprocess_data.py: throughput (MB/s, tokens/s) at several worker counts and the
peak memory of the whole process tree for inputs of several sizes, built by repeating the bundled
corpus. Not a test; prints a table (and --json) for the record.

Default: 10 MB and 100 MB JSONL inputs, 1 and 2 workers, a 4096-piece BPE tokenizer trained on the
bundled corpus. Checks that peak memory of the largest input is within 1.5x of the smallest.
"""
import argparse
import json
import os
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))  # run from a checkout


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--sizes-mb", type=float, nargs="+", default=[10, 100], help="input sizes in MB (default: 10 100)")
    p.add_argument("--workers", type=int, nargs="+", default=[1, 2], help="worker counts (default: 1 2)")
    p.add_argument("--tokenizer-model", help="tokenizer to use (default: train a 4096-piece BPE on the bundled corpus)")
    p.add_argument("--workdir", help="where inputs/outputs go (default: a temporary directory, removed)")
    p.add_argument("--repeat", type=int, default=1,
                   help="runs per configuration; the fastest is reported (default 1; use 3 on a shared machine)")
    p.add_argument("--json", help="write the results as JSON to this file")
    p.add_argument("--max-ratio", type=float, default=1.5, help="allowed peak-memory ratio largest/smallest (default 1.5)")
    args = p.parse_args(argv)

    from vffn_data.bench import build_repeated_corpus, run_measured
    from vffn_data.bundled import corpus_path

    tmp = tempfile.TemporaryDirectory(prefix="vffn-bench-") if not args.workdir else None
    work = Path(args.workdir or tmp.name)
    work.mkdir(parents=True, exist_ok=True)
    py = sys.executable
    tok = args.tokenizer_model
    if not tok:
        tok = str(work / "tokenizer")
        r = run_measured([py, str(REPO / "tools" / "train_tokenizer.py"), "--input", str(corpus_path()),
                          "--output-dir", tok, "--vocab-size", "4096"])
        if r["rc"]:
            print(r["stderr"], file=sys.stderr)
            return 1
        print(f"tokenizer: trained in {r['wall_s']:.1f} s (peak RSS {r['peak_rss'] / 2**20:.0f} MiB)")
    results = []
    for mb in args.sizes_mb:
        src = work / f"corpus-{mb:g}MB.jsonl"
        n = build_repeated_corpus(src, mb)
        for w in args.workers:
            summary = work / f"summary-{mb:g}-{w}.json"
            cmd = [py, str(REPO / "tools" / "preprocess_data.py"), "--input", str(src), "--tokenizer-model", tok,
                   "--output-prefix", str(work / f"out-{mb:g}-{w}"), "--append-eod", "--workers", str(w),
                   "--no-progress", "--summary-json", str(summary)]
            runs = []
            for _ in range(args.repeat):
                r = run_measured(cmd)
                if r["rc"]:
                    print(r["stderr"], file=sys.stderr)
                    return 1
                runs.append((json.loads(summary.read_text()), r, os.getloadavg()[0]))
            # Fastest run for the rates (others' load only ever slows a run down), and the highest
            # memory peak of all runs.
            s, r, load = min(runs, key=lambda x: x[0]["seconds"])
            row = {"input_mb": round(os.path.getsize(src) / 1e6, 1), "documents": n, "workers": w,
                   "seconds": s["seconds"], "wall_seconds": round(r["wall_s"], 2), "mb_per_s": s["mb_per_s"],
                   "tokens_per_s": round(s["tokens_per_s"]), "tokens": s["tokens"],
                   "cpu_seconds": round(r["cpu_s"], 1),
                   "peak_rss_mib": round(max(x[1]["peak_rss"] for x in runs) / 2**20, 1),
                   "processes": r["processes_at_peak"], "loadavg_1min": round(load, 2), "runs": args.repeat}
            results.append(row)
            print(f"{row['input_mb']:>7.1f} MB  workers={w}  {row['seconds']:>6.1f} s  {row['mb_per_s']:>6.2f} MB/s  "
                  f"{row['tokens_per_s']:>10,} tokens/s  peak RSS of all {row['processes']} processes "
                  f"{row['peak_rss_mib']:,.0f} MiB  [wall incl. startup {row['wall_seconds']:.1f} s, "
                  f"CPU {row['cpu_seconds']:.1f} s, load {row['loadavg_1min']:.1f}]", flush=True)
            for f in work.glob(f"out-{mb:g}-{w}_*"):
                f.unlink()
        src.unlink()
    ok = True
    lo, hi = min(args.sizes_mb), max(args.sizes_mb)
    for w in args.workers:
        rows = sorted((r for r in results if r["workers"] == w), key=lambda r: r["input_mb"])
        small, large = rows[0], rows[-1]
        ratio = large["peak_rss_mib"] / small["peak_rss_mib"]
        ok &= ratio <= args.max_ratio
        print(f"workers={w}: peak memory {hi:g} MB input / {lo:g} MB input = {ratio:.2f}x "
              f"({'ok' if ratio <= args.max_ratio else 'TOO HIGH'}, limit {args.max_ratio}x)")
    by_w = {r["workers"]: r for r in results if r["input_mb"] == max(x["input_mb"] for x in results)}
    if len(by_w) > 1:
        base = by_w[min(by_w)]
        for w, r in sorted(by_w.items()):
            print(f"workers={w}: {r['tokens_per_s'] / base['tokens_per_s']:.2f}x the tokens/s of workers={min(by_w)}")
    if os.getloadavg()[0] > 0.5 + max(args.workers):
        print(f"note: the machine was busy (load {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores): rates and "
              "scaling are understated; compare CPU seconds, or rerun on an idle machine")
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2) + "\n")
    if tmp:
        tmp.cleanup()
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
