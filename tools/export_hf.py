#!/usr/bin/env python
"""Export a trainer checkpoint (any TP degree, any ZeRO stage) to a Hugging Face folder.

    python tools/export_hf.py --checkpoint runs/tiny/checkpoints [--step 200] --output runs/tiny/hf [--dtype bf16]

VersatileFFN models load with ``AutoModelForCausalLM.from_pretrained(dir, trust_remote_code=True)`` (the modeling
code is copied into the folder); dense baselines become a plain ``LlamaForCausalLM`` folder. ``--verify`` rebuilds
the megatron model in this process and checks the exported logits and greedy decoding against it.
"""
from __future__ import annotations

import argparse
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # run from a checkout


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--checkpoint", required=True,
                   help="the run's checkpoints/ directory (uses 'latest'), its output_dir, or a step_XXXXXXXX directory")
    p.add_argument("--step", type=int, default=None, help="export this step instead of the latest")
    p.add_argument("--output", required=True, help="new (or empty) output directory")
    p.add_argument("--dtype", choices=("fp32", "bf16"), default="fp32", help="weight dtype in the folder")
    p.add_argument("--tokenizer", default=None,
                   help="tokenizer directory to include (default: data.tokenizer of the run config)")
    p.add_argument("--no-tokenizer", action="store_true", help="export without tokenizer files")
    p.add_argument("--max-shard-size", default="2GB", help="split model.safetensors above this size (e.g. 500MB)")
    p.add_argument("--overwrite", action="store_true", help="replace a non-empty output directory")
    p.add_argument("--verify", action="store_true",
                   help="compare the exported model's logits and greedy decoding with the megatron model (TP=1 here)")
    p.add_argument("--sample", default=None, metavar="TEXT",
                   help="after export, print a greedy continuation of TEXT generated through transformers")
    p.add_argument("--sample-tokens", type=int, default=32)
    return p.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")  # everything is local; never wait on a hub
    from vffn_megatron.device import configure_environment

    configure_environment()  # DS_ACCELERATOR, before anything imports DeepSpeed
    import warnings

    for category in (UserWarning, FutureWarning, DeprecationWarning):  # megatron/Apex fallback notices
        warnings.filterwarnings("ignore", category=category)
    from pathlib import Path

    from vffn_hf.convert import ConversionError, megatron_to_hf
    from vffn_hf.export import save_hf_folder
    from vffn_hf.trainer_ckpt import CheckpointError, load_checkpoint, summary, tokenizer_path

    t0 = time.time()
    try:
        step_dir, cfg, model, vffn, sd = load_checkpoint(args.checkpoint, args.step)
        tok = None
        if not args.no_tokenizer:
            tok = Path(args.tokenizer) if args.tokenizer else tokenizer_path(cfg)
            if tok is None or not tok.exists():
                raise CheckpointError(
                    f"tokenizer {args.tokenizer or (cfg.get('data') or {}).get('tokenizer')!r} not found: pass "
                    f"--tokenizer DIR (the directory the data was tokenized with) or --no-tokenizer")
        info = summary(step_dir, cfg, model)
        print("checkpoint: " + ", ".join(f"{k}={v}" for k, v in info.items()), flush=True)
        out = save_hf_folder(args.output, megatron_to_hf(sd, model, vffn), model, vffn, dtype=args.dtype,
                             tokenizer=tok, max_shard_size=args.max_shard_size, overwrite=args.overwrite)
    except (CheckpointError, ConversionError, FileExistsError, FileNotFoundError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    kind = "VersatileFFNLlamaForCausalLM (trust_remote_code=True)" if vffn is not None else "LlamaForCausalLM"
    print(f"exported {kind} to {out} in {time.time() - t0:.1f}s", flush=True)

    if args.verify:
        from vffn_hf.parity import verify_export

        res = verify_export(sd, model, vffn, out)
        tol = 1e-4 if args.dtype == "fp32" else None
        ok = res["greedy_equal"] and (tol is None or res["max_abs_logit_diff"] <= tol)
        print(f"verify: max abs logit diff {res['max_abs_logit_diff']:.3e} (megatron TP=1 vs transformers), greedy "
              f"{res['greedy_tokens']} tokens {'equal' if res['greedy_equal'] else 'DIFFER'}"
              + ("" if tol is None else f" [tolerance {tol:g}]"), flush=True)
        if not ok and tol is not None:
            print("error: the exported model does not reproduce the checkpoint", file=sys.stderr)
            return 1
    if args.sample is not None:
        print(sample(out, args.sample, args.sample_tokens), flush=True)
    return 0


def sample(folder, text: str, new_tokens: int) -> str:
    """Greedy continuation of ``text`` through transformers alone (what a user of the folder would run)."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(folder, trust_remote_code=True)  # it reads config.json (custom code)
    model = AutoModelForCausalLM.from_pretrained(folder, trust_remote_code=True).eval()
    ids = tok(text, return_tensors="pt", add_special_tokens=False)
    with torch.no_grad():
        out = model.generate(**ids, max_new_tokens=new_tokens, do_sample=False)
    return tok.decode(out[0], skip_special_tokens=True)


if __name__ == "__main__":
    sys.exit(main())
