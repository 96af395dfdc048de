"""Read the trainer's checkpoints into one full megatron state dict.

Layout (:mod:`pretrain.checkpoint` owns it: ``tag_for`` / ``step_of`` / ``LATEST`` / ``read_latest``):
``<dir>/step_XXXXXXXX/`` holds DeepSpeed's files plus the resolved run config (``config.yaml``) and
``layout.json`` and ``manifest.json`` (verified before anything is read); ``<dir>/latest`` names the newest
complete step. Per tensor-parallel rank r:

* ZeRO 0: the weights are ``mp_rank_{r:02d}_model_states.pt["module"]``;
* ZeRO 1-3: the fp32 master weights live in the optimizer partitions; DeepSpeed's ``zero_to_fp32`` gathers
  them. It globs every ``*_model_states.pt`` / ``*_optim_states.pt`` of a directory, i.e. it knows nothing
  about TP ranks, so it is pointed at a scratch directory holding links to one TP rank's files only.

The TP shards are then merged (:func:`vffn_hf.convert.merge_tp_shards`). No megatron import: exporting needs
no process group.
"""
from __future__ import annotations

import contextlib
import dataclasses
import io
import os
import re
import tempfile
from pathlib import Path
from typing import Dict, NamedTuple, Optional, Union

import torch
import yaml

from pretrain.checkpoint import LATEST, read_latest, step_of, tag_for, verify_step
from vffn_megatron.config import KLoopConfig, MoEConfig, VersatileFFNConfig
from vffn_megatron.model import GPTConfig

from .convert import ConversionError, StateDict, merge_tp_shards

_MP_RE = re.compile(r"mp_rank_(\d+)_model_states\.pt$")
SUPPORTED_ARCHS = ("vffn", "dense")


class CheckpointError(ValueError):
    """The checkpoint path or files are unusable; the message says what to fix."""


def _steps(d: Path) -> list:
    return sorted(s for s in (step_of(p.name) for p in d.iterdir() if p.is_dir()) if s is not None)


def resolve_step_dir(path: Union[str, os.PathLike], step: Optional[int] = None) -> Path:
    """The step directory named by a run directory, a checkpoint directory (with ``latest``) or a step directory."""
    p = Path(path)
    if not p.exists():
        raise CheckpointError(f"checkpoint {p} does not exist")
    if not p.is_dir():
        raise CheckpointError(f"checkpoint {p} is not a directory (pass the run's checkpoints/ directory or a "
                              f"step_XXXXXXXX directory in it)")
    own = step_of(p.name)
    if own is not None and (p / "config.yaml").is_file():
        if step is not None and own != step:
            raise CheckpointError(f"{p} is the checkpoint of step {own}, not --step {step}; pass its parent "
                                  f"directory to choose a step")
        return p
    if not (p / LATEST).is_file() and not _steps(p) and (p / "checkpoints").is_dir():
        p = p / "checkpoints"  # a run's output_dir
    steps = _steps(p)
    if step is not None:
        d = p / tag_for(step)
        if not d.is_dir():
            raise CheckpointError(f"no checkpoint of step {step} in {p}; available steps: {steps or 'none'}")
        return d
    tag = read_latest(str(p))
    if tag is not None:
        if not (p / tag).is_dir():
            raise CheckpointError(f"{p / LATEST} names {tag}, which does not exist")
        return p / tag
    if steps:
        raise CheckpointError(f"{p} has no '{LATEST}' file (an interrupted save?); choose one of the steps "
                              f"{steps} with --step")
    raise CheckpointError(f"{p} holds no trainer checkpoint (no '{LATEST}' file and no step_XXXXXXXX directories)")


def read_run_config(step_dir: Path, archs: tuple = SUPPORTED_ARCHS) -> dict:
    """The resolved run config saved with the checkpoint (config.yaml); its model.arch must be one of ``archs``
    (default: those with an HF counterpart)."""
    f = step_dir / "config.yaml"
    if not f.is_file():
        raise CheckpointError(f"{step_dir} has no config.yaml: not written by this project's trainer (or the save "
                              f"was interrupted); cannot tell the architecture")
    with open(f) as fh:
        cfg = yaml.safe_load(fh)
    if not isinstance(cfg, dict) or not isinstance(cfg.get("model"), dict):
        raise CheckpointError(f"{f} has no 'model' section")
    arch = cfg["model"].get("arch", "vffn")
    if arch not in archs:
        if archs == SUPPORTED_ARCHS:
            raise CheckpointError(f"model.arch {arch!r} cannot be exported to Hugging Face: supported are "
                                  f"{', '.join(SUPPORTED_ARCHS)} (the baselines' FFNs have no HF counterpart here)")
        raise CheckpointError(f"{f}: model.arch {arch!r} is not one of {', '.join(archs)}")
    if arch != "dense" and not isinstance(cfg.get(arch), dict):
        raise CheckpointError(f"{f}: model.arch is {arch} but the {arch} section is missing")
    return cfg


def ffn_block(cfg: dict):
    """The FFN block config a checkpoint's run config describes: None (dense), VersatileFFNConfig, KLoopConfig or
    MoEConfig (the fields that config class knows)."""
    arch = cfg["model"].get("arch", "vffn")
    cls = {"dense": None, "vffn": VersatileFFNConfig, "kloop": KLoopConfig, "moe": MoEConfig}[arch]
    return None if cls is None else _known_fields(cls, cfg[arch])


def tp_ranks(step_dir: Path) -> list:
    ranks = sorted({int(m.group(1)) for m in (_MP_RE.search(p.name) for p in step_dir.iterdir()) if m})
    if not ranks:
        raise CheckpointError(f"{step_dir} holds no DeepSpeed *mp_rank_XX_model_states.pt files")
    if ranks != list(range(len(ranks))):
        raise CheckpointError(f"{step_dir}: tensor-parallel ranks {ranks} are incomplete (missing files?)")
    return ranks


def _zero_stage(step_dir: Path, cfg: dict) -> int:
    stage = (cfg.get("parallel") or {}).get("zero_stage")
    if stage is None:
        raise CheckpointError(f"{step_dir}/config.yaml has no parallel.zero_stage")
    return int(stage)


def load_tp_rank(step_dir: Path, rank: int, zero_stage: int) -> StateDict:
    """One TP rank's (fp32 where available) parameters, as that rank's megatron state dict."""
    if zero_stage == 0:
        f = step_dir / f"mp_rank_{rank:02d}_model_states.pt"
        if not f.is_file():
            raise CheckpointError(f"{f} is missing")
        return dict(torch.load(f, map_location="cpu", weights_only=False)["module"])
    from deepspeed.utils.zero_to_fp32 import get_fp32_state_dict_from_zero_checkpoint

    pattern = f"mp_rank_{rank:02d}_"
    files = [p for p in step_dir.iterdir() if pattern in p.name and p.name.endswith(("_model_states.pt",
                                                                                       "_optim_states.pt"))]
    if not any(p.name.endswith("_optim_states.pt") for p in files):
        raise CheckpointError(f"{step_dir}: no ZeRO optimizer files for TP rank {rank} (ZeRO stage {zero_stage} "
                              f"keeps the fp32 weights there)")
    with tempfile.TemporaryDirectory(prefix="vffn_zero_") as tmp:
        tag_dir = Path(tmp) / step_dir.name
        tag_dir.mkdir()
        for p in files:
            os.symlink(p.resolve(), tag_dir / p.name)
        log = io.StringIO()
        try:
            with contextlib.redirect_stdout(log):  # zero_to_fp32 prints progress; keep it for errors only
                sd = get_fp32_state_dict_from_zero_checkpoint(tmp, tag=step_dir.name)
        except Exception as e:
            raise CheckpointError(f"DeepSpeed could not consolidate the ZeRO-{zero_stage} checkpoint {step_dir} "
                                  f"(TP rank {rank}): {type(e).__name__}: {e}\n{log.getvalue()[-2000:]}") from e
    return dict(sd)


class TrainerCheckpoint(NamedTuple):
    step_dir: Path
    config: dict  # the run config saved with it (config.yaml)
    model: GPTConfig  # vocab_size: the embedding's rows
    vffn: Optional[VersatileFFNConfig]  # None: the dense baseline
    state_dict: StateDict  # full (TP-merged) fp32 megatron state dict


def _known_fields(cls, values: dict):
    """``cls`` built from the keys of ``values`` it has (a config.yaml section may carry more)."""
    names = {f.name for f in dataclasses.fields(cls)}
    return cls(**{k: v for k, v in values.items() if k in names})


def load_checkpoint(path: Union[str, os.PathLike], step: Optional[int] = None,
                    verify: str = "full", archs: tuple = SUPPORTED_ARCHS) -> TrainerCheckpoint:
    """The architecture and full fp32 megatron state dict of a trainer checkpoint, checked against its manifest
    first (``verify``: full = sizes and crc32, size = sizes only; :func:`pretrain.checkpoint.verify_step`).
    ``archs``: the model.arch values accepted (``vffn`` is None for all but VersatileFFN: see :func:`ffn_block`)."""
    step_dir = resolve_step_dir(path, step)
    verdict = verify_step(str(step_dir), verify)
    if not verdict.ok:
        raise CheckpointError(f"checkpoint {step_dir} is damaged: {verdict.problem}. Export an older step "
                              f"(--step N; available: {_steps(step_dir.parent)}) or restore it from a backup")
    cfg = read_run_config(step_dir, archs)
    stage = _zero_stage(step_dir, cfg)
    ranks = tp_ranks(step_dir)
    configured_tp = (cfg.get("parallel") or {}).get("tensor_model_parallel_size", len(ranks))
    if configured_tp != len(ranks):
        raise CheckpointError(f"{step_dir}: config says TP={configured_tp} but the files are for {len(ranks)} rank(s)")
    shards = [load_tp_rank(step_dir, r, stage) for r in ranks]
    try:
        sd = merge_tp_shards(shards)
    except ConversionError as e:
        raise CheckpointError(f"{step_dir}: {e}") from e
    sd = {k: v.float() if v.is_floating_point() else v for k, v in sd.items()}
    emb = sd.get("embedding.word_embeddings.weight")
    if emb is None:
        raise CheckpointError(f"{step_dir}: no embedding.word_embeddings.weight in the checkpoint")
    vffn = _known_fields(VersatileFFNConfig, cfg["vffn"]) if cfg["model"].get("arch", "vffn") == "vffn" else None
    # vocab_size may be null in the config (derived from the tokenizer): the embedding says what was built
    model = _known_fields(GPTConfig, {**cfg["model"], "vocab_size": int(emb.shape[0])})
    return TrainerCheckpoint(step_dir, cfg, model, vffn, sd)


def tokenizer_path(cfg: dict) -> Optional[Path]:
    """The training tokenizer named by the run config (relative paths: to the working directory, as the trainer
    resolved them), or None when it cannot be found."""
    tok = (cfg.get("data") or {}).get("tokenizer")
    if not tok:
        return None
    p = Path(tok)
    return p if p.exists() else None


def summary(step_dir: Path, cfg: dict, model: GPTConfig) -> Dict[str, object]:
    par = cfg.get("parallel") or {}
    return {"step_dir": str(step_dir), "arch": cfg["model"].get("arch", "vffn"), "layers": model.num_layers,
            "hidden": model.hidden_size, "vocab": model.vocab_size, "tp": par.get("tensor_model_parallel_size"),
            "zero_stage": par.get("zero_stage"), "precision": cfg.get("precision")}
