#!/usr/bin/env python
"""Import a Hugging Face Llama-format model as a trainer checkpoint (step 0) to continue pretraining from.

    python tools/import_hf.py --hf runs/dense/hf --config configs/tiny.yaml [section.key=value ...] [--nproc 2]

A dense model imports into every model.arch (vffn_hf/upcycle.py, as checkpoint.init_from): dense copies it;
vffn / kloop get the FFN as their shared FFN (the post-attention norm as its norm); moe gets it as the shared expert
with the routed experts per moe.upcycle_experts (slices of it, or fresh); routers are freshly initialised.
The checkpoint goes to the run's checkpoint directory, so ``python -m pretrain --config <same config and overrides>`` resumes it.
DeepSpeed resumes only in the layout a checkpoint was written in: use --nproc = the training run's process count
(tensor-parallel x data-parallel size). Without a launcher this script starts torchrun itself when --nproc > 1.
"""
from __future__ import annotations

import argparse
import os
import subprocess
import sys

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)  # run from a checkout
EXIT_ERROR = 2


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--hf", required=True, help="Hugging Face model folder (LlamaForCausalLM or this project's export)")
    p.add_argument("--config", required=True, help="the run config the training will use (YAML)")
    p.add_argument("overrides", nargs="*", metavar="section.key=value", help="config overrides, as for the trainer")
    p.add_argument("--nproc", type=int, default=None,
                   help="processes (= TP x DP of the training run); default: the config's tensor-parallel size")
    p.add_argument("--force", action="store_true", help="write even if the checkpoint directory holds a checkpoint")
    return p.parse_args(argv)


def _relaunch(nproc: int) -> int:
    """Re-run this script under torchrun with ``nproc`` local processes (gloo on CPU, NCCL on GPUs)."""
    from vffn_megatron.device import torchrun_command

    # --nproc is not forwarded: torchrun's parser would take it for an abbreviation of its own --nproc-per-node
    argv, skip = [], False
    for a in sys.argv[1:]:
        if skip or a.startswith("--nproc="):
            skip = False
            continue
        skip = a == "--nproc"
        if not skip:
            argv.append(a)
    cmd = torchrun_command(nproc, [os.path.abspath(__file__), *argv])
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [REPO, os.environ.get("PYTHONPATH")]))}
    return subprocess.call(cmd, env=env)


def main(argv=None) -> int:
    args = parse_args(argv)
    if "RANK" not in os.environ and args.nproc and args.nproc > 1:
        return _relaunch(args.nproc)  # before the heavy imports: the ranks pay for them anyway
    from vffn_megatron.device import configure_environment

    configure_environment()  # DS_ACCELERATOR, before anything imports DeepSpeed
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from pretrain.config import ConfigError, load_config, validate
    from vffn_hf.convert import ConversionError

    def say(msg, err=False):
        if os.environ.get("RANK", "0") == "0":
            print(msg, file=sys.stderr if err else sys.stdout, flush=True)

    import torch.distributed as dist

    ours = not dist.is_initialized()  # tear down only a process group this call creates
    try:
        cfg = load_config(args.config, args.overrides)
        nproc = args.nproc or cfg.parallel.tensor_model_parallel_size
        if "RANK" not in os.environ and nproc > 1:
            return _relaunch(nproc)
        world = int(os.environ.get("WORLD_SIZE", "1"))
        if args.nproc is not None and args.nproc != world:
            raise ConfigError(f"--nproc {args.nproc} but the launcher started {world} process(es)")
        validate(cfg, world_size=world)
        if not os.path.isdir(args.hf):
            raise ConversionError(f"--hf {args.hf} is not a directory (a Hugging Face model folder)")
        from vffn_hf.trainer_import import import_hf

        import_hf(args.hf, cfg, force=args.force, log=say)
    except (ConfigError, ConversionError, FileNotFoundError) as e:
        say(f"error: {e}", err=True)
        return EXIT_ERROR
    finally:
        if ours and dist.is_initialized():
            from vffn_megatron.runtime import destroy

            destroy()
    return 0


if __name__ == "__main__":
    sys.exit(main())
