"""DeepSpeed engine around the megatron GPTModel: ZeRO 0-3 over megatron's data-parallel group.

Facts this relies on (measured with the pinned DeepSpeed):
* DeepSpeed must be given an ``mpu`` *adapter* exposing megatron's groups; without one it averages
  tensor-parallel shards' gradients as if they were data-parallel replicas (silently wrong).
* ``gradient_clipping`` defaults to 1.0 in DeepSpeed: always written explicitly from the config.
* ``torch_adam`` uses torch's AdamW: no DeepSpeed op is compiled (FusedAdam / cpu_adam build for minutes).
* On the CPU accelerator every initialize would compile the shared-memory comm op (inference-only).
"""
from __future__ import annotations

import dataclasses
import math
from typing import Callable

import torch

from .config import ConfigError, RunConfig
from .config import _merge as deep_merge


class MegatronMPU:
    """The mpu contract DeepSpeed reads, answered from megatron's parallel_state (PP = 1).

    Deliberately no ``initialize_sequence_parallel``: its mere presence switches DeepSpeed into its
    sequence-parallel mode.
    """

    def __init__(self):
        from megatron.core import parallel_state

        self._ps = parallel_state

    def get_model_parallel_rank(self) -> int:
        return self._ps.get_tensor_model_parallel_rank()

    def get_model_parallel_world_size(self) -> int:
        return self._ps.get_tensor_model_parallel_world_size()

    def get_model_parallel_group(self):
        return self._ps.get_tensor_model_parallel_group()

    # the same answers under the newer names, which DeepSpeed's universal-checkpoint loader asks for
    get_tensor_model_parallel_rank = get_model_parallel_rank
    get_tensor_model_parallel_world_size = get_model_parallel_world_size

    def get_data_parallel_group(self):
        return self._ps.get_data_parallel_group()

    def get_data_parallel_world_size(self) -> int:
        return self._ps.get_data_parallel_world_size()


def lr_lambda(cfg: RunConfig) -> Callable[[int], float]:
    """LR multiplier for the update with 0-based index ``step``: linear warmup, then cosine to min_lr.

    A pure function of the step, so a resumed run (DeepSpeed restores the scheduler's step) continues
    exactly.
    """
    s, o = cfg.schedule, cfg.optimizer
    warmup = s.warmup_steps
    decay_end = s.decay_steps or s.train_steps
    floor = o.min_lr / o.lr

    def fn(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        if s.decay_style == "constant":
            return 1.0
        progress = min(1.0, (step - warmup) / max(1, decay_end - warmup))
        return floor + (1.0 - floor) * 0.5 * (1.0 + math.cos(math.pi * progress))

    return fn


def ds_config(cfg: RunConfig, world_size: int, load_universal: bool = False) -> dict:
    """The DeepSpeed JSON config, generated from the run config (no separate file to drift), with
    ``parallel.deepspeed_overrides`` deep-merged in (checked by :func:`check_deepspeed_overrides`).

    ``load_universal``: the resumed checkpoint is a universal one (another layout, pretrain/elastic.py)."""
    dp = cfg.data_parallel_size(world_size)
    s, o = cfg.schedule, cfg.optimizer
    bf16 = cfg.precision == "bf16"
    zero = {"stage": cfg.parallel.zero_stage}
    conf = {
        "train_batch_size": s.global_batch_size,
        "train_micro_batch_size_per_gpu": s.micro_batch_size,
        "gradient_accumulation_steps": cfg.grad_accum_steps(world_size),
        "gradient_clipping": o.grad_clip,  # explicit: DeepSpeed's default is 1.0
        "zero_optimization": zero,
        "optimizer": {
            "type": "AdamW",
            "params": {"lr": o.lr, "betas": [o.beta1, o.beta2], "eps": o.eps, "weight_decay": o.weight_decay,
                       "torch_adam": True},  # torch's AdamW: no compiled DeepSpeed op
        },
        "bf16": {"enabled": bf16},
        "steps_per_print": 10 ** 9,  # our own progress line instead of DeepSpeed's
        "wall_clock_breakdown": False,
    }
    if bf16:
        # skip mode: let the ZeRO optimizers detect a non-finite gradient norm and drop the update
        conf["bf16"]["check_grad_overflow"] = cfg.on_nonfinite == "skip"
        if cfg.parallel.zero_stage > 0:
            # accumulate / reduce gradients in fp32 (stage 0 with bf16 supports only bf16 accumulation)
            conf["data_types"] = {"grad_accum_dtype": "fp32"}
    if load_universal:
        conf["checkpoint"] = {"load_universal": True}
    assert conf["train_batch_size"] == s.micro_batch_size * conf["gradient_accumulation_steps"] * dp
    return deep_merge(conf, cfg.parallel.deepspeed_overrides)


class _ReadKeys(dict):
    """A config dict that records which top-level keys DeepSpeed looks up (copies share the record)."""

    def __init__(self, *a, **k):
        super().__init__(*a, **k)
        self.read = set()

    def __getitem__(self, key):
        self.read.add(key)
        return super().__getitem__(key)

    def get(self, key, *default):
        self.read.add(key)
        return super().get(key, *default)

    def __contains__(self, key):
        self.read.add(key)
        return super().__contains__(key)


def _deepspeed_error(e: Exception, key: str) -> str:
    import pydantic

    if isinstance(e, pydantic.ValidationError):  # DeepSpeed's sub-configs: name the nested key
        return "; ".join(f"parallel.deepspeed_overrides.{'.'.join([key, *map(str, err['loc'])])}: {err['msg']}"
                         for err in e.errors())
    return f"parallel.deepspeed_overrides.{key}: {type(e).__name__}: {e}"


def check_deepspeed_overrides(cfg: RunConfig, world_size: int) -> None:
    """Let DeepSpeed's own config parser judge ``parallel.deepspeed_overrides`` (before any process group): each
    top-level key merged alone (so an error names it), then all together; a key DeepSpeed never reads is unknown
    to it. Raises ConfigError naming ``parallel.deepspeed_overrides.<key>``."""
    overrides = cfg.parallel.deepspeed_overrides
    if not overrides:
        return
    import deepspeed
    from deepspeed.runtime.config import DeepSpeedConfig

    # without a process group DeepSpeedConfig checks the batch sizes for one process: give it this run's per-rank
    # numbers (the batch keys are the trainer's own, refused as overrides)
    base = ds_config(dataclasses.replace(cfg, parallel=dataclasses.replace(cfg.parallel, deepspeed_overrides={})),
                     world_size)
    base["train_batch_size"] = base["train_micro_batch_size_per_gpu"] * base["gradient_accumulation_steps"]
    for key in overrides:
        conf = _ReadKeys(deep_merge(base, {key: overrides[key]}))
        try:
            DeepSpeedConfig(conf)
        except Exception as e:  # DeepSpeed raises ValueError, AssertionError, pydantic errors, its own ...
            raise ConfigError(_deepspeed_error(e, key) + f" (DeepSpeed {deepspeed.__version__}'s config check; see "
                              "https://www.deepspeed.ai/docs/config-json/)") from None
        if key not in conf.read:
            raise ConfigError(f"parallel.deepspeed_overrides.{key}: DeepSpeed {deepspeed.__version__} does not read "
                              f"a config key {key!r} (misspelt, or from another version; see "
                              f"https://www.deepspeed.ai/docs/config-json/)")
    try:
        DeepSpeedConfig(deep_merge(base, overrides))
    except Exception as e:
        raise ConfigError(f"parallel.deepspeed_overrides: together these keys fail DeepSpeed "
                          f"{deepspeed.__version__}'s config check: {type(e).__name__}: {e}") from None


def param_groups(model: torch.nn.Module, weight_decay: float) -> list[dict]:
    """AdamW groups: no weight decay on 1-D parameters (norm scales)."""
    decay, no_decay = [], []
    for p in model.parameters():
        if p.requires_grad:
            (no_decay if p.ndim < 2 else decay).append(p)
    groups = [{"params": decay, "weight_decay": weight_decay}]
    if no_decay:
        groups.append({"params": no_decay, "weight_decay": 0.0})
    return groups


def _disable_cpu_only_ops() -> None:
    """On the CPU accelerator, stop DeepSpeed from compiling its shared-memory comm op (inference-only,
    ~2 minutes per fresh machine). No effect on CUDA."""
    import deepspeed
    from deepspeed.accelerator import get_accelerator

    if get_accelerator().device_name() == "cpu":
        deepspeed.ops.__compatible_ops__["deepspeed_shm_comm"] = False


def build_engine(cfg: RunConfig, model: torch.nn.Module, world_size: int, load_universal: bool = False):
    """``deepspeed.initialize`` with megatron's groups, AdamW (torch) and the warmup+cosine schedule."""
    import deepspeed

    _disable_cpu_only_ops()
    fn = lr_lambda(cfg)
    engine, _, _, _ = deepspeed.initialize(
        model=model,
        model_parameters=param_groups(model, cfg.optimizer.weight_decay),
        config=ds_config(cfg, world_size, load_universal),
        mpu=MegatronMPU(),
        lr_scheduler=lambda opt: torch.optim.lr_scheduler.LambdaLR(opt, fn),
        dist_init_required=False,
    )
    return engine
