"""Logit and greedy-decoding comparisons between a megatron GPTModel and an HF causal LM (tests, export --verify)."""
from __future__ import annotations

import torch


@torch.no_grad()
def megatron_logits(model, tokens: torch.Tensor) -> torch.Tensor:
    """Eval-mode logits [b, s, vocab] of a TP=1 (or TP-gathered) megatron GPTModel; positions 0..s-1."""
    was_training = model.training
    model.eval()
    try:
        pos = torch.arange(tokens.shape[1], device=tokens.device)[None].expand(tokens.shape[0], -1)
        return model(tokens, pos, None).float()
    finally:
        model.train(was_training)


@torch.no_grad()
def megatron_greedy(model, prompt: torch.Tensor, new_tokens: int, logits_fn=megatron_logits) -> torch.Tensor:
    """Greedy continuation by full re-forward each step (no KV cache: the simplest correct reference)."""
    seq = prompt
    for _ in range(new_tokens):
        nxt = logits_fn(model, seq)[:, -1].argmax(-1, keepdim=True)
        seq = torch.cat([seq, nxt], dim=1)
    return seq


@torch.no_grad()
def hf_greedy(model, prompt: torch.Tensor, new_tokens: int) -> torch.Tensor:
    """``generate()`` greedy with the KV cache, exactly ``new_tokens`` tokens. EOS is neither a stop nor
    suppressed (``min_new_tokens`` would mask its logit), so the result compares with a plain argmax loop."""
    import copy

    saved = model.generation_config
    cfg = copy.deepcopy(saved)
    cfg.eos_token_id = None  # generate() fills unset values from model.generation_config: swap it for the call
    cfg.pad_token_id = cfg.pad_token_id if cfg.pad_token_id is not None else 0
    model.generation_config = cfg
    try:
        out = model.generate(prompt, attention_mask=torch.ones_like(prompt), max_new_tokens=new_tokens,
                             do_sample=False, use_cache=True)
    finally:
        model.generation_config = saved
    if out.shape[1] != prompt.shape[1] + new_tokens:
        raise RuntimeError(f"generate() returned {out.shape[1] - prompt.shape[1]} new tokens, not {new_tokens}")
    return out


def build_megatron(model, vffn=None):
    """A TP=1 megatron GPTModel (``GPTConfig``, ``VersatileFFNConfig`` or None) in this process (single-process
    group), eval mode."""
    from vffn_megatron import build_gpt_model, init_megatron

    init_megatron(1)
    return build_gpt_model(model, vffn, tensor_parallel_size=1).eval()


@torch.no_grad()
def verify_export(megatron_sd: dict, model, vffn, hf_dir, tokens: torch.Tensor | None = None,
                  new_tokens: int = 16) -> dict:
    """Megatron (TP=1, eval, fp32) vs the exported folder loaded with transformers (fp32): max abs logit diff and
    whether greedy decoding agrees. Needs megatron-core (imports it) but no launcher."""
    from transformers import AutoModelForCausalLM

    from .convert import load_into_megatron

    mg = build_megatron(model, vffn)
    load_into_megatron(mg, megatron_sd)
    hf = AutoModelForCausalLM.from_pretrained(hf_dir, trust_remote_code=True, dtype=torch.float32).eval()
    if tokens is None:
        tokens = torch.randint(0, model.vocab_size, (2, min(model.seq_length, 64)),
                               generator=torch.Generator().manual_seed(0))
    diff = (hf(tokens).logits.float() - megatron_logits(mg, tokens)).abs().max().item()
    prompt = tokens[:, :8]
    same = torch.equal(megatron_greedy(mg, prompt, new_tokens), hf_greedy(hf, prompt, new_tokens))
    return {"max_abs_logit_diff": diff, "greedy_equal": same, "greedy_tokens": new_tokens}
