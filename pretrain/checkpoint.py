"""Checkpoints: DeepSpeed engine files per step, ``latest`` moved only after a complete write.

Layout (DeepSpeed's own, so its tools - zero_to_fp32, ds_to_universal - work on it)::

    <dir>/step_00000100/   mp_rank_XX_model_states.pt, *optim_states.pt (DeepSpeed), config.yaml, layout.json
    <dir>/latest           text file with the tag of the newest *complete* checkpoint

A save writes the step directory on every rank, waits for all ranks, then rank 0 adds config.yaml /
layout.json and atomically replaces ``latest``. A run killed mid-save leaves ``latest`` on the previous
checkpoint. Stale directories newer than ``latest`` are deleted before a step is saved again.
"""
from __future__ import annotations

import json
import os
import re
import shutil
import signal
from dataclasses import dataclass
from typing import Optional

import torch.distributed as dist

from vffn_megatron.config import VersatileFFNConfig

from .config import ConfigError, RunConfig

LATEST = "latest"
# model.* keys that choose how the same function is computed, not the weights: may change on resume
MODEL_RUNTIME_KEYS = {"attention_backend"}
_TAG_RE = re.compile(r"^step_(\d+)$")


def tag_for(step: int) -> str:
    return f"step_{step:08d}"


def step_of(tag: str) -> Optional[int]:
    m = _TAG_RE.match(tag)
    return int(m.group(1)) if m else None


def read_latest(ckpt_dir: str) -> Optional[str]:
    path = os.path.join(ckpt_dir, LATEST)
    if not os.path.isfile(path):
        return None
    with open(path) as f:
        tag = f.read().strip()
    return tag or None


def _write_atomic(path: str, text: str) -> None:
    tmp = f"{path}.tmp.{os.getpid()}"
    with open(tmp, "w") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


@dataclass
class ResumePoint:
    load_dir: str
    tag: str

    @property
    def path(self) -> str:
        return os.path.join(self.load_dir, self.tag)


def resolve_resume(cfg: RunConfig) -> Optional[ResumePoint]:
    """Where to resume from (file checks only, before any process group): None = fresh start."""
    mode = cfg.checkpoint.resume
    if mode == "none":
        return None
    if mode == "auto":
        tag = read_latest(cfg.checkpoint_dir)
        if tag is None:
            return None
        point = ResumePoint(cfg.checkpoint_dir, tag)
    else:
        path = os.path.abspath(mode)
        if os.path.isfile(os.path.join(path, LATEST)):
            point = ResumePoint(path, read_latest(path))
        elif os.path.isdir(path):
            point = ResumePoint(os.path.dirname(path), os.path.basename(path))
        else:
            raise ConfigError(f"checkpoint.resume: {mode} is neither a checkpoint directory (with a '{LATEST}' file) "
                              f"nor a step directory; use auto, none or an existing path")
    if not os.path.isdir(point.path):
        raise ConfigError(f"checkpoint {point.path} (named by {os.path.join(point.load_dir, LATEST)}) does not exist")
    return point


def check_layout(point: ResumePoint, cfg: RunConfig, world_size: int) -> None:
    """A DeepSpeed checkpoint only loads into the same TP / DP / ZeRO layout: say so before starting."""
    path = os.path.join(point.path, "layout.json")
    if not os.path.isfile(path):
        return
    with open(path) as f:
        saved = json.load(f)
    now = layout(cfg, world_size)
    diff = {k: (saved.get(k), v) for k, v in now.items() if saved.get(k) != v}
    if diff:
        what = ", ".join(f"{k} {a} -> {b}" for k, (a, b) in diff.items())
        raise ConfigError(
            f"checkpoint {point.path} was written with a different parallel layout ({what}). Resume with the "
            f"original layout, or convert it: python -m deepspeed.checkpoint.ds_to_universal --input_folder "
            f"{point.path} --output_folder <dir> --inject_missing_state (data-parallel size changes only)")


def check_same_model(point: ResumePoint, cfg: RunConfig) -> None:
    """Resuming into a different architecture would fail deep inside DeepSpeed: compare the saved config."""
    path = os.path.join(point.path, "config.yaml")
    if not os.path.isfile(path):
        return
    import yaml

    with open(path) as f:
        saved = yaml.safe_load(f) or {}
    now = cfg.to_dict()
    diff = []
    for section in ("model", "vffn", "kloop", "moe"):
        a, b = saved.get(section) or {}, now.get(section) or {}
        if (a == {}) != (b == {}):
            diff.append(f"{section}: {'null' if not a else 'set'} -> {'null' if not b else 'set'}")
            continue
        # tau / aux coeff / recompute may change; the rest shapes the weights or the function
        keys = {"model": sorted((set(a) | set(b)) - MODEL_RUNTIME_KEYS), "vffn": VersatileFFNConfig.ARCH_FIELDS, "kloop": ["loops"],
                "moe": ["num_experts", "top_k"]}[section]
        diff += [f"{section}.{k} {a.get(k)!r} -> {b.get(k)!r}" for k in keys if a.get(k) != b.get(k)]
    if diff:
        raise ConfigError(f"checkpoint {point.path} holds a different model ({'; '.join(diff)}). Use another "
                          f"output_dir / checkpoint.dir, or checkpoint.resume=none to start from scratch")


def layout(cfg: RunConfig, world_size: int) -> dict:
    return {"tensor_model_parallel_size": cfg.parallel.tensor_model_parallel_size,
            "data_parallel_size": cfg.data_parallel_size(world_size), "zero_stage": cfg.parallel.zero_stage}


class Checkpointer:
    """Save / load / prune for one run. Every method is a collective: call it on all ranks."""

    def __init__(self, cfg: RunConfig, world_size: int):
        self.cfg, self.dir, self.world_size = cfg, cfg.checkpoint_dir, world_size
        self.rank = dist.get_rank()
        self.last_saved: Optional[int] = None  # step of the newest checkpoint of this run (or resumed from)

    def should_save(self, step: int, last_step: bool = False, forced: bool = False) -> bool:
        """Whether step ``step`` is saved: every checkpoint.interval steps, at the last step (save_at_end), or
        ``forced`` (a stop signal); never twice for one step. The same answer on every rank."""
        if self.last_saved == step:
            return False
        c = self.cfg.checkpoint
        return bool(forced or (c.interval and step % c.interval == 0) or (last_step and c.save_at_end))

    def maybe_save(self, engine, step: int, client_state, last_step: bool = False,
                   forced: bool = False) -> Optional[str]:
        """Save if :meth:`should_save` says so; ``client_state()`` builds the saved state. Returns the path."""
        if not self.should_save(step, last_step, forced):
            return None
        return self.save(engine, step, client_state())

    def save(self, engine, step: int, client_state: dict) -> str:
        tag = tag_for(step)
        path = os.path.join(self.dir, tag)
        if self.rank == 0:
            os.makedirs(self.dir, exist_ok=True)
            if os.path.isdir(path) and read_latest(self.dir) != tag:
                shutil.rmtree(path)  # left over from a run killed mid-save
        dist.barrier()
        engine.save_checkpoint(self.dir, tag=tag, client_state=client_state, save_latest=False)
        dist.barrier()  # every rank's files are written
        if self.rank == 0:
            with open(os.path.join(path, "config.yaml"), "w") as f:
                f.write(self.cfg.to_yaml())
            _write_atomic(os.path.join(path, "layout.json"), json.dumps(layout(self.cfg, self.world_size)))
            _write_atomic(os.path.join(self.dir, LATEST), tag)
            self._prune(step)
        dist.barrier()
        self.last_saved = step
        return path

    def _prune(self, latest_step: int) -> None:
        keep = self.cfg.checkpoint.keep_last
        if keep <= 0:
            return
        steps = sorted(s for s in (step_of(n) for n in os.listdir(self.dir)) if s is not None and s <= latest_step)
        for s in steps[:-keep]:
            shutil.rmtree(os.path.join(self.dir, tag_for(s)), ignore_errors=True)

    def load(self, engine, point: ResumePoint) -> dict:
        path, client_state = engine.load_checkpoint(point.load_dir, tag=point.tag, load_optimizer_states=True,
                                                    load_lr_scheduler_states=True)
        if path is None:
            raise RuntimeError(f"DeepSpeed could not load the checkpoint {point.path}")
        client_state = client_state or {}
        self.last_saved = int(client_state.get("step", 0))
        return client_state


class StopSignal:
    """SIGTERM / SIGUSR1 (SLURM pre-emption, torchrun shutdown) and SIGINT (Ctrl-C; torchrun forwards it) only
    set a flag; the training loop agrees on it across ranks after a step, saves a checkpoint and exits cleanly.
    A second Ctrl-C interrupts at once (KeyboardInterrupt), without saving."""

    SIGNALS = (signal.SIGTERM, signal.SIGUSR1, signal.SIGINT)

    def __init__(self):
        self.received: Optional[int] = None
        self._previous = {}

    def install(self) -> "StopSignal":
        for sig in self.SIGNALS:
            self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def _handle(self, signum, frame) -> None:
        if signum == signal.SIGINT and self.received is not None:
            raise KeyboardInterrupt  # the impatient second Ctrl-C
        self.received = signum

    def uninstall(self) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        self._previous.clear()
