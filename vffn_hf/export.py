"""Write a Hugging Face model folder from an HF-named state dict (see :mod:`vffn_hf.convert`).

VersatileFFN models get ``configuration_vffn.py`` / ``modeling_vffn.py`` copied next to ``config.json`` and
registered through ``auto_map``, so ``AutoModelForCausalLM.from_pretrained(dir, trust_remote_code=True)`` needs
nothing but the folder; dense models become a plain ``LlamaForCausalLM`` folder (no custom code).
Weights are written with safetensors directly (no model instantiation: export costs one copy of the weights),
sharded with an index file above ``max_shard_size``, under the names ``from_pretrained`` expects.
"""
from __future__ import annotations

import json
import os
import re
import shutil
from pathlib import Path
from typing import Dict, Optional, Union

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


def save_hf_folder(out_dir: Union[str, os.PathLike], hf_sd: StateDict, model: GPTConfig,
                   vffn: Optional[VersatileFFNConfig] = None, dtype: str = "fp32",
                   tokenizer: Optional[Union[str, os.PathLike]] = None, max_shard_size: Union[int, str] = "2GB",
                   overwrite: bool = False) -> Path:
    """Write the complete folder: config.json, generation_config.json, weights, tokenizer, modeling code.
    ``model`` / ``vffn`` (None: dense) are the architecture ``hf_sd`` was converted for."""
    from transformers import GenerationConfig

    if dtype not in DTYPES:
        raise ValueError(f"dtype must be one of {sorted(DTYPES)}, got {dtype!r}")
    out = Path(out_dir)
    if out.exists() and any(out.iterdir()):
        if not overwrite:
            raise FileExistsError(f"output directory {out} is not empty; choose a new one or pass --overwrite"
                                  " (overwrite=True from Python)")
        shutil.rmtree(out)
    out.mkdir(parents=True, exist_ok=True)

    ids = tokenizer_special_ids(tokenizer) if tokenizer is not None else {}
    if ids and ids["vocab_size"] > model.vocab_size:
        raise ConversionError(f"tokenizer {tokenizer} has {ids['vocab_size']} tokens but the model only "
                              f"{model.vocab_size} embeddings: wrong tokenizer for this checkpoint")
    cfg = hf_config(model, vffn, dtype, ids)
    cfg.save_pretrained(out)
    GenerationConfig(bos_token_id=ids.get("bos"), eos_token_id=ids.get("eos"),
                     pad_token_id=ids.get("pad") if ids.get("pad") is not None else ids.get("eos")).save_pretrained(out)

    torch_dtype = DTYPES[dtype]
    weights: Dict[str, torch.Tensor] = {}
    for k, v in hf_sd.items():
        if k == "lm_head.weight" and not model.untie_embeddings_and_output_weights:
            continue  # tied: from_pretrained re-ties it to the embedding
        weights[k] = v.detach().to("cpu", torch_dtype if v.is_floating_point() else v.dtype)
    write_safetensors(weights, out, max_shard_size)

    if vffn is not None:
        for name in MODELING_FILES:
            shutil.copy2(HERE / name, out / name)
    if tokenizer is not None:
        copy_tokenizer(tokenizer, out)
    return out
