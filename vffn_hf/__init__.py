"""Hugging Face interop: the VersatileFFN-Llama HF model, megatron <-> HF conversion, export folders.

``configuration_vffn`` / ``modeling_vffn`` are self-contained (torch + transformers only) because they are
copied into exported folders; ``convert`` is pure tensor bookkeeping; ``export`` writes folders.
"""
from .convert import ConversionError, from_hf_config, hf_to_megatron, megatron_to_hf, merge_tp_shards, split_tp

__all__ = ["ConversionError", "from_hf_config", "hf_to_megatron", "megatron_to_hf", "merge_tp_shards", "split_tp"]
