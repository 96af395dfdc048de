"""checkpoint.init_from end to end, through ``python -m pretrain``'s main() in one process (one import of megatron
for all runs), each run's console output in RUN_ROOT/<name>.log and its exit code in RUN_ROOT/codes.json:

* dense: 2 steps from scratch (ZeRO-1, so the weights come back through DeepSpeed's zero_to_fp32);
* kloop1: k-loop with one loop, init_from the dense run's directory (its first loss: the dense model's);
* dense_cont: dense, init_from the dense checkpoints/ directory (continued pretraining);
* moe: the paper MoE, init_from the dense step directory (experts: slices), 2 steps;
* dense_cont_resume: dense_cont again with 3 steps: resume wins over init_from, with a note;
* bad_source: ``--check`` of an MoE run initialised from the k-loop run: exit 2, the source named.

argv: WORKSPACE_JSON RUN_ROOT
"""
import contextlib
import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # tests/: the helpers package
from helpers.workspace import run_overrides  # noqa: E402

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
LAUNCHER_VARS = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")


def run(ws, root, name, steps, *extra):
    from pretrain.__main__ import main

    out = os.path.join(root, name.replace("_resume", ""))
    argv = ["--config", os.path.join(REPO, "configs", "tiny.yaml"),
            *run_overrides(ws, out, schedule__train_steps=steps, schedule__global_batch_size=4,
                           checkpoint__save_at_end="true", logging__progress="none"), *extra]
    for k in LAUNCHER_VARS:  # a fresh single-process group for every run
        os.environ.pop(k, None)
    with open(os.path.join(root, f"{name}.log"), "w") as log, contextlib.redirect_stdout(log), \
            contextlib.redirect_stderr(log):
        return main(argv)


def main():
    ws, root = json.load(open(sys.argv[1])), sys.argv[2]
    os.environ["VFFN_NO_PARENT_WATCH"] = "1"
    dense = os.path.join(root, "dense")
    codes = {"dense": run(ws, root, "dense", 2, "model.arch=dense")}
    codes["kloop1"] = run(ws, root, "kloop1", 2, "model.arch=kloop", "kloop.loops=1", f"checkpoint.init_from={dense}")
    codes["dense_cont"] = run(ws, root, "dense_cont", 2, "model.arch=dense",
                              f"checkpoint.init_from={dense}/checkpoints")
    codes["moe"] = run(ws, root, "moe", 2, "model.arch=moe",
                       f"checkpoint.init_from={dense}/checkpoints/step_00000002")
    codes["dense_cont_resume"] = run(ws, root, "dense_cont_resume", 3, "model.arch=dense",
                                     f"checkpoint.init_from={dense}/checkpoints")
    codes["bad_source"] = run(ws, root, "bad_source", 1, "model.arch=moe", f"checkpoint.init_from={root}/kloop1",
                              "--check")
    json.dump(codes, open(os.path.join(root, "codes.json"), "w"))


if __name__ == "__main__":
    main()
