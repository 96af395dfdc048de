"""VersatileFFN as a megatron-core MLP (drop-in for the ``TransformerLayer`` MLP slot).

One shared SwiGLU FFN (``linear_fc1`` = [W_gate; W_up], ``linear_fc2`` = W_down) is reused two ways:

* width: N virtual sub-experts, sub-expert e = hidden units [e*F/N, (e+1)*F/N); top-k routing on the
  un-normalised residual stream, softmax over the k chosen logits;
* depth: x_i = x_{i-1} + FFN(norm(x_{i-1})) for i = 1..D, the number of loops chosen per token by a
  Gumbel-softmax (training, straight-through) or an argmax (inference) over depth logits;

fused per token with m = (D - loops) / D: out = (1 - m) * x_deep + m * x_wide.

The module owns its RMSNorm (re-applied at every use), so the layer's ``pre_mlp_layernorm`` is an identity
and ``forward`` receives the raw residual stream x and returns the residual *delta* ``out - x`` (accumulated as
deltas, never as a difference of large numbers); ``mlp_bda`` adds x back.

Width path = exact slices of the first loop's hidden activations: FFN_e(norm(x)) = W2[:, e] h1[e], so
``sum_e w_e FFN_e(norm(x))`` needs no fc1 of its own, only an fc2 over each token's k chosen sub-experts
(grouped per sub-expert, weight views, no copies). Its partial sum is reduced across TP in the same
all-reduce as the first loop's fc2, so the width path adds no collective.

Tensor parallelism: fc1 is column-parallel in megatron's gated layout (each rank holds [gate_r; up_r]), fc2
row-parallel, so TP rank r owns whole sub-experts [r*N/t, (r+1)*N/t). Routers are replicated; the width
weights enter the local hidden block through ``scatter_to_tensor_model_parallel_region`` whose backward
all-gathers, so every rank sees the full router gradient. The TP group is the constructor's ``tp_group``
(megatron ``MLP``'s contract; None = megatron's default TP group); the data-parallel rank that numbers the
Gumbel noise comes in through ``set_step``. The block itself never asks ``parallel_state``.
"""
from __future__ import annotations

import functools
from typing import Callable, Optional

import torch
import torch.nn.functional as F
from megatron.core.tensor_parallel import checkpoint as tp_checkpoint
from megatron.core.tensor_parallel.mappings import (
    reduce_from_tensor_model_parallel_region,
    scatter_to_tensor_model_parallel_region,
)
from megatron.core.transformer.moe.moe_utils import MoEAuxLossAutoScaler, save_to_aux_losses_tracker
from megatron.core.transformer.transformer_config import TransformerConfig
from megatron.core.utils import get_pg_rank

from .config import VersatileFFNConfig, VFFNConfigError
from .shared_ffn import SharedFFNSubmodules, SharedSwiGLU

VersatileFFNSubmodules = SharedFFNSubmodules  # the block's submodules: norm, linear_fc1, linear_fc2

AUX_LOSS_NAME = "vffn_load_balancing_loss"


def _mix_seed(*parts: int) -> int:
    """Deterministic 63-bit mix of integers (splitmix64 steps): a stateless noise seed."""
    h = 0x9E3779B97F4A7C15
    for p in parts:
        h = (h ^ (int(p) & 0xFFFFFFFFFFFFFFFF)) * 0xBF58476D1CE4E5B9 & 0xFFFFFFFFFFFFFFFF
        h ^= h >> 31
    return h & 0x7FFFFFFFFFFFFFFF


def check_transformer_config(config: TransformerConfig, vffn: VersatileFFNConfig) -> None:
    """Checks of the megatron TransformerConfig that would otherwise fail deep inside the block."""
    tp = config.tensor_model_parallel_size
    vffn.validate(ffn_hidden_size=config.ffn_hidden_size, tensor_parallel_size=tp)
    if not config.gated_linear_unit or config.activation_func is not F.silu:
        raise VFFNConfigError("VersatileFFN is a SwiGLU FFN: set gated_linear_unit=True and activation_func=F.silu")
    if config.add_bias_linear:
        raise VFFNConfigError("VersatileFFN has bias-free linears (sub-experts are weight slices): "
                              "set add_bias_linear=False")
    if config.ffn_hidden_size % tp:
        raise VFFNConfigError(f"ffn_hidden_size ({config.ffn_hidden_size}) must be divisible by "
                              f"tensor_model_parallel_size ({tp})")
    if config.sequence_parallel:
        raise VFFNConfigError("VersatileFFN does not support sequence_parallel=True yet: routing needs the "
                              "full token set on every TP rank; set sequence_parallel=False")
    if config.recompute_granularity is not None:
        raise VFFNConfigError("megatron recompute (recompute_granularity) would re-sample VersatileFFN's Gumbel "
                              "noise; set recompute_granularity=None and use vffn.recompute=true instead")
    if config.gradient_accumulation_fusion:
        raise VFFNConfigError("VersatileFFN applies fc2's weight directly for its fused width path, which "
                              "gradient_accumulation_fusion (main_grad) does not see; set it to False")
    if config.pipeline_model_parallel_size != 1:
        raise VFFNConfigError("VersatileFFN models support pipeline_model_parallel_size=1 only")


class VersatileFFN(SharedSwiGLU):
    """The VersatileFFN block; constructor contract of megatron's ``MLP`` (``config``, ``submodules``,
    ``tp_group=None``: megatron's default TP group)."""

    def __init__(
        self,
        config: TransformerConfig,
        submodules: VersatileFFNSubmodules,
        vffn: Optional[VersatileFFNConfig] = None,
        tp_group: Optional[torch.distributed.ProcessGroup] = None,
        **kwargs,  # other megatron MLP kwargs (is_expert, ...) do not apply to this block
    ):
        self.vffn = vffn or VersatileFFNConfig()
        check_transformer_config(config, self.vffn)
        super().__init__(config=config, submodules=submodules, tp_group=tp_group)
        tp = config.tensor_model_parallel_size
        d, ffn = config.hidden_size, config.ffn_hidden_size
        self.num_experts, self.top_k, self.max_depth = self.vffn.num_experts, self.vffn.top_k, self.vffn.max_depth
        self.local_experts = self.num_experts // tp
        self.expert_size = ffn // self.num_experts

        # Replicated on every TP rank; they read the un-normalised residual stream.
        self.router = torch.nn.Linear(d, self.num_experts, bias=False, dtype=config.params_dtype)
        self.depth_router = torch.nn.Linear(d, self.max_depth, bias=False, dtype=config.params_dtype)
        if config.perform_initialization:
            with torch.no_grad():
                config.init_method(self.router.weight)
                config.init_method(self.depth_router.weight)

        # Gumbel temperature / noise state (see set_step). noise_fn(shape, device) -> Gumbel noise overrides
        # sampling, for tests that pin the noise.
        self.global_step = 0
        self.noise_seed = 1234
        self.dp_rank, self.dp_size = 0, 1
        self._micro = 0
        self.noise_fn: Optional[Callable[[tuple, torch.device], torch.Tensor]] = None
        self.record_routing = False  # eval: keep each token's chosen loop count in .last_loops
        self.last_loops: Optional[torch.Tensor] = None
        self.reset_stats()

    # ----------------------------------------------------------------- hooks used by the trainer
    def set_step(self, step: int, seed: Optional[int] = None, dp_rank: int = 0, dp_size: int = 1) -> None:
        """Set the global step (temperature, noise) before each training step's micro-batches.

        dp_rank / dp_size: this process's data-parallel rank and the DP world size, which number the step's
        micro-batches across DP ranks in the noise seed (``runtime.set_vffn_step`` passes megatron's; the
        defaults are a single process).
        """
        if not 0 <= int(dp_rank) < int(dp_size):
            raise ValueError(f"set_step: need 0 <= dp_rank < dp_size, got dp_rank={dp_rank}, dp_size={dp_size}")
        self.global_step = int(step)
        if seed is not None:
            self.noise_seed = int(seed)
        self.dp_rank, self.dp_size = int(dp_rank), int(dp_size)
        self._micro = 0

    @property
    def tau(self) -> float:
        return self.vffn.tau(self.global_step)

    def reset_stats(self) -> None:
        """Routing statistics accumulated over forwards (kept on device: no host sync per step)."""
        self.stats: dict = {}

    def pop_stats(self) -> dict:
        """Return {'depth_counts': [D], 'expert_counts': [N]} (float64, CPU) since the last call, and reset."""
        st = {k: v.double().cpu() for k, v in self.stats.items()}
        self.reset_stats()
        return st

    # ----------------------------------------------------------------- pieces
    def _gumbel_noise(self, shape: tuple, device: torch.device) -> torch.Tensor:
        if self.noise_fn is not None:
            return self.noise_fn(shape, device).to(device=device, dtype=torch.float32)
        # Stateless: a pure function of (seed, step, global micro-batch index, layer), where the global index
        # micro * dp_size + dp_rank numbers the step's micro-batches across data-parallel ranks. So it is
        # identical on all TP ranks of a DP rank (they must pick the same depths), different across DP ranks,
        # the same for DP=2 x GAS=1 as for DP=1 x GAS=2, and reproduced exactly on resume without RNG state.
        gen = torch.Generator(device=device)
        gen.manual_seed(_mix_seed(self.noise_seed, self.global_step, self._micro * self.dp_size + self.dp_rank,
                                  self.layer_number or 0))
        return -torch.empty(shape, device=device, dtype=torch.float32).exponential_(generator=gen).log()

    def _loop_from_delta(self, x: torch.Tensor, acc: torch.Tensor) -> torch.Tensor:
        """One loop on x_{i-1} = x + acc_{i-1}. Taking (x, acc) keeps the only per-loop saved tensor the
        running delta acc, which the depth mixing needs anyway: with recompute, memory grows by T*d per loop."""
        return self._loop(x + acc)

    def _width_partial(self, h: torch.Tensor, w_local: torch.Tensor, top_idx: torch.Tensor) -> torch.Tensor:
        """This rank's un-reduced fc2 contribution of the width path, ``sum_e w_e W2[:, e] h[e]``: [T, d].

        Only the (token, sub-expert) pairs in each token's top-k are computed (k/N of a dense fc2): pairs are
        sorted by sub-expert and each local sub-expert's rows go through one matmul with its W2 column block
        (a view, no weight copy). h: [T, F/t] hidden activations; w_local: [T, N/t]; top_idx: [T, k] global ids.
        """
        T, n_loc, size = h.shape[0], self.local_experts, self.expert_size
        lo = get_pg_rank(self.tp_group) * n_loc  # this rank's first sub-expert
        local = top_idx - lo
        tok, slot = torch.nonzero((local >= 0) & (local < n_loc), as_tuple=True)
        expert = local[tok, slot]
        expert, order = torch.sort(expert, stable=True)
        tok = tok.index_select(0, order)
        rows = h.view(T, n_loc, size)[tok, expert] * w_local[tok, expert].unsqueeze(-1)  # [P, size]
        w2 = self.linear_fc2.weight.view(-1, n_loc, size)  # [d, N/t, size]
        counts = torch.bincount(expert, minlength=n_loc).tolist()
        outs, start = [], 0
        for e, c in enumerate(counts):  # empty groups too: the output stays in the autograd graph (router grads)
            outs.append(rows[start:start + c] @ w2[:, e, :].t())
            start += c
        out = torch.cat(outs, 0)
        return torch.zeros(T, w2.shape[0], dtype=out.dtype, device=out.device).index_add(0, tok, out)

    def _first_loop(self, u: torch.Tensor, w_local: torch.Tensor, top_idx: torch.Tensor, n_values: int = 0):
        """Loop 1 plus the width delta from the same hidden activations, reduced across TP in one all-reduce.

        w_local: [W, 1, N/t] width weights of this rank's sub-experts and top_idx [W, k] for the LAST W tokens of
        ``u`` (all tokens in training, the tokens with m > 0 at eval). The first ``n_values`` of those W are
        computed as values only (no autograd): training's tokens at full depth, whose m = 0 gives their width
        path no gradient but whose width value still enters m's. fc2 is applied with linear_fc2's weight
        directly (as its RowParallelLinear forward would) so all partial sums share megatron's single TP
        reduction. Both width calls always run (on empty slices if need be): the same parameter uses on every
        rank, whatever its tokens.
        """
        h = self._hidden(u)
        hw = h[h.shape[0] - w_local.shape[0]:, 0]
        with torch.no_grad():
            values = self._width_partial(hw[:n_values], w_local[:n_values, 0], top_idx[:n_values])
        width = self._width_partial(hw[n_values:], w_local[n_values:, 0], top_idx[n_values:])
        both = reduce_from_tensor_model_parallel_region(
            torch.cat([F.linear(h, self.linear_fc2.weight), values.unsqueeze(1), width.unsqueeze(1)], dim=0),
            group=self.tp_group)
        return both[: h.shape[0]], both[h.shape[0]:]

    def _active_partial(self, x: torch.Tensor, acc: torch.Tensor) -> torch.Tensor:
        """This rank's un-reduced fc2 output of one loop on x + acc (the TP reduction is the caller's)."""
        return F.linear(self._hidden(x + acc), self.linear_fc2.weight)

    def _next_loop(self, x: torch.Tensor, acc: torch.Tensor, n_active: int) -> torch.Tensor:
        """acc_i = acc_{i-1} + FFN(norm(x + acc_{i-1})) for tokens sorted deepest first.

        The first ``n_active`` tokens (still looping: L >= i) run with autograd (recomputed in backward with
        vffn.recompute); the rest only as values (no_grad: nothing saved, no backward), since their loss
        does not depend on loops past their own depth. Both parts share ONE fc2 all-reduce, and both always
        run (on empty slices if need be), so TP collectives and ZeRO-3 gathers do not depend on the data.
        """
        active = self._maybe_recompute(self._active_partial, x[:n_active], acc[:n_active])
        with torch.no_grad():
            tail = self._active_partial(x[n_active:], acc[n_active:])
        return acc + reduce_from_tensor_model_parallel_region(torch.cat([active, tail], dim=0), group=self.tp_group)

    @staticmethod
    def _depth_order(L: torch.Tensor, D: int) -> tuple[torch.Tensor, list]:
        """Tokens sorted deepest first (stable) and n_at_least[i] = #(L >= i), i = 0..D (host integers).

        Sorted, the tokens still looping at loop i are a prefix and the tokens with a width share (L < D,
        m > 0) a suffix, so every loop works on contiguous slices: one gather before, one scatter after.
        The counts are identical on all TP ranks (same inputs, replicated depth router).
        """
        order = torch.argsort(L, descending=True, stable=True)
        n_at_least = torch.bincount(L, minlength=D + 1).flip(0).cumsum(0).flip(0).tolist()
        return order, n_at_least

    def _maybe_recompute(self, fn, *args):
        if self.vffn.recompute and self.training and torch.is_grad_enabled():
            return tp_checkpoint(fn, False, *args)
        return fn(*args)

    def _width_weights(self, x: torch.Tensor):
        """Top-k softmax weights [T, N] (zeros off the top-k), the top-k indices, and the router logits."""
        logits = self.router(x).float()
        top_val, top_idx = torch.topk(logits, self.top_k, dim=-1)
        w = torch.zeros_like(logits).scatter(-1, top_idx, torch.softmax(top_val, dim=-1))
        return w, top_idx, logits

    def _local(self, w_full: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
        """This rank's slice of the per-expert weights; backward all-gathers the router gradient."""
        return scatter_to_tensor_model_parallel_region(w_full.to(dtype).unsqueeze(1), group=self.tp_group)

    # ----------------------------------------------------------------- forward
    def forward(self, hidden_states: torch.Tensor, **kwargs):
        s, b, d = hidden_states.shape
        x = hidden_states.reshape(s * b, 1, d)
        if self.training:
            delta = self._forward_train(x)
        else:
            delta = self._forward_eval(x)
            if self.record_routing:  # per-token depth for routing pictures: [b, s] (token order of the batch)
                self.last_loops = self._last_L.view(s, b).t().cpu()
        return delta.reshape(s, b, d), None

    # Training backward through loops deeper than a token's sampled depth L is exactly zero (the
    # straight-through depth mix's value is x_L), so those loops run as values only: training costs
    # (D + 2 E[L]) / 3 dense FFNs (+ the width fc2) instead of D. Set False to time the full-backward
    # algorithm (tools/bench_vffn.py); both compute the same numbers to fp32 round-off.
    compact_backward = True

    def _depth_choice(self, x: torch.Tensor):
        """Hard Gumbel-softmax depth choice with straight-through gradient: (y [T, D], loops per token L)."""
        q = self.depth_router(x[:, 0]).float()
        y_soft = torch.softmax((q + self._gumbel_noise(tuple(q.shape), q.device)) / self.tau, dim=-1)
        choice = y_soft.argmax(dim=-1)
        y = F.one_hot(choice, self.max_depth).to(y_soft.dtype) - y_soft.detach() + y_soft
        self._micro += 1
        return y, choice + 1

    def _mix(self, y: torch.Tensor, deep: torch.Tensor, wide: torch.Tensor) -> torch.Tensor:
        """out = (1 - m) x_deep + m x_wide, m = (D - loops) / D with loops = sum_i i y_i (straight-through)."""
        D = self.max_depth
        loops = (y * torch.arange(1, D + 1, device=y.device, dtype=y.dtype)).sum(-1)
        m = ((D - loops) / D).to(deep.dtype)[:, None, None]
        return (1 - m) * deep + m * wide

    def _forward_train(self, x: torch.Tensor) -> torch.Tensor:
        if not self.compact_backward:
            return self._forward_train_full_backward(x)
        D = self.max_depth
        w_full, top_idx, logits = self._width_weights(x[:, 0])
        y, L = self._depth_choice(x)
        order, n_at_least = self._depth_order(L, D)
        xs, ys = x.index_select(0, order), y.index_select(0, order)
        first = functools.partial(self._first_loop, n_values=n_at_least[D])  # recompute takes tensor args only
        acc, wide = self._maybe_recompute(first, xs, self._local(w_full.index_select(0, order), x.dtype),
                                          top_idx.index_select(0, order))
        deep = ys[:, 0, None, None].to(x.dtype) * acc
        for i in range(2, D + 1):  # acc_i = x_i - x, accumulated as deltas; autograd only for L >= i
            acc = self._next_loop(xs, acc, n_at_least[i])
            deep = deep + ys[:, i - 1, None, None].to(x.dtype) * acc
        out = self._mix(ys, deep, wide)
        out = torch.empty_like(out).index_copy(0, order, out)  # back to the batch's token order
        return self._finish_train(out, L, top_idx, logits)

    def _forward_train_full_backward(self, x: torch.Tensor) -> torch.Tensor:
        """The original algorithm: every loop of every token with autograd (benchmark baseline only)."""
        D = self.max_depth
        w_full, top_idx, logits = self._width_weights(x[:, 0])
        y, L = self._depth_choice(x)
        acc, wide = self._maybe_recompute(self._first_loop, x, self._local(w_full, x.dtype), top_idx)
        deep = y[:, 0, None, None].to(x.dtype) * acc
        for i in range(1, D):
            acc = acc + self._maybe_recompute(self._loop_from_delta, x, acc)
            deep = deep + y[:, i, None, None].to(x.dtype) * acc
        return self._finish_train(self._mix(y, deep, wide), L, top_idx, logits)

    def _finish_train(self, out, L, top_idx, logits):
        self._record_stats(L, top_idx)
        if self.vffn.aux_loss_coeff > 0 and torch.is_grad_enabled():
            aux = self._load_balancing_loss(logits, top_idx)
            out = MoEAuxLossAutoScaler.apply(out, aux * self.vffn.aux_loss_coeff)
        return out

    @torch.no_grad()
    def _forward_eval(self, x: torch.Tensor) -> torch.Tensor:
        D = self.max_depth
        L = self.depth_router(x[:, 0]).float().argmax(dim=-1) + 1  # loops per token, 1..D
        order, n_at_least = self._depth_order(L, D)
        xs = x.index_select(0, order)
        m = ((D - L.index_select(0, order)).to(x.dtype) / D)[:, None, None]
        wide = n_at_least[D]  # sorted position of the first token that uses the width path
        w_full, top_idx, _ = self._width_weights(xs[wide:, 0])
        acc, width_delta = self._first_loop(xs, self._local(w_full, x.dtype), top_idx)  # width: the last T - wide
        u = xs + acc
        for i in range(2, D + 1):
            # Every loop runs, on an empty slice if no local token needs it: the number of FFN calls must not
            # depend on this rank's data (ZeRO-3 gathers the weights per call; DP ranks would disagree).
            n = n_at_least[i]
            f = self._loop(u[:n])
            u = u[:n] + f
            acc[:n] += f  # delta x_L - x, accumulated as deltas
        out = (1 - m) * acc
        out[wide:] += m[wide:] * width_delta
        self._record_stats(L, top_idx)
        self._last_L = L
        return torch.empty_like(out).index_copy_(0, order, out)

    def _load_balancing_loss(self, logits: torch.Tensor, top_idx: torch.Tensor) -> torch.Tensor:
        """Switch-style: N * sum_e f_e * P_e (f_e: share of routed slots, P_e: mean router probability)."""
        probs = torch.softmax(logits, dim=-1)
        counts = torch.zeros(self.num_experts, device=logits.device, dtype=torch.float32)
        counts.scatter_add_(0, top_idx.reshape(-1), torch.ones(top_idx.numel(), device=logits.device))
        frac = counts / top_idx.numel()
        aux = self.num_experts * torch.sum(frac * probs.mean(dim=0))
        if self.layer_number is not None:
            save_to_aux_losses_tracker(AUX_LOSS_NAME, aux.detach(), self.layer_number, self.config.num_layers)
        return aux

    @torch.no_grad()
    def _record_stats(self, loops: torch.Tensor, top_idx: torch.Tensor) -> None:
        depth = torch.bincount(loops.reshape(-1) - 1, minlength=self.max_depth)
        experts = torch.bincount(top_idx.reshape(-1), minlength=self.num_experts)
        if not self.stats:
            self.stats = {"depth_counts": depth, "expert_counts": experts}
        else:
            self.stats["depth_counts"] = self.stats["depth_counts"] + depth
            self.stats["expert_counts"] = self.stats["expert_counts"] + experts
