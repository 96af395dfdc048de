"""``checkpoint.init_from``: a fresh run starts from the weights of a trainer checkpoint (continued pretraining).

The source is a trainer checkpoint (run, checkpoints or step directory; any TP / ZeRO layout) of a dense model,
upcycled into the run's model.arch (:mod:`vffn_hf.upcycle`: the one dense -> {dense, kloop, moe, vffn} mapping),
or of the run's own model.arch, copied as it is. Only the weights come from it: tensors it lacks (routers, MoE
experts with ``moe.upcycle_experts=fresh``) keep the model's initialisation from the run seed; the optimizer, the
LR schedule, the step and the consumed samples start at 0. A checkpoint to resume (checkpoint.resume) wins: then
init_from is ignored, with a note.

Both phases run before any process group (``--check`` runs the first): :func:`check_init_from` (path, checkpoint
files, architecture: a dry run of the conversion on meta tensors) and :func:`load_init_from` (the weights, merged
over TP ranks, converted into the run's architecture; every rank then takes its TP shard: :meth:`InitPoint.apply`).
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Optional

import torch

from .config import ARCHS, ConfigError, RunConfig


@dataclass
class InitPoint:
    step_dir: str
    step: int  # the source run's step
    source_arch: str
    description: str  # "upcycled dense -> moe (experts: slices; fresh router)", "weights copied (...)"
    state_dict: dict = field(default_factory=dict, repr=False)  # full (TP=1) megatron state dict of the run's model
    fresh: tuple = ()  # the run model's tensors that keep their own initialisation

    def message(self) -> str:
        return f"initialised from {self.step_dir} (step {self.step} of a {self.source_arch} run): {self.description}"

    def apply(self, model: torch.nn.Module, tp_size: int, tp_rank: int) -> None:
        """Load this rank's TP shard into the megatron model (before DeepSpeed wraps it), then drop the weights."""
        from vffn_hf.convert import load_into_megatron, split_tp

        shard = split_tp(self.state_dict, tp_size)[tp_rank]
        self.state_dict = {}
        load_into_megatron(model, shard, keep=self.fresh)


def _error(msg: str) -> ConfigError:
    return ConfigError(f"checkpoint.init_from: {msg}")


def _source_model(cfg: RunConfig, src: dict, vocab: int):
    """The source's GPTConfig: vocab from its config when stated, else the run's (the embedding is checked on load)."""
    from vffn_megatron.model import GPTConfig

    names = {f.name for f in dataclasses.fields(GPTConfig)}
    values = {k: v for k, v in src["model"].items() if k in names}
    return GPTConfig(**{**values, "vocab_size": values.get("vocab_size") or vocab})


def _check_arch(cfg: RunConfig, src: dict, model, path: str) -> None:
    """The source's architecture fits the run (same-arch: the same block shape; dense: the upcycling works)."""
    from vffn_hf.convert import ConversionError, megatron_shapes
    from vffn_hf.trainer_ckpt import ffn_block
    from vffn_hf.trainer_import import check_compatible
    from vffn_hf.upcycle import upcycle_dense

    arch, run_arch = src["model"].get("arch", "vffn"), cfg.model.arch
    if arch not in ("dense", run_arch):
        raise _error(f"{path} is a {arch} model; a run of model.arch={run_arch} can start from a dense checkpoint "
                     f"(upcycled) or a {run_arch} checkpoint (copied). Use model.arch={arch} or another checkpoint")
    block = ffn_block(src)
    run_model = dataclasses.replace(cfg.model.gpt(), vocab_size=model.vocab_size)
    try:
        check_compatible(model, block if arch == "vffn" else None, run_model, cfg.vffn_or_none, run_arch,
                         source=f"the checkpoint {path}")
        if arch == run_arch == "moe":  # the fields that shape an MoE's weights
            F = model.ffn_hidden_size
            fixes = [f"moe.{k}={str(getattr(block, k)).lower()}" for k in ("num_experts", "shared_expert")
                     if getattr(block, k) != getattr(cfg.moe, k)]
            if block.expert_hidden(F) != cfg.moe.expert_hidden(F):
                fixes.append(f"moe.expert_ffn_hidden_size={block.expert_hidden(F)}")
            if fixes:
                raise ConversionError(f"the run's MoE differs from the checkpoint {path}'s; add these overrides: "
                                      + " ".join(fixes))
        if arch == "dense":  # a dry run of the upcycling, on meta tensors: its errors before anything is loaded
            meta = {k: torch.empty(s, device="meta") for k, s in megatron_shapes(model, None).items()}
            upcycle_dense(meta, model, cfg.ffn_block, cfg.moe.upcycle_experts if cfg.moe else "slices")
    except ConversionError as e:
        raise _error(str(e)) from None


def check_init_from(cfg: RunConfig, vocab: int) -> tuple[Path, dict]:
    """File and architecture checks of ``checkpoint.init_from`` (no weights read). Returns (step dir, its config)."""
    from pretrain.checkpoint import verify_step
    from vffn_hf.trainer_ckpt import CheckpointError, read_run_config, resolve_step_dir

    path = cfg.checkpoint.init_from
    try:
        step_dir = resolve_step_dir(path)
        verdict = verify_step(str(step_dir), cfg.checkpoint.verify)
        if not verdict.ok:
            raise CheckpointError(f"{step_dir} is damaged: {verdict.problem}; name an older step directory")
        src = read_run_config(step_dir, archs=ARCHS)
    except CheckpointError as e:
        raise _error(str(e)) from None
    _check_arch(cfg, src, _source_model(cfg, src, vocab), str(step_dir))
    return step_dir, src


def load_init_from(cfg: RunConfig, vocab: int) -> InitPoint:
    """The source's weights as a full state dict of the run's model (every check of :func:`check_init_from` first)."""
    from pretrain.checkpoint import step_of
    from vffn_hf.convert import ConversionError, _check, megatron_shapes
    from vffn_hf.trainer_ckpt import CheckpointError, load_checkpoint
    from vffn_hf.upcycle import upcycle_dense

    step_dir, src = check_init_from(cfg, vocab)
    try:  # verified above: sizes only here
        ck = load_checkpoint(step_dir, verify="size", archs=ARCHS)
    except CheckpointError as e:
        raise _error(str(e)) from None
    arch = src["model"].get("arch", "vffn")
    _check_arch(cfg, src, ck.model, str(step_dir))  # now with the embedding's vocabulary
    try:
        if arch == "dense":
            experts = cfg.moe.upcycle_experts if cfg.moe is not None else "slices"
            sd, fresh, what = upcycle_dense(ck.state_dict, ck.model, cfg.ffn_block, experts)
        else:
            _check(ck.state_dict, megatron_shapes(ck.model, cfg.ffn_block), f"the checkpoint {step_dir}")
            sd, fresh, what = ck.state_dict, [], f"weights copied ({arch} -> {arch})"
    except ConversionError as e:
        raise _error(str(e)) from None
    return InitPoint(str(step_dir), step_of(step_dir.name) or 0, arch, what, sd, tuple(fresh))


def prepare_init_from(cfg: RunConfig, vocab: int, resuming: bool, load: bool,
                      say: Callable[[str], None] = print) -> Optional[InitPoint]:
    """What ``python -m pretrain`` does with ``checkpoint.init_from`` before training: nothing when unset, a note
    when a checkpoint is resumed instead, the checks (``load=False``: --check) or the loaded weights."""
    if not cfg.checkpoint.init_from:
        return None
    if resuming:
        say(f"note: checkpoint.init_from={cfg.checkpoint.init_from} ignored: resuming from this run's own "
            f"checkpoint")
        return None
    if not load:
        check_init_from(cfg, vocab)
        return None
    return load_init_from(cfg, vocab)
