"""torchrun, 2 ranks: the megatron side of the export acceptance tests, independent of vffn_hf's conversion.

For every trainer checkpoint (step directory) given, rebuild the run exactly as a resume does (the trainer's
build_model / build_engine, DeepSpeed's load_checkpoint at the checkpoint's own TP / ZeRO layout), then compute
eval-mode logits of the token batch TOKENS (a .pt file) and a 32-token greedy decoding (full re-forward per
step). Rank 0 saves {step_dir: {"logits", "greedy"}} to OUT. The process group is created once; only megatron's
model-parallel state is rebuilt between checkpoints.

usage: hf_ckpt_reference.py OUT TOKENS STEP_DIR [STEP_DIR ...]
"""
import os
import sys

import torch


def reference(step_dir, tokens):
    from megatron.core import parallel_state
    from megatron.core.tensor_parallel import gather_from_tensor_model_parallel_region

    from pretrain.checkpoint import Checkpointer, ResumePoint
    from pretrain.checks import load_tokenizer, resolve_vocab_size
    from pretrain.config import load_config
    from pretrain.engine import build_engine
    from pretrain.train import build_model, setup_parallel
    from vffn_hf.parity import megatron_greedy

    cfg = load_config(os.path.join(step_dir, "config.yaml"))
    if parallel_state.model_parallel_is_initialized():
        parallel_state.destroy_model_parallel()  # keep the process group: re-creating it under torchrun hangs
    world = setup_parallel(cfg)
    vocab = resolve_vocab_size(cfg, load_tokenizer(cfg.data.tokenizer).vocab_size)
    engine = build_engine(cfg, build_model(cfg, vocab), world)
    Checkpointer(cfg, world).load(engine, ResumePoint(os.path.dirname(step_dir), os.path.basename(step_dir)))
    engine.eval()

    @torch.no_grad()
    def logits(_, seq):
        pos = torch.arange(seq.shape[1])[None].expand(seq.shape[0], -1)
        return gather_from_tensor_model_parallel_region(engine(seq, pos, None)).float()

    out = {"logits": logits(None, tokens), "greedy": megatron_greedy(None, tokens[:, :8], 32, logits_fn=logits)}
    engine.destroy()
    return out


if __name__ == "__main__":
    from vffn_megatron.device import configure_environment

    configure_environment()
    out_path, tokens = sys.argv[1], torch.load(sys.argv[2])
    results = {d: reference(d, tokens) for d in sys.argv[3:]}
    if int(os.environ["RANK"]) == 0:
        torch.save(results, out_path)
    import torch.distributed as dist

    dist.barrier()  # leave together: a rank exiting while its peer still talks to it aborts the peer
    from vffn_megatron.runtime import destroy

    destroy()
