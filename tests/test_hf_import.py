"""Hugging Face dense Llama -> megatron at TP=1 (in process): as a dense model (its logits equal the HF model's)
and upcycled into a VersatileFFN model (dense weights survive import + export bit for bit)."""
import os

import torch

os.environ["HF_HUB_OFFLINE"] = "1"
from helpers.hf import batch, build, dense_hf_model, depth_counts, gpt_config, sharpen, vffn_config  # noqa: E402

TOL = 1e-4


def _saved_dense(tmp_path):
    dense = dense_hf_model()
    dense.save_pretrained(tmp_path / "dense")
    return dense, tmp_path / "dense"


def test_dense_import_into_dense_megatron(megatron_tp1, tmp_path):
    from vffn_hf.convert import hf_to_megatron, load_into_megatron, megatron_to_hf
    from vffn_hf.hf_io import read_hf_folder
    from vffn_hf.parity import megatron_logits

    dense, path = _saved_dense(tmp_path)
    _, model, vffn, sd = read_hf_folder(path)
    assert model == gpt_config() and vffn is None
    mg = build("dense", tp=1, sharpened=False)
    load_into_megatron(mg, hf_to_megatron(sd, model))
    tokens = batch()
    with torch.no_grad():
        ref = dense(tokens).logits
    diff = (megatron_logits(mg, tokens) - ref).abs().max().item()
    print(f"[parity] HF dense -> megatron dense TP=1: max abs logit diff {diff:.3e}")
    assert diff <= TOL
    back = megatron_to_hf(mg.state_dict(), model)
    assert set(back) == set(dense.state_dict())
    for k, v in dense.state_dict().items():
        assert torch.equal(back[k], v), k


def test_upcycle_tp1_round_trip_and_parity(megatron_tp1, tmp_path):
    from transformers import AutoModelForCausalLM

    from vffn_hf.convert import hf_to_megatron, load_into_megatron, megatron_to_hf, router_keys
    from vffn_hf.export import save_hf_folder
    from vffn_hf.hf_io import read_hf_folder
    from vffn_hf.parity import megatron_logits

    dense, path = _saved_dense(tmp_path)
    _, model, vffn, sd = read_hf_folder(path)
    mg = build("vffn", tp=1, sharpened=False)
    fresh = {k: v.clone() for k, v in mg.state_dict().items() if k in router_keys(2)}
    load_into_megatron(mg, hf_to_megatron(sd, model, vffn, target_vffn=vffn_config()), keep=tuple(router_keys(2)))
    for k, v in fresh.items():  # routers keep the fresh initialisation
        assert torch.equal(mg.state_dict()[k], v)
    sharpen(mg, routers_only=True)

    target = (gpt_config(), vffn_config())
    out = save_hf_folder(tmp_path / "vffn", megatron_to_hf(mg.state_dict(), *target), *target)
    hf = AutoModelForCausalLM.from_pretrained(out, trust_remote_code=True).eval()
    hf_sd = hf.state_dict()
    for k, v in dense.state_dict().items():
        assert torch.equal(hf_sd[k.replace("post_attention_layernorm", "mlp.norm")], v), k

    tokens = batch()
    ref = megatron_logits(mg, tokens)
    assert (depth_counts(mg) > 0).sum() >= 2
    with torch.no_grad():
        diff = (hf(tokens).logits - ref).abs().max().item()
    print(f"[parity] upcycled TP=1 -> HF: max abs logit diff {diff:.3e}")
    assert diff <= TOL
