"""``python -m pretrain --config configs/X.yaml [section.key=value ...]`` (console script: vffn-pretrain).

Run it under a launcher for several processes (launch/torchrun.sh, launch/deepspeed.sh,
launch/slurm.sbatch); without one it trains in a single process. Every check that can fail on the
config runs before any process group starts; with several ranks the group then starts only to give every rank
global rank 0's output_dir lock verdict (pretrain/run_lock.py), before the data, tokenizer and checkpoint checks.

Exit codes: 0 done (or stopped by SIGTERM / SIGINT after saving), 2 bad configuration (or output_dir in use
by another run: pretrain/run_lock.py), 3 non-finite loss (also max_consecutive_skips skipped steps in a row),
4 a checkpoint could not be saved (full disk, ...: the partial save is removed, ``latest`` left alone),
5 lost contact with another rank (a host died or its link dropped: pretrain/peers.py names it; restart every
host to resume from the last complete checkpoint).
With ``VFFN_EXIT_STATUS_DIR`` set (launch/torchrun.sh sets it), each rank also writes its exit code to
``<dir>/rank_<RANK>.exit``: torchrun itself reports 1 whenever it was signalled, so the launcher reads the
workers' own codes from there.
"""
from __future__ import annotations

import argparse
import os
import sys

from .exit_status import EXIT_CONFIG, EXIT_NONFINITE, EXIT_SAVE
from .exit_status import write as _write_exit_status


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m pretrain", description="Pretrain a VersatileFFN (or dense) GPT with megatron-core + DeepSpeed.",
        epilog="example: python -m pretrain --config configs/tiny.yaml vffn.max_depth=3 schedule.train_steps=50")
    p.add_argument("--config", required=True, help="YAML run config (see configs/)")
    p.add_argument("overrides", nargs="*", metavar="section.key=value",
                   help="override any config value (YAML syntax: 1e-3, true, null, [1,2])")
    p.add_argument("--check", action="store_true",
                   help="print the model's parameter count, validate config, data and tokenizer, then exit")
    p.add_argument("--print-config", action="store_true", help="print the resolved config and exit")
    p.add_argument("--print-deepspeed-config", action="store_true",
                   help="print the DeepSpeed JSON generated for this config and WORLD_SIZE (default 1), and exit")
    return p


def _say(msg: str, err: bool = False) -> None:
    # one copy per node: every local rank runs the same checks
    if os.environ.get("LOCAL_RANK", "0") == "0":
        print(msg, file=sys.stderr if err else sys.stdout, flush=True)


def quiet_library_warnings() -> None:
    """Known, harmless import-time warnings of the pinned libraries (no Apex / Transformer Engine on
    purpose; deprecations inside megatron-core) would otherwise bury the progress line."""
    import warnings

    for msg in (r".*(Apex|Transformer Engine).* not installed", r"full scope is deprecated",
                r"`torch\.distributed\.all_gather_into_tensor` is deprecated",
                r"`torch\.distributed\.reduce_scatter_tensor` is deprecated"):
        warnings.filterwarnings("ignore", message=msg)


def _say_params(cfg, vocab: int) -> None:
    """The whole model's parameter count (built on the meta device: no memory, any size)."""
    from .params import count_parameters

    _say(f"model.arch {cfg.model.arch}, vocab {vocab}: {count_parameters(cfg, vocab).describe()}")


def main(argv: list[str] | None = None) -> int:
    code = 1
    try:
        code = _main(argv)
    except SystemExit as e:  # argparse errors / --help
        code = e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
        raise
    finally:
        _write_exit_status(code)
    return code


def _main(argv: list[str] | None = None) -> int:
    # intermixed: overrides may stand on both sides of a flag (`a.x=1 --check b.y=2`)
    args = _parser().parse_intermixed_args(argv)
    from .run_lock import agree, abort_start, lock_run, watch_parent

    watch_parent()  # under a launcher: die with it (never train on as an orphan beside a relaunch)
    quiet_library_warnings()
    from vffn_megatron.device import configure_environment

    configure_environment()  # DS_ACCELERATOR, before anything imports DeepSpeed
    from .checkpoint import check_layout, check_same_model, resolve_resume
    from .checks import preflight
    from .config import ConfigError, load_config, validate
    from .engine import check_deepspeed_overrides

    world = int(os.environ.get("WORLD_SIZE", "1"))
    try:
        cfg = load_config(args.config, args.overrides)
        if args.print_config:
            _say(cfg.to_yaml())
            return 0
        validate(cfg, world_size=world)
        check_deepspeed_overrides(cfg, world)  # DeepSpeed's own config check of parallel.deepspeed_overrides
        if args.print_deepspeed_config:
            import json

            from .engine import ds_config

            _say(json.dumps(ds_config(cfg, world), indent=2))
            return 0
        if args.check and cfg.model.vocab_size is not None:  # before the file checks: shown with data missing too
            _say_params(cfg, cfg.model.vocab_size)
        if not args.check:  # one run per output_dir: rank 0 locks it, every rank gets its verdict
            refusal = agree(lock_run(cfg), cfg.parallel.timeout_minutes)
            if refusal is not None:
                _say(f"error: {refusal}", err=True)
                abort_start()
                return EXIT_CONFIG
        resume = resolve_resume(cfg)
        if resume is not None:
            check_layout(resume, cfg, world)
            check_same_model(resume, cfg)
        tokenizer, vocab = preflight(cfg)
        from .init_from import prepare_init_from

        # checkpoint.init_from: checked (and, for a run, its weights loaded) before the process group starts
        init = prepare_init_from(cfg, vocab, resuming=resume is not None, load=not args.check, say=_say)
    except ConfigError as e:
        _say(f"config error: {e}", err=True)
        abort_start()  # the lock's empty new folder, the group run_lock.agree started
        return EXIT_CONFIG
    if args.check:
        if cfg.model.vocab_size is None:  # the count needed the tokenizer's vocabulary
            _say_params(cfg, vocab)
        _say(f"config OK: {args.config} (model vocab {vocab}, {world} process(es))")
        return 0

    from .checkpoint import CheckpointSaveError
    from .elastic import LayoutChangeError
    from .train import NonFiniteLossError, train

    try:
        result = train(cfg, tokenizer, vocab, resume, init=init)
    except NonFiniteLossError as e:
        _say(f"error: {e}", err=True)
        return EXIT_NONFINITE
    except CheckpointSaveError as e:
        _say(f"error: {e}", err=True)
        return EXIT_SAVE
    except LayoutChangeError as e:  # the checkpoint could not be converted for this layout (agreed by every rank)
        _say(f"error: {e}", err=True)
        return EXIT_CONFIG
    finally:
        from vffn_megatron.runtime import destroy

        destroy()
    how = "stopped by signal" if result.stopped_by_signal else "finished"
    _say(f"{how} at step {result.final_step}; checkpoints: {os.path.abspath(cfg.checkpoint_dir)}"
         + (f"; TensorBoard: tensorboard --logdir {os.path.abspath(cfg.tensorboard_dir)}"
            if cfg.logging.tensorboard else ""))
    return 0


if __name__ == "__main__":
    sys.exit(main())
