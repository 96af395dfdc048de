"""Training metrics: TensorBoard scalars, a per-step metrics.jsonl, and the console progress line/bar.

Only global rank 0 writes. Routing statistics are reduced over the data-parallel group (TP ranks of a DP
rank see the same tokens and routing, so they are not summed twice).

TensorBoard tags (x axis = optimizer step):
  train/loss  train/lr  train/grad_norm  train/tokens_per_sec  train/consumed_samples  train/skipped_steps
  valid/loss  valid/vffn/mean_loops  valid/vffn/wide_share  (eval routing, argmax: the inference depth choice;
                                                              wide_share = tokens with fewer than D loops)
  vffn/tau  vffn/aux_loss                             (router load-balancing loss, mean over layers)
  moe/aux_loss  moe/layer_LL/aux_loss                 (arch: moe; megatron's MoE router load-balancing loss)
  vffn/layer_LL/mean_loops  vffn/layer_LL/depth_share_D  vffn/layer_LL/expert_load_E  vffn/layer_LL/aux_loss
"""
from __future__ import annotations

import json
import os
import sys
import time
from dataclasses import dataclass
from typing import Optional

import torch
import torch.distributed as dist

from .config import RunConfig



def routing_stats(model: torch.nn.Module, dp_group) -> dict[int, dict]:
    """Per layer {'depth': shares [D], 'experts': shares [N], 'mean_loops': float} since the last call."""
    from vffn_megatron import vffn_modules

    mods = sorted(vffn_modules(model), key=lambda m: m.layer_number or 0)
    if not mods:
        return {}
    stats = [m.pop_stats() for m in mods]
    if not all(stats):  # no forward since the last call
        return {}
    flat = torch.cat([torch.cat([s["depth_counts"], s["expert_counts"]]) for s in stats])
    dev = next(model.parameters()).device
    flat = flat.to(dev)
    if dist.is_initialized():
        dist.all_reduce(flat, group=dp_group)
    flat = flat.cpu()
    out, i = {}, 0
    for m in mods:
        d, n = m.max_depth, m.num_experts
        depth, experts = flat[i:i + d], flat[i + d:i + d + n]
        i += d + n
        tokens = depth.sum().clamp_min(1)
        out[m.layer_number or 0] = {
            "depth": (depth / tokens).tolist(),
            "experts": (experts / experts.sum().clamp_min(1)).tolist(),
            "mean_loops": float((depth * torch.arange(1, d + 1, dtype=depth.dtype)).sum() / tokens),
        }
    return out


def aux_losses(micro_batches: int, dp_group, name: str) -> Optional[list[float]]:
    """Mean load-balancing loss ``name`` per layer since the last call (megatron's aux-loss tracker), then
    clear it (the names: pretrain.arch_hooks)."""
    from megatron.core.transformer.moe.moe_utils import clear_aux_losses_tracker, get_moe_layer_wise_logging_tracker

    tracker = get_moe_layer_wise_logging_tracker()
    if name not in tracker or micro_batches == 0:
        clear_aux_losses_tracker()  # eval forwards may have added values of no interest
        return None
    values = tracker[name]["values"].detach().clone().float()
    if dist.is_initialized():
        dist.all_reduce(values, group=dp_group)
        values /= dist.get_world_size(dp_group)
    clear_aux_losses_tracker()
    return (values / micro_batches).cpu().tolist()


def truncate_jsonl(path: str, last_step: int) -> None:
    """Keep only the records of steps <= ``last_step`` (the step a run resumes from; 0 for a fresh start).

    Steps after the resumed checkpoint are trained again, so their old records would repeat (TensorBoard
    purges them the same way, through ``purge_step``). An unreadable line (a crash mid-write) is dropped.
    """
    if not os.path.isfile(path):
        return
    kept = []
    with open(path) as f:
        for line in f:
            try:
                rec = json.loads(line)
            except ValueError:
                continue
            if isinstance(rec, dict) and isinstance(rec.get("step"), int) and rec["step"] <= last_step:
                kept.append(line if line.endswith("\n") else line + "\n")
    tmp = f"{path}.tmp.{os.getpid()}"
    with open(tmp, "w") as f:
        f.writelines(kept)
    os.replace(tmp, path)


@dataclass
class StepRecord:
    """One optimizer step's numbers, by name (step = completed updates, 1-based)."""

    step: int
    loss: float  # mean over the global batch; NaN for a skipped non-finite step
    lr: float
    grad_norm: Optional[float]
    consumed_samples: int
    skipped_steps: int
    tokens: int  # tokens of the global batch

    def jsonl(self) -> dict:
        return {"step": self.step, "loss": self.loss, "lr": self.lr, "grad_norm": self.grad_norm,
                "consumed_samples": self.consumed_samples, "skipped_steps": self.skipped_steps}


class Metrics:
    def __init__(self, cfg: RunConfig, rank: int, start_step: int):
        self.cfg, self.rank = cfg, rank
        self.writer = None
        self.jsonl = None
        self.bar = None
        self._reset_window(start_step)
        if rank != 0:
            return
        os.makedirs(cfg.output_dir, exist_ok=True)
        path = os.path.join(cfg.output_dir, "metrics.jsonl")
        truncate_jsonl(path, start_step)
        self.jsonl = open(path, "a")
        if cfg.logging.tensorboard:
            from torch.utils.tensorboard import SummaryWriter

            self.writer = SummaryWriter(log_dir=cfg.tensorboard_dir, purge_step=start_step + 1)
        if cfg.logging.progress == "bar":
            from tqdm import tqdm

            self.bar = tqdm(total=cfg.schedule.train_steps, initial=start_step, unit="step", dynamic_ncols=True,
                            file=sys.stdout)

    def _reset_window(self, step: int) -> None:
        self.t0 = time.perf_counter()
        self.window_steps, self.window_tokens, self.window_loss = 0, 0, 0.0
        self.window_start = step

    # ------------------------------------------------------------------ per step
    def step(self, rec: StepRecord) -> None:
        self.window_steps += 1
        self.window_tokens += rec.tokens
        self.window_loss += rec.loss
        if self.jsonl:
            self.jsonl.write(json.dumps(rec.jsonl()) + "\n")
            self.jsonl.flush()

    def log(self, rec: StepRecord, tau: Optional[float] = None, routing: Optional[dict] = None,
            aux: Optional[list[float]] = None) -> None:
        """Write the window's scalars, ending at ``rec`` (called on every rank: the stats were reduced
        collectively)."""
        step, lr, grad_norm, routing = rec.step, rec.lr, rec.grad_norm, routing or {}
        if self.rank != 0 or self.window_steps == 0:
            self._reset_window(step)
            return
        dt = max(time.perf_counter() - self.t0, 1e-9)
        loss = self.window_loss / self.window_steps
        tok_s = self.window_tokens / dt
        scalars = {"train/loss": loss, "train/lr": lr, "train/tokens_per_sec": tok_s,
                   "train/consumed_samples": rec.consumed_samples, "train/skipped_steps": rec.skipped_steps,
                   "train/step_time_sec": dt / self.window_steps}
        if grad_norm is not None:
            scalars["train/grad_norm"] = grad_norm
        if tau is not None:
            scalars["vffn/tau"] = tau
        group = "moe" if self.cfg.model.arch == "moe" else "vffn"
        if aux:
            scalars[f"{group}/aux_loss"] = sum(aux) / len(aux)
            if group == "moe" and self.cfg.logging.per_layer:
                for layer, v in enumerate(aux, start=1):
                    scalars[f"moe/layer_{layer:02d}/aux_loss"] = v
        mean_loops = []
        for layer, st in routing.items():
            mean_loops.append(st["mean_loops"])
            if not self.cfg.logging.per_layer:
                continue
            p = f"vffn/layer_{layer:02d}"
            scalars[f"{p}/mean_loops"] = st["mean_loops"]
            for d, share in enumerate(st["depth"], start=1):
                scalars[f"{p}/depth_share_{d}"] = share
            for e, load in enumerate(st["experts"]):
                scalars[f"{p}/expert_load_{e}"] = load
            if aux and 1 <= layer <= len(aux):
                scalars[f"{p}/aux_loss"] = aux[layer - 1]
        if mean_loops:
            scalars["vffn/mean_loops"] = sum(mean_loops) / len(mean_loops)
        if self.writer:
            for k, v in scalars.items():
                self.writer.add_scalar(k, v, step)
            self.writer.flush()
        self._console(step, loss, lr, grad_norm, tok_s, dt / self.window_steps, tau, scalars.get("vffn/mean_loops"))
        self._reset_window(step)

    def _console(self, step, loss, lr, grad_norm, tok_s, step_time, tau, loops) -> None:
        total = self.cfg.schedule.train_steps
        parts = [f"loss {loss:.4f}", f"lr {lr:.2e}"]
        if grad_norm is not None:
            parts.append(f"grad {grad_norm:.3f}")
        parts.append(f"{tok_s:,.0f} tok/s")
        if tau is not None:
            parts.append(f"tau {tau:.3f}")
        if loops is not None:
            parts.append(f"loops {loops:.2f}")
        if self.bar is not None:
            self.bar.set_postfix_str(" | ".join(parts), refresh=False)
            self.bar.update(step - self.bar.n)
        elif self.cfg.logging.progress == "line":
            eta = int(step_time * (total - step))
            parts.append(f"{step_time:.2f} s/step | eta {eta // 3600}:{eta // 60 % 60:02d}:{eta % 60:02d}")
            print(f"step {step}/{total} | " + " | ".join(parts), flush=True)

    def valid(self, step: int, loss: float, routing: Optional[dict] = None) -> None:
        """The validation loss and, for VersatileFFN, the eval routing's mean loops and width-path share
        (mean over layers; per layer too with logging.per_layer)."""
        if self.rank != 0:
            return
        scalars = {"valid/loss": loss}
        if routing:
            # a token takes the width path (m > 0) unless it chose all D loops
            wide = {layer: 1.0 - st["depth"][-1] for layer, st in routing.items()}
            scalars["valid/vffn/mean_loops"] = sum(st["mean_loops"] for st in routing.values()) / len(routing)
            scalars["valid/vffn/wide_share"] = sum(wide.values()) / len(wide)
            if self.cfg.logging.per_layer:
                for layer, st in routing.items():
                    scalars[f"valid/vffn/layer_{layer:02d}/mean_loops"] = st["mean_loops"]
                    scalars[f"valid/vffn/layer_{layer:02d}/wide_share"] = wide[layer]
        if self.writer:
            for k, v in scalars.items():
                self.writer.add_scalar(k, v, step)
            self.writer.flush()
        if self.jsonl:
            rec = {"step": step, "valid_loss": loss}
            if routing:
                rec.update(valid_mean_loops=scalars["valid/vffn/mean_loops"],
                           valid_wide_share=scalars["valid/vffn/wide_share"])
            self.jsonl.write(json.dumps(rec) + "\n")
            self.jsonl.flush()
        extra = (f" (inference routing: {scalars['valid/vffn/mean_loops']:.2f} loops, width path for "
                 f"{scalars['valid/vffn/wide_share']:.0%} of tokens)" if routing else "")
        self.info(f"validation at step {step}: loss {loss:.4f}{extra}")

    def info(self, msg: str) -> None:
        if self.rank != 0:
            return
        if self.bar is not None:
            self.bar.write(msg)
        else:
            print(msg, flush=True)

    def close(self) -> None:
        if self.writer:
            self.writer.close()
        if self.jsonl:
            self.jsonl.close()
        if self.bar is not None:
            self.bar.close()
