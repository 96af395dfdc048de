"""Upcycling a dense model into every architecture (vffn_hf/upcycle.py), in process at TP=1: what the upcycled model
computes at step 0, stated against the dense model's weights.

* dense (continued): the same logits, bit for bit;
* k-loop with one loop: the dense model's logits, bit for bit (another module, the same operations);
* VersatileFFN: each layer's block output equals the reference algorithm (vffn_megatron/reference.py) run on the
  dense FFN and norm with the model's fresh routers;
* MoE, experts = slices: each layer's MoE output equals dense_FFN(h) + sum over the top-k experts of
  softmax(top-k router logits)_e * slice_e(h), slice e being the dense FFN restricted to its hidden units
  [e*F/N, (e+1)*F/N), all computed from the dense weights (h: the layer's pre_mlp_layernorm output);
* MoE, experts = fresh: shared expert = the dense FFN, routed experts and router = the model's own seeded init.
Every tensor that is not fresh equals its dense source.
"""
import pytest
import torch
import torch.nn.functional as F

from vffn_megatron.reference import versatile_ffn

SEED = 11


def _gpt():
    from vffn_megatron import GPTConfig

    return GPTConfig(num_layers=2, hidden_size=64, num_attention_heads=4, num_query_groups=2, ffn_hidden_size=128,
                     seq_length=32, vocab_size=128)


def _build(block=None, seed=SEED):
    from vffn_megatron import build_gpt_model, init_megatron
    from vffn_megatron.config import KLoopConfig, MoEConfig

    init_megatron(1, seed)
    kw = {KLoopConfig: "kloop", MoEConfig: "moe"}.get(type(block), "vffn")
    return build_gpt_model(_gpt(), **({kw: block} if block is not None else {})).eval()


@pytest.fixture(scope="module")
def dense(megatron_tp1):
    """A dense model whose norms are random too (a norm mapped to the wrong place cannot go unnoticed)."""
    model = _build(None, seed=3)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "norm" in name:
                p.copy_(1 + 0.3 * torch.randn_like(p))
            elif name.startswith("output_layer"):
                p.mul_(20)
    return model


def _tokens():
    return torch.randint(0, 128, (2, 33), generator=torch.Generator().manual_seed(5))[:, :-1]


def _logits(model):
    with torch.no_grad():
        return model(_tokens(), torch.arange(32)[None].expand(2, -1), None)


def _mlp_io(model):
    """(input, output) of every layer's MLP module in one forward of the test batch."""
    seen = []
    hooks = [layer.mlp.register_forward_hook(lambda m, a, out: seen.append((a[0].detach().clone(), out[0].detach().clone())))
             for layer in model.decoder.layers]
    _logits(model)
    for h in hooks:
        h.remove()
    return seen


def _upcycled(dense, block, experts="slices"):
    from vffn_hf.convert import load_into_megatron
    from vffn_hf.upcycle import upcycle_dense

    up = upcycle_dense(dense.state_dict(), _gpt(), block, experts)
    model = _build(block)
    before = {k: v.clone() for k, v in model.state_dict().items() if k in up.fresh}
    load_into_megatron(model, up.state_dict, keep=tuple(up.fresh))
    after = model.state_dict()
    assert all(torch.equal(after[k], v) for k, v in before.items())  # fresh tensors keep the seeded init
    return model, up


def _swiglu(h, fc1, fc2):
    gate, up = fc1.chunk(2, dim=0)
    return F.linear(F.silu(F.linear(h, gate)) * F.linear(h, up), fc2)


def test_dense_continued_is_the_dense_model(dense):
    model, up = _upcycled(dense, None)
    assert up.fresh == [] and up.description == "weights copied (dense -> dense)"
    assert torch.equal(_logits(model), _logits(dense))


def test_kloop_one_loop_is_the_dense_model(dense):
    from vffn_megatron.config import KLoopConfig

    model, up = _upcycled(dense, KLoopConfig(loops=1))
    assert up.fresh == [] and up.description == "upcycled dense -> kloop"
    assert torch.equal(_logits(model), _logits(dense))  # the same operations on the same weights


def test_vffn_block_is_the_reference_on_the_dense_ffn(dense):
    from vffn_megatron.config import VersatileFFNConfig

    v = VersatileFFNConfig(num_experts=4, top_k=2, max_depth=3)
    model, up = _upcycled(dense, v)
    assert sorted(up.fresh) == sorted(f"decoder.layers.{i}.mlp.{n}.weight" for i in range(2)
                                      for n in ("router", "depth_router"))
    with torch.no_grad():  # routers sharp enough that tokens pick several depths and distinct sub-experts
        for layer in model.decoder.layers:
            layer.mlp.router.weight.mul_(10)
            layer.mlp.depth_router.weight.mul_(30)
    sd = dense.state_dict()
    for i, (x, delta) in enumerate(_mlp_io(model)):
        p, blk = f"decoder.layers.{i}.", model.decoder.layers[i].mlp
        Wg, Wu = sd[p + "mlp.linear_fc1.weight"].chunk(2, dim=0)
        ref = versatile_ffn(x.reshape(-1, 64), Wg, Wu, sd[p + "mlp.linear_fc2.weight"],
                            sd[p + "pre_mlp_layernorm.weight"], blk.norm.eps, blk.router.weight,
                            blk.depth_router.weight, 4, 2, 3, train=False, routing_dtype=torch.float32,
                            residual=False)
        torch.testing.assert_close(delta.reshape(-1, 64), ref, rtol=1e-5, atol=1e-5)


def test_moe_slices_is_dense_ffn_plus_gated_slices(dense):
    from vffn_megatron.config import MoEConfig

    moe = MoEConfig(num_experts=4, top_k=2)
    model, up = _upcycled(dense, moe, "slices")
    assert up.fresh == [f"decoder.layers.{i}.mlp.router.weight" for i in range(2)]
    assert up.description == "upcycled dense -> moe (experts: slices; fresh router)"
    sd, msd = dense.state_dict(), model.state_dict()
    for k, v in sd.items():  # attention, embeddings, norms (pre_mlp_layernorm included) as they are
        if "mlp." not in k and not k.endswith("_extra_state"):
            assert torch.equal(msd[k], v), k
    with torch.no_grad():
        for layer in model.decoder.layers:
            layer.mlp.router.weight.mul_(10)  # distinct top-k choices across tokens
    chosen = set()
    for i, (h, out) in enumerate(_mlp_io(model)):
        p = f"decoder.layers.{i}."
        fc1, fc2 = sd[p + "mlp.linear_fc1.weight"], sd[p + "mlp.linear_fc2.weight"]
        h = h.reshape(-1, 64)
        logits = F.linear(h, msd[p + "mlp.router.weight"])
        top_v, top_i = logits.topk(2, dim=-1)
        w = torch.softmax(top_v, dim=-1)
        ref = _swiglu(h, fc1, fc2)
        gate, upw = fc1.chunk(2, dim=0)
        for e in range(4):
            units = slice(e * 32, (e + 1) * 32)
            slice_out = _swiglu(h, torch.cat([gate[units], upw[units]]), fc2[:, units])
            ref = ref + (w * (top_i == e)).sum(-1, keepdim=True) * slice_out
        chosen |= set(top_i.flatten().tolist())
        torch.testing.assert_close(out.reshape(-1, 64), ref, rtol=1e-5, atol=1e-5)
    assert chosen == {0, 1, 2, 3}


def test_moe_fresh_experts_come_from_the_seed(dense):
    from vffn_megatron.config import MoEConfig

    moe = MoEConfig(num_experts=4, top_k=2)
    model, up = _upcycled(dense, moe, "fresh")
    scratch = _build(moe).state_dict()  # the same seed, nothing loaded
    sd, msd = dense.state_dict(), model.state_dict()
    assert up.description == "upcycled dense -> moe (experts: fresh; fresh router)"
    for i in range(2):
        p = f"decoder.layers.{i}.mlp."
        assert torch.equal(msd[p + "shared_experts.linear_fc1.weight"], sd[p + "linear_fc1.weight"])
        assert torch.equal(msd[p + "shared_experts.linear_fc2.weight"], sd[p + "linear_fc2.weight"])
        fresh = [p + "router.weight"] + [p + f"experts.local_experts.{e}.linear_fc{j}.weight" for e in range(4)
                                         for j in (1, 2)]
        assert set(fresh) <= set(up.fresh)
        assert all(torch.equal(msd[k], scratch[k]) for k in fresh)


def test_upcycling_errors_say_what_to_change(dense):
    from vffn_hf.convert import ConversionError
    from vffn_hf.upcycle import upcycle_dense
    from vffn_megatron.config import KLoopConfig, MoEConfig

    sd = dense.state_dict()
    with pytest.raises(ConversionError, match=r"expert_ffn_hidden_size=null, or moe.upcycle_experts=fresh"):
        upcycle_dense(sd, _gpt(), MoEConfig(num_experts=4, expert_ffn_hidden_size=64), "slices")
    with pytest.raises(ConversionError, match="needs moe.shared_expert=true"):
        upcycle_dense(sd, _gpt(), MoEConfig(num_experts=4, shared_expert=False), "slices")
    kloop = _upcycled(dense, KLoopConfig(loops=2))[0].state_dict()
    with pytest.raises(ConversionError, match="the dense state dict does not match"):
        upcycle_dense(kloop, _gpt(), MoEConfig(num_experts=4), "slices")


def test_moe_tensors_split_and_merge_over_tp():
    """The table's MoE rows (shared expert, per-expert weights) take part in the TP split / merge rules."""
    from vffn_hf.convert import megatron_shapes, merge_tp_shards, split_tp
    from vffn_megatron.config import MoEConfig

    sd = {k: torch.randn(s) for k, s in megatron_shapes(_gpt(), MoEConfig(num_experts=4)).items()}
    shards = split_tp(sd, 2)
    p = "decoder.layers.0.mlp."
    assert shards[0][p + "experts.local_experts.3.linear_fc1.weight"].shape == (32, 64)  # [gate_r; up_r]
    assert shards[0][p + "shared_experts.linear_fc2.weight"].shape == (64, 64)
    assert shards[0][p + "router.weight"].shape == (4, 64)  # replicated
    back = merge_tp_shards(shards)
    assert all(torch.equal(back[k], v) for k, v in sd.items())


def test_hf_dense_imports_into_moe(megatron_tp1, tmp_path, capsys):
    """tools/import_hf.py: a dense HF model into the paper MoE (the same mapping as checkpoint.init_from)."""
    import os

    os.environ["HF_HUB_OFFLINE"] = "1"
    from helpers import REPO
    from helpers.data import load_tool
    from helpers.hf import dense_hf_model, gpt_config
    from helpers.workspace import make_workspace, run_overrides
    from vffn_hf.convert import hf_to_megatron
    from vffn_hf.trainer_ckpt import load_checkpoint
    from vffn_hf.upcycle import upcycle_dense
    from vffn_megatron.config import MoEConfig

    hf = dense_hf_model()
    hf.save_pretrained(tmp_path / "hf")
    out = tmp_path / "run"
    over = run_overrides(make_workspace(tmp_path / "ws"), out) + [
        "model.arch=moe", "moe.num_experts=4", "model.num_query_groups=2", "model.rotary_base=500",
        "parallel.zero_stage=0"]
    assert load_tool("import_hf").main(["--hf", str(tmp_path / "hf"), "--config", str(REPO / "configs" / "tiny.yaml"),
                                        *over]) == 0
    assert "(upcycled dense -> moe (experts: slices; fresh router))" in capsys.readouterr().out
    ck = load_checkpoint(out / "checkpoints", archs=("moe",))
    assert ck.step_dir.name == "step_00000000"
    want = upcycle_dense(hf_to_megatron(hf.state_dict(), gpt_config()), gpt_config(), MoEConfig(num_experts=4))
    assert set(ck.state_dict) == set(want.state_dict) | set(want.fresh)
    assert all(torch.equal(ck.state_dict[k], v) for k, v in want.state_dict.items())
