"""What the training loop does differently per architecture, in one object per ``model.arch``.

The loop calls the same hooks for every architecture; dense and k-loop need none of them, VersatileFFN sets
its blocks' step (Gumbel temperature and noise) and reports routing, MoE and VersatileFFN report their
routers' load-balancing loss under their own name in megatron's aux-loss tracker.
"""
from __future__ import annotations

from typing import Optional

import torch

from .config import RunConfig
from .metrics import aux_losses, routing_stats


class ArchHooks:
    """The no-op hooks (dense, k-loop)."""

    aux_loss_name: Optional[str] = None  # the router loss's name in megatron's aux-loss tracker

    def __init__(self, cfg: RunConfig):
        self.cfg = cfg

    def before_step(self, model: torch.nn.Module, step: int) -> None:
        """Called on every rank before the update with 0-based index ``step``."""

    def tau(self, step: int) -> Optional[float]:
        """Gumbel temperature the update with 0-based index ``step`` used (logged), if any."""
        return None

    def routing(self, model: torch.nn.Module, dp_group) -> dict:
        """Per-layer routing statistics since the last call (a DP collective where there are any)."""
        return {}

    def aux_losses(self, micro_batches: int, dp_group) -> Optional[list[float]]:
        """Mean router load-balancing loss per layer since the last call (a DP collective), if any."""
        if self.aux_loss_name is None:
            return None
        return aux_losses(micro_batches, dp_group, self.aux_loss_name)

    def before_eval(self, model: torch.nn.Module) -> None:
        """Set aside the training routing statistics of the current logging window."""

    def after_eval(self, model: torch.nn.Module, dp_group) -> dict:
        """Routing statistics of the evaluation forwards (a DP collective where there are any), then restore
        the training window's: eval routing (argmax) is not training routing (Gumbel-sampled)."""
        return {}


class VFFNHooks(ArchHooks):
    @property
    def aux_loss_name(self) -> str:
        from vffn_megatron.versatile_ffn import AUX_LOSS_NAME

        return AUX_LOSS_NAME

    def before_step(self, model, step):
        from vffn_megatron import set_vffn_step

        set_vffn_step(model, step, self.cfg.seed)

    def tau(self, step):
        return self.cfg.vffn.tau(step)

    def routing(self, model, dp_group):
        return routing_stats(model, dp_group)

    def before_eval(self, model):
        from vffn_megatron import vffn_modules

        self._train_stats = [(m, m.stats) for m in vffn_modules(model)]
        for m, _ in self._train_stats:
            m.reset_stats()

    def after_eval(self, model, dp_group):
        stats = routing_stats(model, dp_group)  # the inference depth choices: the paper's FLOPs column
        for m, kept in getattr(self, "_train_stats", []):
            m.stats = kept
        self._train_stats = []
        return stats


class MoEHooks(ArchHooks):
    aux_loss_name = "load_balancing_loss"  # the name megatron's MoE router logs under


HOOKS = {"vffn": VFFNHooks, "dense": ArchHooks, "kloop": ArchHooks, "moe": MoEHooks}


def hooks_for(cfg: RunConfig) -> ArchHooks:
    return HOOKS[cfg.model.arch](cfg)
