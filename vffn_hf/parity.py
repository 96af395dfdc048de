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
    """``generate()`` greedy with the KV cache, exactly ``new_tokens`` tokens (EOS does not stop it)."""
    return model.generate(prompt, attention_mask=torch.ones_like(prompt), max_new_tokens=new_tokens,
                          min_new_tokens=new_tokens, do_sample=False, use_cache=True, pad_token_id=0)
