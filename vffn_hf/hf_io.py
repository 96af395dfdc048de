"""Read a Hugging Face model folder (config + safetensors / torch weights) without instantiating the model."""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Optional, Tuple, Union

import torch

from vffn_megatron.config import VersatileFFNConfig
from vffn_megatron.model import GPTConfig

from .convert import ConversionError, StateDict, from_hf_config


def read_hf_config(path: Union[str, os.PathLike]):
    """The folder's config as a transformers config object (the VersatileFFN class for model_type vffn_llama,
    without executing the folder's code)."""
    from transformers import LlamaConfig

    from .configuration_vffn import VersatileFFNLlamaConfig

    p = Path(path)
    cfg_file = p / "config.json"
    if not cfg_file.is_file():
        raise FileNotFoundError(f"{p}: no config.json - not a Hugging Face model folder")
    with open(cfg_file) as f:
        raw = json.load(f)
    kind = raw.get("model_type")
    if kind == VersatileFFNLlamaConfig.model_type:
        return VersatileFFNLlamaConfig.from_pretrained(p)
    if kind == "llama":
        return LlamaConfig.from_pretrained(p)
    raise ConversionError(f"{p}: model_type {kind!r} is not supported (expected 'llama' or "
                          f"'{VersatileFFNLlamaConfig.model_type}'); Llama-architecture models only")


def read_hf_weights(path: Union[str, os.PathLike]) -> StateDict:
    """All tensors of a folder: model.safetensors, a sharded safetensors index, or pytorch_model.bin (+ index)."""
    from safetensors.torch import load_file

    p = Path(path)
    for index_name, loader in (("model.safetensors.index.json", load_file),
                               ("pytorch_model.bin.index.json", _torch_load)):
        if (p / index_name).is_file():
            with open(p / index_name) as f:
                files = sorted(set(json.load(f)["weight_map"].values()))
            sd: StateDict = {}
            for name in files:
                sd.update(loader(str(p / name)))
            return sd
    if (p / "model.safetensors").is_file():
        return load_file(str(p / "model.safetensors"))
    if (p / "pytorch_model.bin").is_file():
        return _torch_load(str(p / "pytorch_model.bin"))
    raise FileNotFoundError(f"{p}: no model.safetensors, sharded safetensors index or pytorch_model.bin")


def _torch_load(path: str) -> StateDict:
    return torch.load(path, map_location="cpu", weights_only=True)


def read_hf_folder(path: Union[str, os.PathLike]) -> Tuple[object, GPTConfig, Optional[VersatileFFNConfig], StateDict]:
    """(HF config, GPTConfig, VersatileFFNConfig or None, fp32 state dict) of an HF Llama / VersatileFFN-Llama
    folder (see :func:`vffn_hf.convert.from_hf_config`)."""
    cfg = read_hf_config(path)
    sd = {k: v.float() if v.is_floating_point() else v for k, v in read_hf_weights(path).items()}
    return (cfg, *from_hf_config(cfg), sd)
