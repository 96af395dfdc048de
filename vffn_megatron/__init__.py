"""VersatileFFN for megatron-core: the block, its layer specs, baselines and the runtime helpers around them.

Names are imported lazily: ``from vffn_megatron.config import VersatileFFNConfig`` (and config validation in
the trainer) does not pay the ~10 s ``import megatron.core``; the first use of a megatron-backed name does.
"""
import importlib

_EXPORTS = {
    "VersatileFFNConfig": "config", "VFFNConfigError": "config",
    "GPTConfig": "model", "build_gpt_model": "model", "transformer_config": "model",
    "VersatileFFN": "versatile_ffn", "VersatileFFNSubmodules": "versatile_ffn",
    "get_layer_spec": "specs", "get_dense_layer_spec": "specs", "get_vffn_mlp_spec": "specs",
    "init_distributed": "runtime", "init_megatron": "runtime", "set_vffn_step": "runtime",
    "vffn_modules": "runtime",
    "KLoopConfig": "config", "KLoopFFN": "baselines", "MoEConfig": "config",
    "get_kloop_layer_spec": "baselines", "get_moe_layer_spec": "baselines",
}
__all__ = sorted(_EXPORTS)


def __getattr__(name):
    if name in _EXPORTS:
        value = getattr(importlib.import_module(f".{_EXPORTS[name]}", __name__), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'vffn_megatron' has no attribute {name!r}")


def __dir__():
    return __all__
