"""One process (no launcher): on_nonfinite=skip with the loss NaN on every step from step 2 on (a diverging
run); prints the NonFiniteLossError's message or "no error", and the checkpoints written.

argv: WORKSPACE_JSON OUTPUT_DIR MAX_CONSECUTIVE_SKIPS
"""
import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # tests/: the helpers package
from helpers.workspace import run_overrides, tiny_config  # noqa: E402

from pretrain.checks import preflight  # noqa: E402
from pretrain.train import NonFiniteLossError, train  # noqa: E402


def diverge_from(step0):
    calls = {"n": 0}

    def hook(model):
        def fwd(module, args, output):
            if not module.training:
                return output
            calls["n"] += 1  # micro-batches; global batch 8 = micro 2 x accumulation 4 in one process
            return output * float("nan") if (calls["n"] - 1) // 4 + 1 >= step0 else output
        model.register_forward_hook(fwd)
    return hook


def main():
    ws, out, limit = json.load(open(sys.argv[1])), sys.argv[2], sys.argv[3]
    cfg = tiny_config(*run_overrides(ws, out, schedule__train_steps=12, on_nonfinite="skip",
                                     max_consecutive_skips=limit, checkpoint__save_at_end=True,
                                     logging__progress="none"))
    tokenizer, vocab = preflight(cfg)
    try:
        r = train(cfg, tokenizer, vocab, model_hook=diverge_from(2))
        print(f"RESULT no error: final step {r.final_step}, skipped {r.skipped_steps}", flush=True)
    except NonFiniteLossError as e:
        print(f"RESULT NonFiniteLossError: {e}", flush=True)


if __name__ == "__main__":
    main()
