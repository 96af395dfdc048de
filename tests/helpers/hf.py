"""Shared setup of the HF interop tests (tests/test_hf_*.py) and their torchrun script (tests/scripts/hf_tp_export.py):
tiny models, one batch."""
import torch

SEED = 1234
VOCAB = 256


def gpt_config():
    from vffn_megatron import GPTConfig

    # GQA (2 query groups for 4 heads) exercises the qkv layout; a non-default rotary base exercises rope_theta.
    return GPTConfig(num_layers=2, hidden_size=64, num_attention_heads=4, num_query_groups=2, ffn_hidden_size=128,
                     seq_length=64, vocab_size=VOCAB, rotary_base=500)


def vffn_config():
    from vffn_megatron import VersatileFFNConfig

    return VersatileFFNConfig(num_experts=4, top_k=2, max_depth=3)


@torch.no_grad()
def sharpen(model, routers_only: bool = False):
    """Random init gives depth logits within ~0.1 of each other; scaled up, tokens choose several depths and the
    width mixes stop being ~uniform, so the parity checks see every code path. Larger output logits make
    greedy decoding less degenerate."""
    for name, p in model.named_parameters():
        if name.endswith("mlp.depth_router.weight"):
            p.mul_(30)
        elif name.endswith("mlp.router.weight"):
            p.mul_(10)
        elif name.startswith("output_layer") and not routers_only:
            p.mul_(20)


def build(kind: str, tp: int, seed: int = SEED, sharpened: bool = True):
    """A megatron GPTModel ('vffn' or 'dense') in eval mode; megatron's CPU init gives the same global weights at
    any TP for one seed."""
    from vffn_megatron import build_gpt_model, init_megatron

    init_megatron(tp, seed)
    model = build_gpt_model(gpt_config(), vffn_config() if kind == "vffn" else None, tensor_parallel_size=tp)
    if sharpened:
        sharpen(model)
    return model.eval()


def batch(n: int = 3, length: int = 40) -> torch.Tensor:
    return torch.randint(0, VOCAB, (n, length), generator=torch.Generator().manual_seed(7))


def depth_counts(model) -> torch.Tensor:
    """Tokens per chosen depth since the last call, summed over layers (VersatileFFN models)."""
    stats = [m.pop_stats() for m in model.modules() if hasattr(m, "pop_stats")]
    return sum(s["depth_counts"] for s in stats if s)


def dense_hf_model(seed=5):
    """A random dense Llama with the tiny test architecture; norms randomised too, so a norm mapped to the wrong
    place cannot go unnoticed."""
    from transformers import LlamaConfig, LlamaForCausalLM

    from vffn_hf.export import hf_config

    torch.manual_seed(seed)
    cfg: LlamaConfig = hf_config(gpt_config())
    model = LlamaForCausalLM(cfg).eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            p.copy_(torch.randn_like(p) * (0.3 if "norm" in name else 0.05) + (1.0 if "norm" in name else 0.0))
    return model
