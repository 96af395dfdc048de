#!/usr/bin/env python
"""Export a trainer checkpoint (any TP degree, any ZeRO stage) to a Hugging Face folder.

    python tools/export_hf.py --checkpoint runs/tiny/checkpoints [--step 200] --output runs/tiny/hf [--dtype bf16]

VersatileFFN models load with ``AutoModelForCausalLM.from_pretrained(dir, trust_remote_code=True)`` (the modeling
code is copied into the folder); dense baselines become a plain ``LlamaForCausalLM`` folder.

The folder is written into a temporary sibling and renamed into place when complete. ``--overwrite`` replaces only
a folder that is one of these exports (it holds ``vffn_export.json`` and nothing else) and never the checkpoint or
a directory containing it.

``--verify`` checks the new folder before it replaces anything: config.json, every tensor exactly against the
checkpoint (bf16: against the rounded values), then logits and greedy decoding against the megatron model rebuilt
in this process. ``--verify-only DIR --checkpoint C`` runs the same checks on an existing folder. A failed
verification exits with status 1.

    python tools/export_hf.py --verify-only runs/tiny/hf --checkpoint runs/tiny/checkpoints
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
    p.add_argument("--output", default=None, help="new (or empty) output directory (required unless --verify-only)")
    p.add_argument("--dtype", choices=("fp32", "bf16"), default="fp32", help="weight dtype in the folder")
    p.add_argument("--tokenizer", default=None,
                   help="tokenizer directory to include (default: data.tokenizer of the run config)")
    p.add_argument("--no-tokenizer", action="store_true", help="export without tokenizer files")
    p.add_argument("--max-shard-size", default="2GB", help="split model.safetensors above this size (e.g. 500MB)")
    p.add_argument("--overwrite", action="store_true",
                   help="replace an earlier export in --output (refused for any folder that is not one)")
    p.add_argument("--verify", action="store_true",
                   help="before the folder replaces anything: compare config, every tensor (exactly) and the logits "
                        "and greedy decoding with the megatron model (TP=1 here); exit 1 on any difference")
    p.add_argument("--verify-only", default=None, metavar="DIR",
                   help="verify the existing export DIR against --checkpoint (no export); exit 1 on any difference")
    p.add_argument("--no-logit-check", action="store_true",
                   help="with --verify / --verify-only: compare config and tensors only (no megatron model built)")
    p.add_argument("--checkpoint-verify", choices=("full", "size"), default="full",
                   help="check the checkpoint's files against its manifest first: full = sizes and crc32 (default), "
                        "size = sizes only (faster for huge checkpoints)")
    p.add_argument("--sample", default=None, metavar="TEXT",
                   help="after export, print a greedy continuation of TEXT generated through transformers")
    p.add_argument("--sample-tokens", type=int, default=32)
    return p.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    if (args.output is None) == (args.verify_only is None):
        print("error: pass --output DIR (export) or --verify-only DIR (check an existing export), not both",
              file=sys.stderr)
        return 2
    os.environ.setdefault("HF_HUB_OFFLINE", "1")  # everything is local; never wait on a hub
    from vffn_megatron.device import configure_environment

    configure_environment()  # DS_ACCELERATOR, before anything imports DeepSpeed
    import warnings

    for category in (UserWarning, FutureWarning, DeprecationWarning):  # megatron/Apex fallback notices
        warnings.filterwarnings("ignore", category=category)
    from pathlib import Path

    from vffn_hf.convert import ConversionError, megatron_to_hf
    from vffn_hf.export import check_output, save_hf_folder
    from vffn_hf.parity import VerificationError, verify_folder
    from vffn_hf.trainer_ckpt import (CheckpointError, load_checkpoint, resolve_step_dir, summary,
                                     tokenizer_path)

    t0 = time.time()
    errors = (CheckpointError, ConversionError, FileExistsError, FileNotFoundError)
    try:
        if args.output is not None:  # before the (possibly long) checkpoint load; checked again when writing
            check_output(args.output, args.overwrite,
                         protect=(args.checkpoint, resolve_step_dir(args.checkpoint, args.step)))
        step_dir, cfg, model, vffn, sd = load_checkpoint(args.checkpoint, args.step, verify=args.checkpoint_verify)
    except errors as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    info = summary(step_dir, cfg, model)
    print("checkpoint: " + ", ".join(f"{k}={v}" for k, v in info.items()), flush=True)

    def verify(folder, shown):
        try:
            verify_folder(folder, sd, model, vffn, logits=not args.no_logit_check,
                          log=lambda line: print(line, flush=True))
        except VerificationError as e:
            raise VerificationError(f"{shown} does not reproduce the checkpoint {step_dir}: {e}") from e

    if args.verify_only is not None:
        folder = Path(args.verify_only)
        if not (folder / "config.json").is_file():
            print(f"error: {folder} has no config.json: not a Hugging Face export", file=sys.stderr)
            return 2
        try:
            verify(folder, folder)
        except VerificationError as e:
            print(f"error: {e}", file=sys.stderr)
            return 1
        except errors as e:
            print(f"error: {e}", file=sys.stderr)
            return 2
        print(f"verified {folder} against {step_dir} in {time.time() - t0:.1f}s", flush=True)
        return 0
    try:
        tok = None
        if not args.no_tokenizer:
            tok = Path(args.tokenizer) if args.tokenizer else tokenizer_path(cfg)
            if tok is None or not tok.exists():
                raise CheckpointError(
                    f"tokenizer {args.tokenizer or (cfg.get('data') or {}).get('tokenizer')!r} not found: pass "
                    f"--tokenizer DIR (the directory the data was tokenized with) or --no-tokenizer")
        out = save_hf_folder(args.output, megatron_to_hf(sd, model, vffn), model, vffn, dtype=args.dtype,
                             tokenizer=tok, max_shard_size=args.max_shard_size, overwrite=args.overwrite,
                             protect=(step_dir, Path(args.checkpoint)),
                             source={"checkpoint": str(step_dir.resolve())},
                             before_swap=(lambda tmp: verify(tmp, f"the new export (for {args.output})"))
                             if args.verify else None)
    except VerificationError as e:
        print(f"error: {e}\nnothing was written to {args.output} (an earlier export there is unchanged)",
              file=sys.stderr)
        return 1
    except errors as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    kind = "VersatileFFNLlamaForCausalLM (trust_remote_code=True)" if vffn is not None else "LlamaForCausalLM"
    print(f"exported {kind} to {out} in {time.time() - t0:.1f}s" + (" (verified)" if args.verify else ""),
          flush=True)
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
