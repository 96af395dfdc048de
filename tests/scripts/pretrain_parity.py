"""Run under torchrun with 2 ranks. In one process group, re-initialising the engine each time:

* ZeRO 0, 1, 2, 3 with 2 data-parallel ranks (fp32, gradient accumulation 2, clipping, aux loss);
* TP=2 (DP=1), then, on rank 0 alone in a fresh world of 1, TP=1 with the same global batch;
* ZeRO-3 with 2 data-parallel ranks and validation for every architecture; for VersatileFFN the eval depth
  router is skewed per rank (rank 0's tokens all stop at loop 1, rank 1's all loop max_depth times), the case
  where a data-dependent early exit makes the ranks disagree on ZeRO-3's parameter gathers;
* a NaN injected into rank 1's loss at step 3: on_nonfinite=stop raises naming the step; skip drops
  the update (parameters unchanged across the step) at ZeRO 0-3 and training continues.

Rank 0 writes everything to OUT (JSON). argv: WORKSPACE_JSON OUT_JSON RUN_ROOT
"""
import json
import os
import sys

import torch
import torch.distributed as dist

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # tests/: the helpers package
from helpers.workspace import run_overrides  # noqa: E402

from pretrain.checks import preflight  # noqa: E402
from pretrain.config import load_config  # noqa: E402
from pretrain.train import NonFiniteLossError, train  # noqa: E402
from vffn_megatron.device import free_port  # noqa: E402

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


AUX = dict(vffn__max_depth=1, vffn__aux_loss_coeff=1.0, schedule__micro_batch_size=4, schedule__train_steps=5)


def config(ws, root, name, **kw):
    kw.setdefault("parallel__timeout_minutes", 2)  # a collective mismatch fails the test instead of hanging it
    return load_config(os.path.join(REPO, "configs", "tiny.yaml"),
                       run_overrides(ws, os.path.join(root, name), **kw) + ["logging.progress=none"])


def nan_hook(bad_step, gas, snapshots):
    """Forward hook: rank 1's per-token loss becomes NaN on every micro-batch of optimizer step bad_step
    (1-based); parameters are snapshotted when step bad_step starts and step bad_step+1 starts."""
    calls = {"n": 0}

    def hook(model):
        def fwd(module, args, output):
            if not module.training:
                return output
            step = calls["n"] // gas + 1
            first = calls["n"] % gas == 0
            calls["n"] += 1
            if first and step in (bad_step, bad_step + 1):
                snapshots[step] = [p.detach().clone() for p in module.parameters() if p.numel() > 0]
            if step == bad_step and dist.get_rank() == 1:
                return output * float("nan")
            return output
        model.register_forward_hook(fwd)
    return hook


def eval_depth_skew_hook(model):
    """Eval forwards only: every token of rank 0 chooses 1 loop, every token of rank 1 max_depth loops."""
    from vffn_megatron import vffn_modules

    for block in vffn_modules(model):
        target = 0 if dist.get_rank() == 0 else block.max_depth - 1

        def skew(mod, args, out, target=target):
            if mod.training:
                return out
            logits = torch.full_like(out, -30.0)
            logits[..., target] = 30.0
            return logits + 0 * out
        block.depth_router.register_forward_hook(skew)


def main():
    ws, out_path, root = json.load(open(sys.argv[1])), sys.argv[2], sys.argv[3]
    rank = int(os.environ["RANK"])
    res = {}
    tokenizer = vocab = None
    # --- ZeRO stages, DP=2 (global batch 8 = micro 2 x DP 2 x accumulation 2)
    for stage in (0, 1, 2, 3):
        cfg = config(ws, root, f"zero{stage}", parallel__zero_stage=stage)
        if tokenizer is None:
            tokenizer, vocab = preflight(cfg)
        r = train(cfg, tokenizer, vocab)
        res[f"zero{stage}"] = {"losses": r.losses, "grad_norms": r.grad_norms}
    # --- ZeRO-3, DP=2, validation every 2 steps, each architecture
    for arch in ("vffn", "dense", "kloop", "moe"):
        cfg = config(ws, root, f"z3eval_{arch}", parallel__zero_stage=3, model__arch=arch, schedule__train_steps=4,
                     schedule__eval_interval=2, schedule__eval_iters=1)
        r = train(cfg, tokenizer, vocab, model_hook=eval_depth_skew_hook if arch == "vffn" else None)
        res[f"z3eval_{arch}"] = {"losses": r.losses, "valid": r.valid_losses}
    # --- non-finite loss: stop
    cfg = config(ws, root, "nan_stop", schedule__train_steps=4)
    try:
        train(cfg, tokenizer, vocab, model_hook=nan_hook(3, 2, {}))
        res["nan_stop"] = "no error"
    except NonFiniteLossError as e:
        res["nan_stop"] = str(e)
    # --- non-finite loss: skip, every ZeRO stage
    for stage in (0, 1, 2, 3):
        snaps = {}
        cfg = config(ws, root, f"nan_skip{stage}", schedule__train_steps=5, on_nonfinite="skip",
                     parallel__zero_stage=stage)
        r = train(cfg, tokenizer, vocab, model_hook=nan_hook(3, 2, snaps))
        unchanged = None
        if stage < 3:  # ZeRO-3 holds only partitions of the parameters outside forward
            unchanged = all(torch.equal(a, b) for a, b in zip(snaps[3], snaps[4]))
        res[f"nan_skip{stage}"] = {"losses": r.losses, "skipped": r.skipped_steps, "unchanged": unchanged}
    # --- router aux-loss gradient scale: DP=2 x accumulation 1 vs (below) DP=1 x accumulation 2 see the same
    # micro-batches; max_depth=1 makes routing noise-free, a large coefficient makes a wrong scale visible
    res["aux_dp2"] = train(config(ws, root, "aux_dp2", **AUX), tokenizer, vocab).losses
    # --- TP=2 (world 2, DP=1)
    from megatron.core import parallel_state
    parallel_state.destroy_model_parallel()
    cfg = config(ws, root, "tp2", parallel__tensor_model_parallel_size=2, parallel__zero_stage=1)
    r = train(cfg, tokenizer, vocab)
    res["tp2"] = {"losses": r.losses, "grad_norms": r.grad_norms}
    # --- TP=1 on rank 0 alone (a fresh world of 1: DP=1, same accumulation as TP=2)
    from vffn_megatron.runtime import destroy
    destroy()
    if rank == 0:
        os.environ.update(RANK="0", WORLD_SIZE="1", LOCAL_RANK="0", LOCAL_WORLD_SIZE="1", MASTER_PORT=str(free_port()),
                          TORCHELASTIC_USE_AGENT_STORE="False")  # own store, not torchrun's
        cfg = config(ws, root, "tp1", parallel__zero_stage=1)
        r = train(cfg, tokenizer, vocab)
        res["tp1"] = {"losses": r.losses, "grad_norms": r.grad_norms}
        res["aux_dp1"] = train(config(ws, root, "aux_dp1", **AUX), tokenizer, vocab).losses
        destroy()
        json.dump(res, open(out_path, "w"))  # NaN losses are written as NaN


if __name__ == "__main__":
    main()
