"""Resuming a checkpoint at another parallel layout: data-parallel size, tensor-parallel size, ZeRO stage 1 <-> 2.

DeepSpeed's ZeRO files are partitions over the data-parallel ranks that wrote them (and megatron's weights are
split over the tensor-parallel ranks), so a checkpoint loads only into its own layout. For another layout it is
converted once into DeepSpeed's *universal* checkpoint (``deepspeed.checkpoint.ds_to_universal``: every
parameter's fp32 value and AdamW moments whole, under ``zero/<name>/``) and loaded with
``"checkpoint": {"load_universal": true}``: each rank cuts its own ZeRO partition and TP shard from the whole
tensors. Step, LR schedule, consumed samples and skipped steps travel in the model-states file as usual.

What our megatron checkpoints need first (on a staged copy of the model-states files; the checkpoint itself is
never changed):

* megatron's ``*._extra_state`` module entries (None without Transformer Engine) are dropped: the converter calls
  ``.float()`` on every module entry, and universal loading takes the weights from ``zero/``, not the module state;
* ``universal_checkpoint_info`` says how megatron split every parameter over TP ranks (read from the parameters'
  own ``tensor_model_parallel`` / ``partition_dim`` / ``partition_stride``): replicated (norms, routers), rows
  (``partition_dim`` 1), columns (0), or the gated fc1's two halves ``[gate_r; up_r]`` (stride 2).

The result is cached in ``<step dir>/universal/``: written in a temporary sibling and renamed into place with a
marker, so an interrupted conversion is redone, never half-used. Global rank 0 converts; every rank then learns
the outcome from one broadcast (no rank waits on a conversion that failed elsewhere).
"""
from __future__ import annotations

import argparse
import contextlib
import glob
import json
import os
import re
import shutil
import tempfile
from typing import Optional

import torch
import torch.distributed as dist

from .config import ConfigError, RunConfig

UNIVERSAL = "universal"  # <step dir>/universal/: the converted checkpoint (a DeepSpeed tag inside the step dir)
MARKER = "vffn_universal.json"
VERSION = 1  # bump when the conversion changes: older caches are redone
_TMP_PREFIX = ".universal_tmp_"
SUPPORTED_ZERO = (1, 2)  # ZeRO stages a layout change may start from and go to (either one: 1 <-> 2 works too)
_ZERO3_WHY = ("DeepSpeed 0.19.8 loads a universal checkpoint into ZeRO-3 with the optimizer state off (measured: "
              "a DP=2 -> DP=1 resume's loss 4e-3 away from the uninterrupted run two steps later) and cannot load a "
              "ZeRO-1/2 one into ZeRO-3 at all (it looks for ZeRO-3 model-state files)")


class LayoutChangeError(RuntimeError):
    """The checkpoint could not be converted for this layout; raised on every rank with the same message."""


_NAMES = {"data_parallel_size": "DP={}", "tensor_model_parallel_size": "TP={}", "zero_stage": "ZeRO-{}"}


def describe(layout: dict, keys=tuple(_NAMES)) -> str:
    return ", ".join(_NAMES[k].format(layout.get(k)) for k in keys)


def _processes(layout: dict):
    try:
        return int(layout["data_parallel_size"]) * int(layout["tensor_model_parallel_size"])
    except (KeyError, TypeError, ValueError):
        return "DP x TP"


def layout_change(saved: dict, now: dict, path: str) -> Optional[str]:
    """None when ``saved`` equals ``now`` (the exact, ordinary load); else a description of the change when it can
    be converted; raises ConfigError naming what cannot."""
    keys = ("data_parallel_size", "tensor_model_parallel_size", "zero_stage")
    if all(saved.get(k) == now.get(k) for k in keys):
        return None
    stages = (saved.get("zero_stage"), now.get("zero_stage"))
    if any(s not in SUPPORTED_ZERO for s in stages):
        why = (_ZERO3_WHY if 3 in stages else "DeepSpeed's universal conversion reads ZeRO partition files, and "
               "ZeRO stage 0 writes none")
        raise ConfigError(
            f"checkpoint {path} was written at {describe(saved)}; this run is {describe(now)}. A layout change is "
            f"converted through DeepSpeed's universal checkpoint for ZeRO stages 1 and 2 only: {why}. Resume at "
            f"{describe(saved)} (parallel.zero_stage={saved.get('zero_stage')}, "
            f"parallel.tensor_model_parallel_size={saved.get('tensor_model_parallel_size')}, "
            f"{_processes(saved)} processes), or start a new run from its weights "
            f"(tools/export_hf.py, then tools/import_hf.py; the optimizer state, LR schedule and data position "
            f"restart)")
    changed = [k for k in _NAMES if saved.get(k) != now.get(k)]
    return f"a checkpoint written at {describe(saved, changed)} on {describe(now, changed)}"


def universal_info(model: torch.nn.Module) -> dict:
    """DeepSpeed's ``universal_checkpoint_info`` for a megatron model: how each parameter is split over TP ranks.

    Layer numbers are folded into one pattern per parameter kind (``decoder.layers.<n>.``)."""
    from deepspeed.checkpoint import constants as C

    kinds = {C.TP_REPLICATED_PARAMETER_PATTERNS: set(), C.PARAMETER_WITH_ROW_PARALLELISM_PATTERNS: set(),
             C.PARAMETER_WITH_2_SUB_PARAMS_CAT_DIM_0: set()}
    for name, p in model.named_parameters():
        pattern = "^" + re.sub(r"\\\.\d+\\\.", r"\\.\\d+\\.", re.escape(name)) + "$"
        if not getattr(p, "tensor_model_parallel", False):
            kinds[C.TP_REPLICATED_PARAMETER_PATTERNS].add(pattern)
        elif getattr(p, "partition_dim", 0) == 1:
            kinds[C.PARAMETER_WITH_ROW_PARALLELISM_PATTERNS].add(pattern)
        elif getattr(p, "partition_stride", 1) == 2:  # megatron's gated fc1: each rank holds [gate_r; up_r]
            kinds[C.PARAMETER_WITH_2_SUB_PARAMS_CAT_DIM_0].add(pattern)
        elif getattr(p, "partition_stride", 1) != 1:
            raise LayoutChangeError(f"parameter {name} is split over TP ranks with stride "
                                    f"{p.partition_stride}, which the universal conversion cannot merge")
        # column-parallel (partition_dim 0, stride 1): DeepSpeed's default, concatenated along dim 0
    info = {k: sorted(v) for k, v in kinds.items()}
    info[C.UNIVERSAL_CHECKPOINT_VERSION_KEY] = C.UNIVERSAL_CHECKPOINT_VERSION_VALUE
    return info


def _cached(step_dir: str) -> bool:
    try:
        with open(os.path.join(step_dir, UNIVERSAL, MARKER)) as f:
            return json.load(f).get("version") == VERSION
    except (OSError, ValueError, AttributeError):
        return False


def _stage_inputs(step_dir: str, staged: str, info: dict) -> None:
    """``staged``: the step's model-states files without megatron's ``_extra_state`` entries and with ``info``; its
    ZeRO optimizer files linked (copied where links are not possible)."""
    from deepspeed.checkpoint.constants import UNIVERSAL_CHECKPOINT_INFO

    os.makedirs(staged)
    for path in sorted(glob.glob(os.path.join(step_dir, "*_model_states.pt"))):
        sd = torch.load(path, map_location="cpu", weights_only=False)
        module = sd.get("module")
        if isinstance(module, dict):
            sd["module"] = type(module)((k, v) for k, v in module.items() if not k.endswith("._extra_state"))
        sd[UNIVERSAL_CHECKPOINT_INFO] = info
        torch.save(sd, os.path.join(staged, os.path.basename(path)))
    for path in sorted(glob.glob(os.path.join(step_dir, "*_optim_states.pt"))):
        target = os.path.join(staged, os.path.basename(path))
        try:
            os.symlink(os.path.abspath(path), target)
        except OSError:
            shutil.copy2(path, target)


def _full_shape(shape, p, tp: int) -> tuple:
    full = list(shape)
    if getattr(p, "tensor_model_parallel", False):
        full[getattr(p, "partition_dim", 0)] *= tp
    return tuple(full)


def _check_shapes(step_dir: str, model: torch.nn.Module, saved_tp: int, now_tp: int) -> None:
    """Every parameter's whole shape must be the checkpoint's (e.g. ``model.vocab_size: null`` pads the vocabulary
    to a multiple of make_vocab_size_divisible_by x TP, so a TP change can change it)."""
    from deepspeed.checkpoint.constants import PARAM_SHAPES

    sd = torch.load(os.path.join(step_dir, "mp_rank_00_model_states.pt"), map_location="cpu", weights_only=False)
    saved_shapes = {k: v for group in sd.get(PARAM_SHAPES) or [] for k, v in group.items()}
    for name, p in model.named_parameters():
        if name not in saved_shapes:
            raise LayoutChangeError(f"the checkpoint has no parameter {name}")
        was, now = _full_shape(saved_shapes[name], p, saved_tp), _full_shape(p.shape, p, now_tp)
        if was != now:
            raise LayoutChangeError(
                f"{name} is {list(was)} in the checkpoint and {list(now)} in this run"
                + (" (model.vocab_size: null pads the vocabulary to a multiple of model.make_vocab_size_divisible_by "
                   f"x TP: set model.vocab_size: {was[0]})" if "embedding" in name or "output_layer" in name else ""))


def convert(step_dir: str, model: torch.nn.Module, saved: dict, now_tp: int) -> str:
    """Write ``<step_dir>/universal`` (once: a complete cached conversion is reused). One process; returns it."""
    from deepspeed.checkpoint import ds_to_universal

    final = os.path.join(step_dir, UNIVERSAL)
    dp, tp = saved.get("data_parallel_size"), saved.get("tensor_model_parallel_size")
    missing = [f"zero_pp_rank_{d}_mp_rank_{t:02d}_optim_states.pt" for d in range(dp) for t in range(tp)
               if not glob.glob(os.path.join(step_dir, f"*zero_pp_rank_{d}_mp_rank_{t:02d}_optim_states.pt"))]
    if missing:  # a partial conversion would silently lose those ranks' optimizer state
        raise LayoutChangeError(f"{step_dir} lacks {', '.join(missing)} (written at {describe(saved)}, it must hold "
                                f"{dp * tp} ZeRO optimizer files)")
    _check_shapes(step_dir, model, tp, now_tp)
    if _cached(step_dir):
        return final
    for name in os.listdir(step_dir):  # conversions killed midway; an outdated or unmarked cache
        if name.startswith(_TMP_PREFIX):
            shutil.rmtree(os.path.join(step_dir, name), ignore_errors=True)
    shutil.rmtree(final, ignore_errors=True)
    tmp = tempfile.mkdtemp(prefix=_TMP_PREFIX, dir=step_dir)
    try:
        staged, out = os.path.join(tmp, "input"), os.path.join(tmp, UNIVERSAL)
        _stage_inputs(step_dir, staged, universal_info(model))
        args = argparse.Namespace(input_folder=staged, output_folder=out, num_extract_workers=1,
                                  num_merge_workers=1, keep_temp_folder=False, strict=True,
                                  inject_missing_state=False)
        os.makedirs(out)
        log_path = os.path.join(out, "conversion.log")
        try:
            with open(log_path, "w") as log, contextlib.redirect_stdout(log), contextlib.redirect_stderr(log):
                ds_to_universal.main(args)  # its latest_universal file lands in tmp, removed below
        except Exception as e:
            raise LayoutChangeError(_error_text(e, log_path)) from e
        with open(os.path.join(out, MARKER), "w") as f:
            json.dump({"version": VERSION, "source_layout": saved}, f)
        os.rename(out, final)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return final


def _error_text(e: BaseException, log: str) -> str:
    text = f"{type(e).__name__}: {e}" if str(e) else type(e).__name__
    try:
        with open(log, errors="replace") as f:
            tail = f.read()[-600:].strip()
    except OSError:
        tail = ""
    return text + (f" (converter output: ...{tail})" if tail else "")


def prepare(point, cfg: RunConfig, model: torch.nn.Module, world_size: int):
    """The checkpoint to load for ``point`` in this run's layout.

    A collective (call it on every rank, after the model is built, before the engine): the same layout returns
    ``point`` itself, touching nothing; another one converts on global rank 0 (or finds its cache) and returns
    ``ResumePoint(<step dir>, 'universal', universal=True)``. Raises LayoutChangeError on every rank when it fails."""
    from . import checkpoint as ckpt

    saved = ckpt.saved_layout(point)
    change = None if saved is None else layout_change(saved, ckpt.layout(cfg, world_size), point.path)
    if change is None:
        return point
    err, where = None, None
    if dist.get_rank() == 0:
        try:
            where = convert(point.path, model, saved, cfg.parallel.tensor_model_parallel_size)
        except Exception as e:  # any failure: every rank must learn it from the broadcast below
            err = str(e) if isinstance(e, LayoutChangeError) else f"{type(e).__name__}: {e}"
    box = [(err, where)]
    dist.broadcast_object_list(box, src=0)
    err, where = box[0]
    if err is not None:
        raise LayoutChangeError(
            f"resuming {change}: converting {point.path} to a universal checkpoint failed: {err}. Resume with the "
            f"original layout ({describe(saved)}), or start a new run from its weights (tools/export_hf.py, then "
            f"tools/import_hf.py)")
    if os.environ.get("LOCAL_RANK", "0") == "0" and dist.get_rank() == 0:
        print(f"resuming {change}: converted to a universal checkpoint in {where}", flush=True)
    return ckpt.ResumePoint(point.path, UNIVERSAL, universal=True)
