"""A Hugging Face Llama folder -> a step-0 trainer checkpoint (any TP degree, any ZeRO stage) to continue from.

A dense model imports into every architecture (:mod:`vffn_hf.upcycle`, the same mapping as
``checkpoint.init_from``): into VersatileFFN / k-loop the dense FFN becomes the shared FFN and its post-attention
norm the block's own norm, into MoE the shared expert (routed experts: ``moe.upcycle_experts``); routers keep the
trainer's fresh initialisation (the run seed). Dense -> dense and VersatileFFN -> VersatileFFN copy everything.

The checkpoint is written by the trainer's own engine and Checkpointer (same files, config.yaml, layout.json,
``latest``), so ``python -m pretrain --config <same config>`` resumes it at step 0. DeepSpeed checkpoints only
resume in the layout they were written in: run the import with the process count of the training run.
With ``precision: bf16`` the weights enter as the model's bf16 parameters, from which DeepSpeed builds its fp32
master copy: an fp32 HF model is rounded to bf16 once (fp32 runs keep it bit for bit).
"""
from __future__ import annotations

import dataclasses
import os
from typing import Optional

from vffn_megatron.config import VersatileFFNConfig
from vffn_megatron.model import GPTConfig

from .convert import ConversionError, hf_to_megatron, load_into_megatron, query_groups, split_tp
from .upcycle import upcycle_dense

# GPTConfig fields that must agree between the HF model and the run config (vocab is checked separately).
_ARCH_FIELDS = ("num_layers", "hidden_size", "num_attention_heads", "num_query_groups", "ffn_hidden_size",
                "rotary_base", "norm_epsilon", "untie_embeddings_and_output_weights")


def check_compatible(hf: GPTConfig, hf_vffn: Optional[VersatileFFNConfig], run: GPTConfig,
                     run_vffn: Optional[VersatileFFNConfig], run_arch: str, source: str = "the HF model") -> None:
    """The run config must describe the architecture of ``source`` (the HF model, or a trainer checkpoint); the
    error lists the overrides that would."""
    fixes = []
    for name in _ARCH_FIELDS:
        a, b = (query_groups(hf), query_groups(run)) if name == "num_query_groups" else \
            (getattr(hf, name), getattr(run, name))
        same = abs(float(a) - float(b)) <= 1e-12 * max(1.0, abs(float(a))) if isinstance(a, float) or \
            isinstance(b, float) else a == b
        if not same:
            value = str(a).lower() if isinstance(a, bool) else a
            fixes.append(f"model.{name}={value}")
    if hf.vocab_size != run.vocab_size:
        fixes.append(f"model.vocab_size={hf.vocab_size}")
    if fixes:
        raise ConversionError(f"the run config does not describe {source}; add these overrides (and check the "
                              f"tokenizer is the model's): " + " ".join(fixes))
    if hf_vffn is not None and run_arch != "vffn":
        raise ConversionError(f"{source} is a VersatileFFN model but the run config has model.arch="
                              f"{run_arch}; use model.arch=vffn")
    if hf_vffn is not None and run_vffn is not None:
        diff = [k for k in VersatileFFNConfig.ARCH_FIELDS if getattr(hf_vffn, k) != getattr(run_vffn, k)]
        if diff:
            raise ConversionError(f"VersatileFFN hyper-parameters differ from {source}'s: "
                                  + " ".join(f"vffn.{k}={getattr(hf_vffn, k)}" for k in diff))


def import_hf(hf_dir: str, cfg, force: bool = False, log=print) -> str:
    """Collective (call on every rank of the launched group). Returns the written step directory."""
    import torch.distributed as dist
    from megatron.core import parallel_state as ps

    from pretrain.checkpoint import Checkpointer, read_latest
    from pretrain.checks import load_tokenizer, resolve_vocab_size
    from pretrain.data import data_signature
    from pretrain.engine import build_engine
    from pretrain.train import build_model, setup_parallel

    from .hf_io import read_hf_folder

    if read_latest(cfg.checkpoint_dir) is not None and not force:
        raise ConversionError(f"{cfg.checkpoint_dir} already holds a checkpoint ({read_latest(cfg.checkpoint_dir)}); "
                              f"importing would start that run over. Choose another output_dir / checkpoint.dir, "
                              f"or pass --force")
    _, hf_model, hf_vffn, hf_sd = read_hf_folder(hf_dir)
    vocab = resolve_vocab_size(cfg, load_tokenizer(cfg.data.tokenizer).vocab_size)
    run_model = dataclasses.replace(cfg.model.gpt(), vocab_size=vocab)
    check_compatible(hf_model, hf_vffn, run_model, cfg.vffn_or_none, cfg.model.arch)
    full = hf_to_megatron(hf_sd, hf_model, hf_vffn)
    del hf_sd
    fresh, what, upcycle = (), "copied", hf_vffn is None and cfg.model.arch != "dense"
    if hf_vffn is None:  # a dense model goes into every architecture
        experts = cfg.moe.upcycle_experts if cfg.moe is not None else "slices"
        full, fresh, what = upcycle_dense(full, hf_model, cfg.ffn_block, experts)

    world = setup_parallel(cfg)
    tp = cfg.parallel.tensor_model_parallel_size
    model = build_model(cfg, vocab)
    shard = split_tp(full, tp)[ps.get_tensor_model_parallel_rank()]
    del full
    load_into_megatron(model, shard, keep=tuple(fresh))
    engine = build_engine(cfg, model, world)
    state = {"step": 0, "consumed_samples": 0, "skipped_steps": 0, "data_signature": data_signature(cfg),
             "config": cfg.to_dict(), "imported_from": os.path.abspath(hf_dir),
             "upcycled": upcycle}
    path = Checkpointer(cfg, world).save(engine, 0, state)
    if dist.get_rank() == 0:
        log(f"imported {hf_dir} ({what}) into {path} (TP={tp}, ZeRO {cfg.parallel.zero_stage}, "
            f"{world} process(es)); continue training with the same config: it resumes at step 0")
    return path

