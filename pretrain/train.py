"""The training loop: megatron GPTModel in a DeepSpeed engine, data by DP rank, eval, checkpoints, metrics.

Step numbering: ``step`` counts completed optimizer updates; the update with index ``step`` (0-based)
uses Gumbel temperature tau(step) and the LR multiplier lr_lambda(step), and is logged as step+1.
"""
from __future__ import annotations

import os
import time
from dataclasses import dataclass, field
from typing import Callable, Optional

import torch
import torch.distributed as dist

from . import checkpoint as ckpt
from . import elastic
from .config import RunConfig
from .data import build_datasets, data_signature, loader, to_device
from .engine import build_engine
from .arch_hooks import ArchHooks, hooks_for
from .metrics import Metrics, StepRecord
from .peers import PeerWatch


class NonFiniteLossError(RuntimeError):
    """The loss became NaN/inf (on_nonfinite: stop), or max_consecutive_skips steps in a row did (skip); raised
    before the step's update is applied."""


@dataclass
class RunResult:
    losses: dict = field(default_factory=dict)  # step -> training loss (mean over the global batch)
    valid_losses: dict = field(default_factory=dict)
    grad_norms: dict = field(default_factory=dict)
    start_step: int = 0
    final_step: int = 0
    stopped_by_signal: bool = False
    skipped_steps: int = 0
    tokens_per_sec: float = 0.0  # global tokens / s over the steps after the first (compile/warm-up excluded)
    checkpoints: list = field(default_factory=list)


def setup_parallel(cfg: RunConfig) -> int:
    """Process group (NCCL on CUDA, gloo on CPU) + megatron parallel state + seeds. Returns world size."""
    from vffn_megatron import init_megatron
    from vffn_megatron.runtime import init_distributed

    init_distributed(timeout_minutes=cfg.parallel.timeout_minutes)
    init_megatron(cfg.parallel.tensor_model_parallel_size, seed=cfg.seed)
    return dist.get_world_size()


def build_model(cfg: RunConfig, vocab_size: int, meta: bool = False):
    """The run's GPTModel (this rank's TP shard); ``meta``: on the meta device, shapes only (pretrain.params)."""
    from vffn_megatron import build_gpt_model

    gpt = cfg.model.gpt()
    gpt.vocab_size = vocab_size
    return build_gpt_model(gpt, cfg.vffn_or_none, cfg.parallel.tensor_model_parallel_size,
                           bf16=cfg.precision == "bf16", kloop=cfg.kloop_or_none, moe=cfg.moe_or_none,
                           attention_backend=cfg.model.attention_backend, meta=meta)


def _micro_loss(engine, batch: dict) -> tuple[torch.Tensor, torch.Tensor]:
    """(sum of masked per-token losses, number of loss tokens) for one micro-batch."""
    per_token = engine(batch["tokens"], batch["position_ids"], None, labels=batch["labels"])
    mask = batch["loss_mask"].to(per_token.dtype)
    return (per_token.float() * mask.float()).sum(), mask.float().sum()


def _tp_grad_norm(model: torch.nn.Module) -> float:
    """Global gradient 2-norm from ``param.grad`` (ZeRO 0), counting TP-replicated parameters once."""
    from megatron.core import parallel_state as ps

    tp_rank = ps.get_tensor_model_parallel_rank()
    sq = torch.zeros((), dtype=torch.float64, device=next(model.parameters()).device)
    for p in model.parameters():
        if p.grad is not None and (getattr(p, "tensor_model_parallel", False) or tp_rank == 0):
            sq += p.grad.detach().double().pow(2).sum()
    if ps.get_tensor_model_parallel_world_size() > 1:
        dist.all_reduce(sq, group=ps.get_tensor_model_parallel_group())
    return float(sq.sqrt())


class _DroppedUpdate:
    """skip mode: the coming ``engine.step()`` discards this step's gradients without an update.

    The DeepSpeed ZeRO / bf16 optimizers detect the non-finite gradient norm themselves and drop the
    update (bf16 needs bf16.check_grad_overflow, which ds_config sets in skip mode). A plain torch
    optimizer (ZeRO 0, fp32) has no such check: its ``step`` is made a no-op for this one call, and
    DeepSpeed still zeroes the gradients and advances its counters and the LR schedule.
    """

    def __init__(self, engine, active: bool):
        self.opt = engine.optimizer if active and isinstance(engine.optimizer, torch.optim.Optimizer) else None

    def __enter__(self):
        if self.opt is not None:
            self.saved = self.opt.__dict__.get("step")  # torch's LR scheduler may have wrapped it
            self.opt.step = lambda *a, **k: None  # instance attribute shadows the method

    def __exit__(self, *exc):
        if self.opt is not None:
            if self.saved is None:
                del self.opt.step
            else:
                self.opt.step = self.saved


@torch.no_grad()
def evaluate(engine, valid_ds, cfg: RunConfig, dp_rank: int, dp_size: int, dp_group,
             hooks: ArchHooks) -> tuple[float, dict]:
    """(mean validation loss, the eval forwards' per-layer routing statistics: {} unless VersatileFFN)."""
    s = cfg.schedule
    hooks.before_eval(engine.module)
    engine.eval()
    num = torch.zeros(2, dtype=torch.float64, device=engine.device)
    for batch in loader(valid_ds, cfg, 0, s.eval_iters * s.global_batch_size, dp_rank, dp_size):
        loss_sum, count = _micro_loss(engine, to_device(batch, engine.device))
        num += torch.stack([loss_sum.double(), count.double()])
    dist.all_reduce(num)  # TP ranks add identical copies to numerator and denominator alike
    engine.train()
    routing = hooks.after_eval(engine.module, dp_group)
    return float(num[0] / num[1].clamp_min(1)), routing


def _forward_backward(engine, batches, gas: int, device) -> torch.Tensor:
    """One step's micro-batches: forward, backward (DeepSpeed scales by 1/gas); returns the sum of the
    micro-batch mean losses. The boundary ``engine.step()`` is left to the caller."""
    local = torch.zeros((), dtype=torch.float64, device=device)
    for micro in range(gas):
        batch = to_device(next(batches), device)
        loss_sum, count = _micro_loss(engine, batch)
        loss = loss_sum / count.clamp_min(1)
        engine.backward(loss)
        local += loss.detach().double()
        if micro < gas - 1:
            engine.step()  # inside the accumulation window DeepSpeed only counts the micro-step
    return local


def _agree(local: torch.Tensor, gas: int, world: int, stop_received) -> tuple[float, int, bool]:
    """One collective per step: (mean loss over the global batch, ranks with a non-finite loss, any rank
    asked to stop). TP ranks hold equal values, so the world mean is the data-parallel mean."""
    finite = bool(torch.isfinite(local))
    flags = torch.tensor([local.item() / gas if finite else 0.0, 0.0 if finite else 1.0,
                          1.0 if stop_received else 0.0], dtype=torch.float64, device=local.device)
    dist.all_reduce(flags)
    return float(flags[0]) / world, int(flags[1]), bool(flags[2] > 0)


@dataclass
class StepOutcome:
    loss: float  # mean over the global batch; NaN when the step was non-finite (its update dropped)
    nonfinite: int  # ranks with a non-finite loss
    stop_requested: bool  # some rank received a stop signal
    lr: float  # the rate this update used
    grad_norm: Optional[float]


def train_step(engine, batches, cfg: RunConfig, world: int, hooks: ArchHooks, step: int,
               stop_received: bool) -> StepOutcome:
    """The update with 0-based index ``step``: forward/backward of its micro-batches, agreement across ranks
    (loss, non-finite, stop), then the optimizer step (dropped when the loss is non-finite in skip mode)."""
    gas = cfg.grad_accum_steps(world)
    hooks.before_step(engine.module, step)
    local = _forward_backward(engine, batches, gas, engine.device)
    mean_loss, nonfinite, stop_requested = _agree(local, gas, world, stop_received)
    if nonfinite:
        if cfg.on_nonfinite == "stop":
            raise NonFiniteLossError(
                f"non-finite training loss at step {step + 1} (on {nonfinite} of {world} ranks); the "
                f"update was not applied. Lower optimizer.lr, check the data, resume from the last "
                f"checkpoint, or set on_nonfinite=skip to drop such steps")
        mean_loss = float("nan")
    grad_norm = _tp_grad_norm(engine.module) if isinstance(engine.optimizer, torch.optim.Optimizer) else None
    lr = engine.get_lr()[0]
    with _DroppedUpdate(engine, active=nonfinite > 0):
        engine.step()  # accumulation boundary: reduce, clip, update, LR schedule
    if grad_norm is None:
        grad_norm = engine.get_global_grad_norm()
        grad_norm = float(grad_norm) if grad_norm is not None else None
    return StepOutcome(mean_loss, nonfinite, stop_requested, lr, None if nonfinite else grad_norm)


def _write_run_config(cfg: RunConfig, rank: int) -> None:
    if rank == 0:
        os.makedirs(cfg.output_dir, exist_ok=True)
        with open(os.path.join(cfg.output_dir, "config.yaml"), "w") as f:
            f.write(cfg.to_yaml())


def train(cfg: RunConfig, tokenizer, vocab_size: int, resume: Optional[ckpt.ResumePoint] = None,
          model_hook: Optional[Callable] = None, init=None) -> RunResult:
    """Run (or continue) the configured training; the process group is set up here if needed.

    ``model_hook(model)`` is called on the megatron model before DeepSpeed wraps it (tests use it to
    inject faults). ``init``: the weights of ``checkpoint.init_from`` (``pretrain.init_from.InitPoint``) for a
    fresh run, loaded before DeepSpeed builds the optimizer (so it, the LR schedule and the step start at 0)."""
    from megatron.core import parallel_state as ps
    from megatron.core.transformer.moe.moe_utils import MoEAuxLossAutoScaler, clear_aux_losses_tracker

    world = setup_parallel(cfg)
    peers = PeerWatch.start(cfg)  # a lost host ends this rank in bounded time, naming it (pretrain/peers.py)
    rank = dist.get_rank()
    dp_rank, dp_size, dp_group = ps.get_data_parallel_rank(), ps.get_data_parallel_world_size(), ps.get_data_parallel_group()
    gas = cfg.grad_accum_steps(world)
    s = cfg.schedule
    hooks = hooks_for(cfg)

    model = build_model(cfg, vocab_size)
    if init is not None and resume is None:
        init.apply(model, cfg.parallel.tensor_model_parallel_size, ps.get_tensor_model_parallel_rank())
    if model_hook is not None:
        model_hook(model)
    # another TP / DP / ZeRO layout than the checkpoint's: load its universal conversion (a collective)
    load_from = elastic.prepare(resume, cfg, model, world) if resume is not None else None
    engine = build_engine(cfg, model, world, load_universal=load_from is not None and load_from.universal)
    # DeepSpeed divides the loss by the accumulation steps in engine.backward; the router aux loss
    # injects its gradient directly, so it gets the same factor.
    MoEAuxLossAutoScaler.set_loss_scale(torch.tensor(1.0 / gas, device=engine.device))
    clear_aux_losses_tracker()

    checkpointer = ckpt.Checkpointer(cfg, world)
    result = RunResult()
    step, consumed = 0, 0
    if resume is not None:
        state = checkpointer.load(engine, load_from)
        step, consumed = int(state.get("step", 0)), int(state.get("consumed_samples", 0))
        result.skipped_steps = int(state.get("skipped_steps", 0))
        if rank == 0 and state.get("data_signature") not in (None, data_signature(cfg)):
            print(f"WARNING: the data configuration differs from the checkpoint's ({resume.path}); "
                  f"continuing at sample {consumed} of the new data order", flush=True)
    result.start_step = step

    train_ds, valid_ds = build_datasets(cfg, tokenizer, world)
    batches = iter(loader(train_ds, cfg, consumed, s.train_steps * s.global_batch_size, dp_rank, dp_size))
    metrics = Metrics(cfg, rank, step)
    if resume is not None:
        metrics.info(f"resumed from {resume.path} at step {step} ({consumed} samples consumed)")
    elif init is not None:
        metrics.info(init.message())
    _write_run_config(cfg, rank)

    stop = ckpt.StopSignal().install() if cfg.checkpoint.save_on_sigterm else None
    tokens_per_step = s.global_batch_size * cfg.model.seq_length
    timed_steps, timed_secs = 0, 0.0
    micro_since_log = 0
    run_of_skips = 0  # consecutive skipped steps (on_nonfinite: skip)

    def client_state() -> dict:
        return {"step": step, "consumed_samples": consumed, "skipped_steps": result.skipped_steps,
                "data_signature": data_signature(cfg), "config": cfg.to_dict(),
                **({"initialised_from": init.message()} if init is not None and resume is None else {})}

    def validate_at(at: int) -> None:  # a collective: every rank, same steps
        result.valid_losses[at], eval_routing = evaluate(engine, valid_ds, cfg, dp_rank, dp_size, dp_group, hooks)
        metrics.valid(at, result.valid_losses[at], eval_routing)

    try:
        engine.train()
        if valid_ds is not None and s.eval_at_start and step == 0:
            validate_at(0)
        while step < s.train_steps:
            peers.step = step
            t0 = time.perf_counter()
            out = train_step(engine, batches, cfg, world, hooks, step, stop is not None and stop.received)
            if out.nonfinite:
                result.skipped_steps += 1
                run_of_skips += 1
                metrics.info(f"WARNING: non-finite loss at step {step + 1}: update skipped "
                             f"({result.skipped_steps} skipped so far, {run_of_skips} in a row)")
                if run_of_skips >= cfg.max_consecutive_skips:  # every rank agrees: out.nonfinite is all-reduced
                    raise NonFiniteLossError(
                        f"non-finite training loss at {run_of_skips} consecutive steps ({step + 2 - run_of_skips}-"
                        f"{step + 1}; max_consecutive_skips={cfg.max_consecutive_skips}) with on_nonfinite=skip: "
                        f"the run is diverging and was stopped without saving. Lower optimizer.lr (or raise "
                        f"schedule.warmup_steps), check the data, and resume from the last checkpoint"
                        + (f" ({result.checkpoints[-1]})" if result.checkpoints else ""))
            else:
                run_of_skips = 0
            step += 1
            consumed += s.global_batch_size
            micro_since_log += gas
            dt = time.perf_counter() - t0
            if step > result.start_step + 1:
                timed_steps, timed_secs = timed_steps + 1, timed_secs + dt
            rec = StepRecord(step, out.loss, out.lr, out.grad_norm, consumed, result.skipped_steps, tokens_per_step)
            result.losses[step] = out.loss
            result.grad_norms[step] = out.grad_norm
            metrics.step(rec)
            if step % cfg.logging.log_interval == 0 or step == s.train_steps:
                routing = hooks.routing(engine.module, dp_group)
                aux = hooks.aux_losses(micro_since_log, dp_group)
                micro_since_log = 0
                metrics.log(rec, tau=hooks.tau(step - 1), routing=routing, aux=aux)
            if valid_ds is not None and (step % s.eval_interval == 0 or step == s.train_steps):
                validate_at(step)
            if out.stop_requested:
                metrics.info(f"stop signal received: saving at step {step} and exiting")
            saved = checkpointer.maybe_save(engine, step, client_state, last_step=step == s.train_steps,
                                            forced=out.stop_requested)
            if saved:
                result.checkpoints.append(saved)
                metrics.info(f"saved checkpoint {saved}")
            if out.stop_requested:
                result.stopped_by_signal = True
                break
    except Exception as e:
        peers.on_error(e)  # a peer's loss ends the process here, naming it; anything else goes on up
        raise
    finally:
        peers.stop()
        if stop:
            stop.uninstall()
        metrics.close()
        if hasattr(engine, "destroy"):
            engine.destroy()
    result.final_step = step
    result.tokens_per_sec = tokens_per_step * timed_steps / timed_secs if timed_secs > 0 else 0.0
    return result
