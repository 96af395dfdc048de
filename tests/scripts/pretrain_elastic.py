"""Run under torchrun with 2 ranks: resuming at another layout (pretrain/elastic.py), in one process group.

World of 2: A = DP=2 ZeRO-1 and B = TP=2 (with a parallel.deepspeed_overrides bucket size), 6 steps each, a
checkpoint every 3 steps, a NaN loss injected at step 2 (on_nonfinite=skip: skipped_steps = 1 in the checkpoints);
then a resume of a damaged copy of A's step 3 at TP=2 whose conversion fails on rank 0 (every rank must raise).
World of 1 (rank 0 alone): C = DP=1 (the same run uninterrupted), D = A's step 3 resumed at DP=1 (over what an
interrupted conversion leaves behind), E = B's step 3 at TP=1, G = C's step 3 at ZeRO-2.

Rank 0 writes everything to OUT (JSON). argv: WORKSPACE_JSON OUT_JSON RUN_ROOT
"""
import json
import os
import shutil
import sys

import torch.distributed as dist

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # tests/: the helpers package
from helpers.workspace import run_overrides  # noqa: E402

import pretrain.train as trainer  # noqa: E402
from pretrain.checkpoint import check_layout, resolve_resume  # noqa: E402
from pretrain.checks import preflight  # noqa: E402
from pretrain.config import load_config  # noqa: E402
from pretrain.elastic import LayoutChangeError  # noqa: E402
from vffn_megatron.device import free_port  # noqa: E402

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
BUCKET = 123457  # an accepted override: must reach the engine


def config(ws, root, name, **kw):
    kw = {"parallel__timeout_minutes": 2, "schedule__train_steps": 6, "checkpoint__interval": 3,
          "checkpoint__keep_last": 0, "on_nonfinite": "skip", "logging__progress": "none", **kw}
    return load_config(os.path.join(REPO, "configs", "tiny.yaml"), run_overrides(ws, os.path.join(root, name), **kw))


def nan_at_step_2(cfg, world):
    """Every rank's loss is NaN in step 2 (all micro-batches): the update is skipped, skipped_steps = 1."""
    gas, calls = cfg.grad_accum_steps(world), {"n": 0}

    def hook(model):
        def fwd(module, args, output):
            if not module.training:
                return output
            step = calls["n"] // gas + 1
            calls["n"] += 1
            return output * float("nan") if step == 2 else output
        model.register_forward_hook(fwd)
    return hook


def metrics(cfg):
    with open(os.path.join(cfg.output_dir, "metrics.jsonl")) as f:
        recs = [json.loads(line) for line in f]
    return {r["step"]: {k: r.get(k) for k in ("loss", "lr", "consumed_samples", "skipped_steps")}
            for r in recs if "loss" in r}


def run(cfg, tok, vocab, world, resume_from=None, engines=None):
    """A fresh run (NaN injected at step 2), or a resume of ``resume_from`` the way python -m pretrain does it."""
    point, change = None, None
    if resume_from is not None:
        cfg.checkpoint.resume = resume_from
        point = resolve_resume(cfg)
        change = check_layout(point, cfg, world)  # the pre-flight check: the change it announces
    r = trainer.train(cfg, tok, vocab, point, model_hook=None if point else nan_at_step_2(cfg, world))
    out = {"losses": r.losses, "start": r.start_step, "skipped": r.skipped_steps, "metrics": metrics(cfg),
           "change": change}
    if engines:
        out["reduce_bucket_size"] = engines[-1].zero_reduce_bucket_size()
    return out


def main():
    ws, out_path, root = json.load(open(sys.argv[1])), sys.argv[2], sys.argv[3]
    rank = int(os.environ["RANK"])
    engines = []
    build = trainer.build_engine
    trainer.build_engine = lambda *a, **k: engines.append(build(*a, **k)) or engines[-1]
    res = {}
    a = config(ws, root, "A")
    tok, vocab = preflight(a)
    res["A"] = run(a, tok, vocab, 2)
    from megatron.core import parallel_state
    from vffn_megatron.runtime import destroy

    parallel_state.destroy_model_parallel()  # TP=2 next: megatron's groups are rebuilt
    b = config(ws, root, "B", parallel__tensor_model_parallel_size=2,
               parallel__deepspeed_overrides=f"{{zero_optimization: {{reduce_bucket_size: {BUCKET}}}}}")
    res["B"] = run(b, tok, vocab, 2, engines=engines)
    # a conversion that fails on rank 0 (an unverified copy missing rank 1's optimizer file): every rank raises
    a3 = os.path.join(root, "A", "checkpoints", "step_00000003")
    bad = os.path.join(root, "damaged", "step_00000003")
    if rank == 0:
        shutil.copytree(a3, bad, ignore=shutil.ignore_patterns("universal", "manifest.json", "zero_pp_rank_1_*"))
    dist.barrier()
    try:
        run(config(ws, root, "F", parallel__tensor_model_parallel_size=2), tok, vocab, 2, resume_from=bad)
        err = None
    except LayoutChangeError as e:
        err = str(e)
    errors = [None, None]
    dist.all_gather_object(errors, err)
    res["failed_conversion"] = errors
    parallel_state.destroy_model_parallel()
    destroy()
    if rank == 0:  # a fresh world of 1
        os.environ.update(RANK="0", WORLD_SIZE="1", LOCAL_RANK="0", LOCAL_WORLD_SIZE="1", MASTER_PORT=str(free_port()),
                          TORCHELASTIC_USE_AGENT_STORE="False")  # own store, not torchrun's
        c = config(ws, root, "C")
        res["C"] = run(c, tok, vocab, 1)
        # what an interrupted conversion leaves (a temporary folder, an unmarked universal/): redone, never used
        os.makedirs(os.path.join(a3, ".universal_tmp_killed", "universal"))
        os.makedirs(os.path.join(a3, "universal", "zero"))
        res["D"] = run(config(ws, root, "D"), tok, vocab, 1, resume_from=a3)
        res["D"]["step_dir"] = sorted(os.listdir(a3))
        res["E"] = run(config(ws, root, "E"), tok, vocab, 1,
                       resume_from=os.path.join(root, "B", "checkpoints", "step_00000003"))
        res["G"] = run(config(ws, root, "G", parallel__zero_stage=2), tok, vocab, 1,
                       resume_from=os.path.join(root, "C", "checkpoints", "step_00000003"))
        destroy()
        json.dump(res, open(out_path, "w"))


if __name__ == "__main__":
    main()
