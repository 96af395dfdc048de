"""VersatileFFN for megatron-core: the block, its layer specs and the runtime helpers around them."""
from .config import VersatileFFNConfig, VFFNConfigError
from .specs import get_dense_layer_spec, get_layer_spec, get_vffn_mlp_spec
from .versatile_ffn import VersatileFFN, VersatileFFNSubmodules
from .runtime import init_distributed, init_megatron, set_vffn_step, vffn_modules
from .model import GPTConfig, build_gpt_model, transformer_config
from .baselines import KLoopConfig, KLoopFFN, MoEConfig, get_kloop_layer_spec, get_moe_layer_spec

__all__ = [
    "VersatileFFNConfig", "VFFNConfigError", "VersatileFFN", "VersatileFFNSubmodules",
    "get_layer_spec", "get_dense_layer_spec", "get_vffn_mlp_spec",
    "init_distributed", "init_megatron", "set_vffn_step", "vffn_modules",
    "GPTConfig", "build_gpt_model", "transformer_config",
    "KLoopConfig", "KLoopFFN", "MoEConfig", "get_kloop_layer_spec", "get_moe_layer_spec",
]
