"""Tensor parallelism in the HF interop: a TP=2 megatron model (real 2-process gloo group) exported from its
per-rank state dicts, and a dense HF model imported (upcycled) into a TP=2 VersatileFFN model and exported back."""
import os

import pytest
import torch

from helpers.procs import torchrun

os.environ["HF_HUB_OFFLINE"] = "1"
from helpers.hf import batch, build, dense_hf_model, gpt_config, vffn_config  # noqa: E402

TOL = 1e-4


@pytest.fixture(scope="module")
def tp2(tmp_path_factory):
    """Run tests/scripts/hf_tp_export.py once on 2 ranks; returns (dir, results, dense HF model, upcycled sd)."""
    from vffn_hf.convert import from_hf_config, hf_to_megatron

    d = tmp_path_factory.mktemp("hf_tp2")
    dense = dense_hf_model()
    upcycled = hf_to_megatron(dense.state_dict(), *from_hf_config(dense.config), target_vffn=vffn_config())
    torch.save(upcycled, d / "upcycled.pt")
    torchrun("tests/scripts/hf_tp_export.py", 2, str(d), str(d / "upcycled.pt"), timeout=400)
    return d, torch.load(d / "results.pt"), dense, upcycled


def _merged(d, what):
    from vffn_hf.convert import merge_tp_shards

    return merge_tp_shards([torch.load(d / f"{what}_rank{r}.pt") for r in range(2)])


def _export_load(sd, kind, out):
    from transformers import AutoModelForCausalLM

    from vffn_hf.convert import megatron_to_hf
    from vffn_hf.export import save_hf_folder

    m, v = gpt_config(), vffn_config() if kind == "vffn" else None
    save_hf_folder(out, megatron_to_hf(sd, m, v), m, v)
    return AutoModelForCausalLM.from_pretrained(out, trust_remote_code=True).eval()


@pytest.mark.parametrize("kind", ["vffn", "dense"])
def test_tp2_export_matches_tp1_and_tp2_megatron(tp2, megatron_tp1, tmp_path, kind):
    from vffn_hf.convert import merge_tp_shards
    from vffn_hf.parity import hf_greedy, megatron_greedy, megatron_logits

    d, res, _, _ = tp2
    merged = _merged(d, kind)
    tp1 = build(kind, tp=1)
    # megatron's CPU init: same global weights at any TP, so the de-interleaved merge must reproduce TP=1 exactly
    tp1_sd = merge_tp_shards([tp1.state_dict()])
    assert set(merged) == set(tp1_sd)
    for k, v in tp1_sd.items():
        assert torch.equal(merged[k], v), f"{k}: merged TP=2 shards differ from the TP=1 weights"

    hf = _export_load(merged, kind, tmp_path / "hf")
    tokens = batch()
    with torch.no_grad():
        logits = hf(tokens).logits
    diff_tp2 = (logits - res[f"{kind}_logits"]).abs().max().item()
    diff_tp1 = (logits - megatron_logits(tp1, tokens)).abs().max().item()
    print(f"[parity] {kind} TP=2 export: max abs logit diff vs TP=2 megatron {diff_tp2:.3e}, vs TP=1 {diff_tp1:.3e}")
    assert diff_tp2 <= TOL and diff_tp1 <= TOL
    if kind == "vffn":
        assert (res["vffn_depth_counts"] > 0).sum() >= 2
        assert torch.equal(hf_greedy(hf, tokens[:, :8], 32), res["vffn_greedy"])
        assert torch.equal(megatron_greedy(tp1, tokens[:, :8], 32), res["vffn_greedy"])


def _dense_weights_reproduced(dense_sd, vffn_hf_sd):
    """Every dense tensor comes back bit for bit; the dense post-attention norm is the block's own norm."""
    for k, v in dense_sd.items():
        k2 = k.replace("post_attention_layernorm", "mlp.norm")
        assert torch.equal(vffn_hf_sd[k2], v), f"{k} changed in the round trip"
    extra = set(vffn_hf_sd) - {k.replace("post_attention_layernorm", "mlp.norm") for k in dense_sd}
    assert extra == {f"model.layers.{i}.mlp.{n}.weight" for i in range(2) for n in ("router", "depth_router")}


def test_upcycle_tp2_round_trip_and_parity(tp2, megatron_tp1, tmp_path):
    from vffn_hf.convert import megatron_to_hf

    d, res, dense, upcycled = tp2
    merged = _merged(d, "upcycled")
    for k, v in upcycled.items():  # through split_tp -> a real TP=2 model -> its state dicts -> merge
        assert torch.equal(merged[k], v), k
    hf = _export_load(merged, "vffn", tmp_path / "hf")
    _dense_weights_reproduced(dense.state_dict(), hf.state_dict())
    _dense_weights_reproduced(dense.state_dict(), megatron_to_hf(merged, gpt_config(), vffn_config()))
    with torch.no_grad():
        diff = (hf(batch()).logits - res["upcycled_logits"]).abs().max().item()
    print(f"[parity] upcycled TP=2 -> HF: max abs logit diff {diff:.3e}")
    assert diff <= TOL
