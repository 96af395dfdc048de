"""The FLOP model of the FFN blocks and of the whole GPT model: the one place these formulas live.

Everything is counted as matmul multiply-adds per token (= weights applied per token); a forward costs 2 FLOPs
per multiply-add and a training step (forward + backward, backward = 2x forward) 6, so a block's ratio to the
dense FFN is the same in training and at inference when it does the same work in both. Per token, with
hidden size d, FFN hidden size F (SwiGLU: gate, up, down):

* dense FFN: 3·d·F;
* k-loop: k·3·d·F (the shared FFN applied k times);
* MoE: 3·d·F (the shared expert, when there is one) + top_k·3·d·Fe (the chosen routed experts of hidden Fe) +
  d·N (the router): relative to the dense FFN 1 + top_k·Fe/F + N/(3F), i.e. 1.25 (+ the router) for the paper's
  MoE (N = 8 experts of Fe = F/8, top-2); the Switch-style variant (no shared expert, Fe = F) is top_k + N/(3F);
* VersatileFFN, training forward: D·3·d·F + d·F·k/N + d·(N+D): every token runs all D loops (the
  straight-through depth mix needs every x_i as a value), the width path an fc2 over its k of N sub-experts
  (its fc1 work is the first loop's hidden activations) and the two routers. The backward (2x) runs only
  through the loops a token's sampled depth L uses (deeper loops have exactly zero gradient), so a training
  step costs, relative to the dense FFN's, (D + 2·E[L])/3 + (k/N)/3 + (N+D)/(3F) (``train_flop_ratio`` with
  the measured mean sampled depth E[L]); the full-backward algorithm would cost D + (k/N)/3 + (N+D)/(3F);
* VersatileFFN, inference: mean_loops·3·d·F + wide_share·d·F·k/N + d·(N+D): each token runs only its chosen
  loops and the width fc2 only for the share of tokens with m > 0 (fewer than D loops).

No megatron import: the benchmark, the comparison tool and the README's figures read it cheaply.
"""
from __future__ import annotations

from typing import Optional, Union

from .config import KLoopConfig, MoEConfig, VersatileFFNConfig

FFNBlock = Union[None, KLoopConfig, MoEConfig, VersatileFFNConfig]  # None: the dense FFN

# How compare.md states the model-level formula (num_flops_per_token), in the report's words (h = hidden).
TRAIN_FLOPS_FORMULA = (
    "Training FLOPs per token = 6 x (weights applied per token) + 6 x layers x seq x hidden (attention "
    "scores and values), weights applied per token = layers x (4 h² attention + FFN part) + h x vocab "
    "(output layer); FFN part: dense 3·h·F, k-loop k·3·h·F, MoE 3·h·F (shared expert) + top_k·3·h·Fe (routed "
    "experts of hidden Fe = F/N) + h·N (router), VersatileFFN "
    "D·3·h·F + h·F·k/N (width fc2) + h·(N+D) (routers) — training runs all D loops for every token "
    "(straight-through depth mix); at inference a token runs only its chosen loops.")


def dense_ffn_macs(d: int, F: int) -> int:
    """Multiply-adds per token of the dense SwiGLU FFN: gate, up and down projections."""
    return 3 * d * F


def ffn_macs_per_token(d: int, F: int, block: FFNBlock = None, *, mean_loops: Optional[float] = None,
                       wide_share: Optional[float] = None) -> float:
    """Multiply-adds per token of one FFN block's forward (see the module docstring for each block).

    block: None (dense), a ``KLoopConfig``, a ``MoEConfig`` or a ``VersatileFFNConfig``. For VersatileFFN the
    default is training; pass the measured ``mean_loops`` and ``wide_share`` for inference.
    """
    inference = mean_loops is not None or wide_share is not None
    if inference and not isinstance(block, VersatileFFNConfig):
        raise ValueError("mean_loops / wide_share describe VersatileFFN inference only")
    dense = dense_ffn_macs(d, F)
    if block is None:
        return dense
    if isinstance(block, KLoopConfig):
        return block.loops * dense
    if isinstance(block, MoEConfig):
        shared = dense if block.shared_expert else 0
        return shared + block.top_k * dense_ffn_macs(d, block.expert_hidden(F)) + d * block.num_experts
    if isinstance(block, VersatileFFNConfig):
        N, k, D = block.num_experts, block.top_k, block.max_depth
        if inference and (mean_loops is None or wide_share is None):
            raise ValueError("VersatileFFN inference needs both mean_loops and wide_share")
        loops, wide = (mean_loops, wide_share) if inference else (D, 1)
        return loops * dense + wide * d * F * k / N + d * (N + D)
    raise TypeError(f"no FLOP model for an FFN block of type {type(block).__name__}")


def ffn_flop_ratio(d: int, F: int, block: FFNBlock = None, *, mean_loops: Optional[float] = None,
                   wide_share: Optional[float] = None) -> float:
    """FLOPs of one FFN block relative to the dense FFN (same in training and inference: backward = 2x)."""
    return ffn_macs_per_token(d, F, block, mean_loops=mean_loops, wide_share=wide_share) / dense_ffn_macs(d, F)


def train_flop_ratio(d: int, F: int, block: FFNBlock = None, *, mean_sampled_loops: Optional[float] = None) -> float:
    """Training FLOPs (forward + backward) of one FFN block relative to the dense FFN's.

    For VersatileFFN with ``mean_sampled_loops`` (E[L], the mean sampled depth) the compacted backward:
    (D + 2·E[L])/3 + (k/N)/3 + (N+D)/(3F); without it (or any other block) the forward ratio, which is also
    the full-backward algorithm's (every loop with its backward)."""
    if mean_sampled_loops is None:
        return ffn_flop_ratio(d, F, block)
    if not isinstance(block, VersatileFFNConfig):
        raise ValueError("mean_sampled_loops describes VersatileFFN training only")
    N, k, D = block.num_experts, block.top_k, block.max_depth
    if not 1 <= mean_sampled_loops <= D:
        raise ValueError(f"mean_sampled_loops must be in [1, {D}], got {mean_sampled_loops}")
    return (D + 2 * mean_sampled_loops) / 3 + (k / N) / 3 + (N + D) / (3 * F)


def num_flops_per_token(model, vocab_size: int, block: FFNBlock = None, *,
                        mean_sampled_loops: Optional[float] = None) -> float:
    """Training FLOPs per token of the whole GPT model (``TRAIN_FLOPS_FORMULA``), as OLMo-core's config has it.

    model: anything with hidden_size, ffn_hidden_size, num_layers and seq_length (``GPTConfig``). Weights
    applied per token: per layer the q, k, v, out projections (4·d², multi-head attention) and the FFN block,
    plus the output layer (d·vocab; the input embedding is a lookup). Attention scores: QK^T and AV,
    2 x s x d multiply-adds per token and layer, x3 for training. VersatileFFN: all D loops' backward unless
    the measured ``mean_sampled_loops`` is given (the compacted backward the trainer runs).
    """
    d, F, L, s = model.hidden_size, model.ffn_hidden_size, model.num_layers, model.seq_length
    ffn = dense_ffn_macs(d, F) * train_flop_ratio(d, F, block, mean_sampled_loops=mean_sampled_loops)
    return 6 * (L * (4 * d * d + ffn) + d * vocab_size) + 6 * L * s * d
