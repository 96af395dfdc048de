"""Run under torchrun with 2 ranks: bf16 (the GPU presets' precision, emulated on CPU) at ZeRO 1-3 with DP=2 and
at TP=2, each next to its fp32 counterpart. Rank 0 writes the losses to OUT (JSON). argv: WORKSPACE_JSON OUT RUN_ROOT"""
import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from pretrain_parity import config  # noqa: E402

from pretrain.checks import preflight  # noqa: E402
from pretrain.train import train  # noqa: E402


def main():
    ws, out_path, root = json.load(open(sys.argv[1])), sys.argv[2], sys.argv[3]
    res = {}
    tokenizer = vocab = None
    runs = [("fp32_z1", dict(parallel__zero_stage=1))]
    runs += [(f"bf16_z{z}", dict(parallel__zero_stage=z, precision="bf16")) for z in (1, 2, 3)]
    for name, kw in runs:
        cfg = config(ws, root, name, **kw)
        if tokenizer is None:
            tokenizer, vocab = preflight(cfg)
        res[name] = train(cfg, tokenizer, vocab).losses
    from megatron.core import parallel_state
    parallel_state.destroy_model_parallel()
    for name, prec in (("fp32_tp2", "fp32"), ("bf16_tp2", "bf16")):
        cfg = config(ws, root, name, parallel__tensor_model_parallel_size=2, precision=prec)
        res[name] = train(cfg, tokenizer, vocab).losses
    if int(os.environ["RANK"]) == 0:
        json.dump(res, open(out_path, "w"))


if __name__ == "__main__":
    main()
