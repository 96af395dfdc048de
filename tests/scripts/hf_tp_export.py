"""torchrun, 2 ranks, TP=2 (the process group is created once; only megatron's model-parallel state is rebuilt).

1. Export side: build the tiny VersatileFFN and dense models at TP=2 with the seed the TP=1 tests use; save
   every rank's state dict, the gathered eval logits on the shared batch and (VersatileFFN) a greedy decode.
2. Import side: split the full upcycled state dict ARGV[2] for TP=2, load it into a fresh VersatileFFN model
   (routers keep their fresh initialisation, sharpened), save every rank's state dict and the gathered logits.
Rank 0 writes the logits to OUT_DIR/results.pt; every rank writes OUT_DIR/<what>_rank<r>.pt.
"""
import os
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # tests/: the helpers package
from helpers.hf import batch, build, depth_counts, sharpen  # noqa: E402


def gathered_logits(model, tokens):
    from megatron.core.tensor_parallel import gather_from_tensor_model_parallel_region

    from vffn_hf.parity import megatron_logits

    return gather_from_tensor_model_parallel_region(megatron_logits(model, tokens))  # vocab-parallel -> full


def main(out_dir, upcycled_path):
    from megatron.core import parallel_state

    from vffn_hf.convert import load_into_megatron, router_keys, split_tp
    from vffn_hf.parity import megatron_greedy

    rank = int(os.environ["RANK"])
    tokens, res = batch(), {}
    for kind in ("vffn", "dense"):
        model = build(kind, tp=2)
        torch.save(model.state_dict(), os.path.join(out_dir, f"{kind}_rank{rank}.pt"))
        res[f"{kind}_logits"] = gathered_logits(model, tokens)
        if kind == "vffn":
            res["vffn_depth_counts"] = depth_counts(model)
            res["vffn_greedy"] = megatron_greedy(model, tokens[:, :8], 32, logits_fn=gathered_logits)

    model = build("vffn", tp=2, sharpened=False)
    tp_rank = parallel_state.get_tensor_model_parallel_rank()
    shard = split_tp(torch.load(upcycled_path), 2)[tp_rank]
    load_into_megatron(model, shard, keep=tuple(router_keys(len(model.decoder.layers))))
    sharpen(model, routers_only=True)
    torch.save(model.state_dict(), os.path.join(out_dir, f"upcycled_rank{rank}.pt"))
    res["upcycled_logits"] = gathered_logits(model, tokens)
    if rank == 0:
        torch.save(res, os.path.join(out_dir, "results.pt"))
    parallel_state.destroy_model_parallel()


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
