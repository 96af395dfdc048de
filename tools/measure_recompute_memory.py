"""Bytes saved for backward by one VersatileFFN layer for D = 1, 2, 4, 8, with and without loop recompute.

    python tools/measure_recompute_memory.py [--hidden 256 --ffn 704 --tokens 1024]
"""
import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--hidden", type=int, default=256)
    ap.add_argument("--ffn", type=int, default=704)
    ap.add_argument("--tokens", type=int, default=1024)
    a = ap.parse_args()
    from vffn_megatron import init_megatron
    from vffn_megatron.profiling import recompute_memory_table

    init_megatron(1, seed=0)
    t = recompute_memory_table(a.hidden, a.ffn, a.tokens)  # the compacted backward (the trainer's)
    full = recompute_memory_table(a.hidden, a.ffn, a.tokens, compact=False)
    print(f"d={a.hidden} F={a.ffn} tokens={a.tokens} (fp32); compacted = the trainer's backward (only the "
          f"loops a token's sampled depth uses keep activations), full = every loop of every token\n")
    print("| D | full, no recompute (MiB) | compacted, no recompute (MiB) | full, recompute (MiB) "
          "| compacted, recompute (MiB) | recompute / no recompute (compacted) |")
    print("|---|---|---|---|---|---|")
    for depth in sorted({d for d, _ in t}):
        off, on = t[(depth, False)] / 2**20, t[(depth, True)] / 2**20
        print(f"| {depth} | {full[(depth, False)] / 2**20:.2f} | {off:.2f} | {full[(depth, True)] / 2**20:.2f} | "
              f"{on:.2f} | {on / off:.2f} |")
    d1, d8 = t.get((1, True)), t.get((8, True))
    if d1 and d8:
        print(f"\ngrowth D=1 -> D=8: no recompute {t[(8, False)] / t[(1, False)]:.2f}x, recompute {d8 / d1:.2f}x")
    from vffn_megatron.runtime import destroy
    destroy()


if __name__ == "__main__":
    main()
