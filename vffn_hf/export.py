"""Write a Hugging Face model folder from an HF-named state dict (see :mod:`vffn_hf.convert`).

VersatileFFN models get ``configuration_vffn.py`` / ``modeling_vffn.py`` copied next to ``config.json`` and
registered through ``auto_map``, so ``AutoModelForCausalLM.from_pretrained(dir, trust_remote_code=True)`` needs
nothing but the folder; dense models become a plain ``LlamaForCausalLM`` folder (no custom code).
Weights are written with safetensors directly (no model instantiation: export costs one copy of the weights),
sharded with an index file above ``max_shard_size``, under the names ``from_pretrained`` expects.

A folder is written into a temporary sibling and renamed into place only when complete; its last file,
:data:`EXPORT_MARKER`, lists what the export consists of. ``overwrite`` replaces only such a folder, holding nothing
else, and never the checkpoint being exported or a directory containing it (:func:`check_output`).
:func:`vffn_hf.parity.verify_folder` checks a folder against its checkpoint.
"""
from __future__ import annotations

import json
import os
import re
import shutil
import tempfile
from pathlib import Path
from typing import Callable, Dict, Optional, Union

import torch

from vffn_megatron.config import VersatileFFNConfig
from vffn_megatron.model import GPTConfig

from .convert import ConversionError, StateDict, hf_config_fields

HERE = Path(__file__).resolve().parent
AUTO_MAP = {
    "AutoConfig": "configuration_vffn.VersatileFFNLlamaConfig",
    "AutoModel": "modeling_vffn.VersatileFFNLlamaModel",
    "AutoModelForCausalLM": "modeling_vffn.VersatileFFNLlamaForCausalLM",
}
MODELING_FILES = tuple(sorted({ref.split(".")[0] + ".py" for ref in AUTO_MAP.values()}))  # copied into the folder
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
# Tokenizer files AutoTokenizer reads; copied as they are when present.
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "tokenizer.model",
                   "added_tokens.json", "chat_template.jinja")


def parse_size(size: Union[int, str]) -> int:
    """Bytes from 1000000, "500MB", "2GB", "1.5GiB"."""
    if isinstance(size, int):
        return size
    m = re.fullmatch(r"\s*([0-9.]+)\s*([kKmMgGtT]i?[bB]?|[bB]?)\s*", str(size))
    if not m:
        raise ValueError(f"cannot parse size {size!r}: use e.g. 500MB, 2GB or a number of bytes")
    unit = m.group(2).upper().rstrip("B")
    base = 1024 if unit.endswith("I") else 1000
    power = {"": 0, "K": 1, "M": 2, "G": 3, "T": 4}[unit.rstrip("I")]
    return int(float(m.group(1)) * base ** power)


# ----------------------------------------------------------------------------------------- config
def hf_config(model: GPTConfig, vffn: Optional[VersatileFFNConfig] = None, dtype: str = "fp32",
              special_ids: Optional[dict] = None):
    """``LlamaConfig`` (dense: ``vffn`` None) or ``VersatileFFNLlamaConfig`` describing the megatron architecture."""
    from transformers import LlamaConfig

    from .configuration_vffn import VersatileFFNLlamaConfig

    ids = special_ids or {}
    kwargs = dict(
        hf_config_fields(model, vffn),
        # Llama's defaults (bos 1, eos 2) would be wrong for our tokenizers: only what the tokenizer says.
        bos_token_id=ids.get("bos"), eos_token_id=ids.get("eos"), pad_token_id=ids.get("pad"),
        dtype={"fp32": "float32", "bf16": "bfloat16", "fp16": "float16"}[dtype],
    )
    if vffn is None:
        cfg = LlamaConfig(**kwargs)
        cfg.architectures = ["LlamaForCausalLM"]
        return cfg
    cfg = VersatileFFNLlamaConfig(**kwargs)
    cfg.architectures = [AUTO_MAP["AutoModelForCausalLM"].split(".")[1]]
    cfg.auto_map = dict(AUTO_MAP)
    return cfg


# ----------------------------------------------------------------------------------------- tokenizer
def tokenizer_special_ids(path: Union[str, os.PathLike]) -> dict:
    """{"eos", "bos", "pad", "vocab_size"} of the training tokenizer (same resolution rules as the trainer)."""
    from vffn_data.tokenizer import load_tokenizer

    tok = load_tokenizer(path)
    return {"eos": tok.eod, "bos": tok.bos, "pad": tok.pad, "vocab_size": tok.vocab_size}


def copy_tokenizer(path: Union[str, os.PathLike], out_dir: Union[str, os.PathLike]) -> list:
    """Put AutoTokenizer-loadable files of the training tokenizer into ``out_dir``.

    The HF files written next to a sentencepiece model by tools/train_tokenizer.py are copied as they are; a
    sentencepiece model without them is converted with the data tools' own exporter (which is verified to
    encode identically).
    """
    src = Path(path)
    src_dir = src if src.is_dir() else src.parent
    if not src.exists():
        raise FileNotFoundError(f"tokenizer {src} does not exist: pass the directory written by tools/train_tokenizer.py")
    out = Path(out_dir)
    if (src_dir / "tokenizer.json").is_file():
        copied = []
        for name in TOKENIZER_FILES:
            if (src_dir / name).is_file():
                shutil.copy2(src_dir / name, out / name)
                copied.append(out / name)
        _complete_tokenizer_config(out)
        return copied
    models = [src] if src.is_file() and src.suffix == ".model" else sorted(src_dir.glob("*.model"))
    if len(models) != 1:
        raise FileNotFoundError(f"{src}: no tokenizer.json and not exactly one sentencepiece .model to convert")
    from vffn_data.tokenizer_train import export_hf

    return [Path(p) for p in export_hf(models[0], out)]


def _complete_tokenizer_config(out: Path) -> None:
    """Name the tokenizer class (and the special tokens the trainer resolved) in tokenizer_config.json.

    Without ``tokenizer_class`` AutoTokenizer falls back to the model config, which for a VersatileFFN folder
    means custom code: it would ask for trust_remote_code just to read a tokenizer.json."""
    from vffn_data.tokenizer import load_tokenizer

    f = out / "tokenizer_config.json"
    cfg = json.loads(f.read_text()) if f.is_file() else {}
    if "tokenizer_class" in cfg and f.is_file():
        return
    cfg.setdefault("tokenizer_class", "PreTrainedTokenizerFast")
    tok = load_tokenizer(out / "tokenizer.json")
    for key, tid in (("eos_token", tok.eod), ("bos_token", tok.bos), ("pad_token", tok.pad)):
        if tid is not None and key not in cfg:
            cfg[key] = tok.tok.id_to_token(tid)
    f.write_text(json.dumps(cfg, indent=2, ensure_ascii=False) + "\n")


# ----------------------------------------------------------------------------------------- weights
def write_safetensors(sd: StateDict, out_dir: Union[str, os.PathLike], max_shard_size: Union[int, str] = "2GB") -> list:
    """``model.safetensors``, or ``model-0000i-of-0000n.safetensors`` + ``model.safetensors.index.json``."""
    from safetensors.torch import save_file

    limit = parse_size(max_shard_size)
    shards, current, size = [], {}, 0
    for k in sorted(sd):  # stable order: layers stay together
        n = sd[k].numel() * sd[k].element_size()
        if current and size + n > limit:
            shards.append(current)
            current, size = {}, 0
        current[k] = sd[k].contiguous()
        size += n
    shards.append(current)
    out, meta = Path(out_dir), {"format": "pt"}
    if len(shards) == 1:
        save_file(shards[0], str(out / "model.safetensors"), metadata=meta)
        return [out / "model.safetensors"]
    names, weight_map = [], {}
    for i, shard in enumerate(shards, 1):
        name = f"model-{i:05d}-of-{len(shards):05d}.safetensors"
        save_file(shard, str(out / name), metadata=meta)
        names.append(out / name)
        weight_map.update({k: name for k in shard})
    total = sum(t.numel() * t.element_size() for t in sd.values())
    with open(out / "model.safetensors.index.json", "w") as f:
        json.dump({"metadata": {"total_size": total}, "weight_map": weight_map}, f, indent=2, sort_keys=True)
    return names


def export_weights(hf_sd: StateDict, model: GPTConfig, dtype: str = "fp32") -> Dict[str, torch.Tensor]:
    """The tensors an export stores for ``hf_sd``: floating tensors cast to ``dtype`` on the CPU, a tied
    ``lm_head.weight`` left out (from_pretrained re-ties it to the embedding). The export verification compares
    the written files against exactly this."""
    torch_dtype = DTYPES[dtype]
    weights: Dict[str, torch.Tensor] = {}
    for k, v in hf_sd.items():
        if k == "lm_head.weight" and not model.untie_embeddings_and_output_weights:
            continue
        weights[k] = v.detach().to("cpu", torch_dtype if v.is_floating_point() else v.dtype)
    return weights


# ----------------------------------------------------------------------------------------- output folder safety
# Written last into every export: names the files the export consists of. ``--overwrite`` replaces only a folder
# holding this marker and nothing but the files it lists.
EXPORT_MARKER = "vffn_export.json"
WRITTEN_BY = "vffn_hf.export"


class OutputFolderError(FileExistsError):
    """The output folder cannot be written or replaced safely; the message says why and what to do."""


def _run_dir_hint(path: Path) -> Path:
    """The run directory above a checkpoint path (``R`` for ``R/checkpoints/step_X``)."""
    p = path
    while p.parent != p and (p.name == "checkpoints" or p.name.startswith("step_")):
        p = p.parent
    return p


def check_not_protected(out: Union[str, os.PathLike], protect=()) -> None:
    """Refuse an output folder that is, or contains, one of ``protect`` (the checkpoint being exported)."""
    outr = Path(out).resolve()
    for p in protect:
        pr = Path(p).resolve()
        if pr == outr or outr in pr.parents:
            what = "is" if pr == outr else "contains"
            raise OutputFolderError(
                f"output directory {out} {what} the checkpoint {p}: exporting there would destroy it. Choose a "
                f"separate folder, e.g. --output {_run_dir_hint(pr) / 'hf'}")


def export_manifest(folder: Union[str, os.PathLike]) -> Optional[dict]:
    """The marker of an export written by :func:`save_hf_folder`, or None when ``folder`` has none (or another
    program wrote it)."""
    f = Path(folder) / EXPORT_MARKER
    try:
        data = json.loads(f.read_text())
    except (OSError, ValueError):
        return None
    if not isinstance(data, dict) or data.get("written_by") != WRITTEN_BY or not isinstance(data.get("files"), list):
        return None
    return data


def check_replaceable(out: Union[str, os.PathLike]) -> None:
    """``out`` may be deleted by ``--overwrite`` only if it is one of our exports and holds nothing else."""
    out = Path(out)
    if not out.is_dir():
        raise OutputFolderError(f"output {out} exists and is not a directory: choose another --output")
    entries = sorted(os.listdir(out))
    manifest = export_manifest(out)
    if manifest is None:
        shown = ", ".join(entries[:5]) + (f", ... ({len(entries)} entries)" if len(entries) > 5 else "")
        raise OutputFolderError(
            f"output directory {out} is not a Hugging Face export written by tools/export_hf.py (no {EXPORT_MARKER}; "
            f"it holds: {shown}). --overwrite only replaces such exports: choose a new --output, or move or delete "
            f"the folder yourself if you really mean to replace it")
    known = set(manifest["files"]) | {EXPORT_MARKER}
    unexpected = [e for e in entries if e not in known or not (out / e).is_file() or (out / e).is_symlink()]
    if unexpected:
        shown = ", ".join(unexpected[:5]) + (f", ... ({len(unexpected)} in all)" if len(unexpected) > 5 else "")
        raise OutputFolderError(
            f"output directory {out} is an export but also holds entries the export did not write: {shown}. "
            f"--overwrite would delete them: move them elsewhere (or choose a new --output) and rerun")


def check_output(out: Union[str, os.PathLike], overwrite: bool = False, protect=()) -> None:
    """May an export be written to ``out``? Absent or empty: yes; an earlier export: only with ``overwrite``;
    anything else, the checkpoint (``protect``) or a folder containing it: never."""
    out = Path(out)
    check_not_protected(out, protect)
    if out.exists() and not out.is_dir():
        raise OutputFolderError(f"output {out} exists and is not a directory: choose another --output")
    if out.exists() and any(out.iterdir()):
        if not overwrite:
            raise FileExistsError(f"output directory {out} is not empty; choose a new one or pass --overwrite"
                                  " (overwrite=True from Python)")
        check_replaceable(out)


def _swap_in(tmp: Path, out: Path) -> None:
    """Replace ``out`` (absent, empty or a checked export) by the complete folder ``tmp`` (same parent)."""
    if not out.exists():
        os.rename(tmp, out)
        return
    old = Path(tempfile.mkdtemp(prefix=f".{out.name}.old-", dir=out.parent))
    old.rmdir()
    os.rename(out, old)
    try:
        os.rename(tmp, out)
    except BaseException:
        os.rename(old, out)
        raise
    shutil.rmtree(old, ignore_errors=True)


def save_hf_folder(out_dir: Union[str, os.PathLike], hf_sd: StateDict, model: GPTConfig,
                   vffn: Optional[VersatileFFNConfig] = None, dtype: str = "fp32",
                   tokenizer: Optional[Union[str, os.PathLike]] = None, max_shard_size: Union[int, str] = "2GB",
                   overwrite: bool = False, protect=(), source: Optional[dict] = None,
                   before_swap: Optional[Callable[[Path], None]] = None) -> Path:
    """Write the complete folder: config.json, generation_config.json, weights, tokenizer, modeling code and the
    :data:`EXPORT_MARKER`. ``model`` / ``vffn`` (None: dense) are the architecture ``hf_sd`` was converted for.

    Safety: the folder is written into a temporary sibling and renamed into place only when complete (and after
    ``before_swap(tmp_dir)`` returned, e.g. a verification); a failure leaves ``out_dir`` as it was. A non-empty
    ``out_dir`` is replaced only with ``overwrite`` and only when it is one of our exports holding nothing else
    (:func:`check_replaceable`); ``out_dir`` may never be or contain a path of ``protect`` (the checkpoint).
    ``source`` (e.g. the checkpoint's step directory) is recorded in the marker."""
    from transformers import GenerationConfig

    if dtype not in DTYPES:
        raise ValueError(f"dtype must be one of {sorted(DTYPES)}, got {dtype!r}")
    out = Path(out_dir)
    check_output(out, overwrite, protect)

    ids = tokenizer_special_ids(tokenizer) if tokenizer is not None else {}
    if ids and ids["vocab_size"] > model.vocab_size:
        raise ConversionError(f"tokenizer {tokenizer} has {ids['vocab_size']} tokens but the model only "
                              f"{model.vocab_size} embeddings: wrong tokenizer for this checkpoint")
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.partial-", dir=out.parent))
    try:
        cfg = hf_config(model, vffn, dtype, ids)
        cfg.save_pretrained(tmp)
        GenerationConfig(bos_token_id=ids.get("bos"), eos_token_id=ids.get("eos"),
                         pad_token_id=ids.get("pad") if ids.get("pad") is not None else ids.get("eos")
                         ).save_pretrained(tmp)
        write_safetensors(export_weights(hf_sd, model, dtype), tmp, max_shard_size)
        if vffn is not None:
            for name in MODELING_FILES:
                shutil.copy2(HERE / name, tmp / name)
        if tokenizer is not None:
            copy_tokenizer(tokenizer, tmp)
        marker = {"written_by": WRITTEN_BY, "dtype": dtype, "files": sorted(os.listdir(tmp)), **(source or {})}
        (tmp / EXPORT_MARKER).write_text(json.dumps(marker, indent=2) + "\n")
        if before_swap is not None:
            before_swap(tmp)
        if out.exists():  # re-checked: nothing may have appeared in it meanwhile
            if any(out.iterdir()):
                check_replaceable(out)
        _swap_in(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out
