"""megatron (TP=1, eval) -> Hugging Face folder: same logits (fp32, <= 1e-4) and the same greedy decoding
(HF generate() with its KV cache vs a megatron full re-forward loop), VersatileFFN and dense."""
import json
import os

import pytest
import torch

os.environ["HF_HUB_OFFLINE"] = "1"  # everything must load from the exported folder alone
from helpers.hf import batch, build, depth_counts, gpt_config, vffn_config  # noqa: E402

TOL = 1e-4
GEN = 32


def _export(model, kind, out, **kw):
    from vffn_hf.convert import megatron_to_hf
    from vffn_hf.export import save_hf_folder

    m, v = gpt_config(), vffn_config() if kind == "vffn" else None
    return save_hf_folder(out, megatron_to_hf(model.state_dict(), m, v), m, v, **kw)


def _load(path, dtype=None):
    from transformers import AutoModelForCausalLM

    kw = {"dtype": dtype} if dtype is not None else {}
    return AutoModelForCausalLM.from_pretrained(path, trust_remote_code=True, **kw).eval()


def _check_parity(mg, hf, kind):
    from vffn_hf.parity import hf_greedy, megatron_greedy, megatron_logits

    tokens = batch()
    ref = megatron_logits(mg, tokens)
    diff = (hf(tokens).logits.float() - ref).abs().max().item()
    print(f"[parity] {kind} TP=1: max abs logit diff {diff:.3e} (logit scale {ref.abs().max():.2f})")
    assert diff <= TOL, f"{kind}: max abs logit diff {diff}"
    prompt = tokens[:, :8]
    ours, theirs = megatron_greedy(mg, prompt, GEN), hf_greedy(hf, prompt, GEN)
    assert theirs.shape == (prompt.shape[0], 8 + GEN)
    assert torch.equal(ours, theirs), f"{kind}: greedy decoding differs\n{ours}\n{theirs}"
    assert len(set(ours[:, 8:].flatten().tolist())) > 4, "degenerate decoding: the comparison would prove little"


def test_vffn_export_logits_and_generate(megatron_tp1, tmp_path):
    mg = build("vffn", tp=1)
    # small shards: exercises the sharded safetensors index
    out = _export(mg, "vffn", tmp_path / "hf", max_shard_size="100KB")
    hf = _load(out)
    assert type(hf).__name__ == "VersatileFFNLlamaForCausalLM"
    layer = hf.model.layers[0]
    assert not hasattr(layer, "post_attention_layernorm")
    for name in ("norm", "gate_proj", "up_proj", "down_proj", "router", "depth_router"):
        assert hasattr(layer.mlp, name), name
    assert layer.mlp.router.weight.shape == (4, 64) and layer.mlp.depth_router.weight.shape == (3, 64)
    _check_parity(mg, hf, "vffn")
    counts = depth_counts(mg)
    assert (counts > 0).sum() >= 2, f"eval chose a single depth for every token: {counts}"

    cfg = json.loads((out / "config.json").read_text())
    assert cfg["model_type"] == "vffn_llama" and cfg["auto_map"]["AutoModelForCausalLM"].startswith("modeling_vffn.")
    assert (cfg["vffn_num_experts"], cfg["vffn_top_k"], cfg["vffn_max_depth"]) == (4, 2, 3)
    assert cfg["rope_parameters"]["rope_theta"] == 500 and cfg["num_key_value_heads"] == 2
    names = set(os.listdir(out))
    assert {"configuration_vffn.py", "modeling_vffn.py", "generation_config.json",
            "model.safetensors.index.json"} <= names
    assert sum(n.endswith(".safetensors") for n in names) > 1


def test_dense_export_is_plain_llama(megatron_tp1, tmp_path):
    mg = build("dense", tp=1)
    out = _export(mg, "dense", tmp_path / "hf")
    assert not any(n.endswith(".py") for n in os.listdir(out)), "dense export must not need custom code"
    hf = _load(out)
    assert type(hf).__name__ == "LlamaForCausalLM"
    _check_parity(mg, hf, "dense")


def _tokenizer(directory, text, vocab_size):
    """A tiny BPE tokenizer.json + tokenizer_config.json naming the special tokens, like the data tools write."""
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.train_from_iterator(text, trainers.BpeTrainer(vocab_size=vocab_size,
                                                      special_tokens=["<pad>", "<s>", "</s>", "<unk>"]))
    # pad to the wanted size (the sample text is too small to learn that many merges)
    tok.add_special_tokens([f"<extra_{i}>" for i in range(vocab_size - tok.get_vocab_size())])
    directory.mkdir()
    tok.save(str(directory / "tokenizer.json"))
    (directory / "tokenizer_config.json").write_text(json.dumps(
        {"tokenizer_class": "PreTrainedTokenizerFast", "eos_token": "</s>", "bos_token": "<s>", "pad_token": "<pad>",
         "unk_token": "<unk>"}))
    assert tok.get_vocab_size() == vocab_size
    return tok


def test_bf16_export_and_tokenizer(megatron_tp1, tmp_path):
    from transformers import AutoTokenizer

    text = ["To be, or not to be, that is the question:", "Of Man's first disobedience, and the fruit"] * 20
    mg = build("vffn", tp=1)
    with pytest.raises(ValueError, match="tokens but the model only"):  # 300 > 256 embeddings
        _tokenizer(tmp_path / "tok_big", text, 300)
        _export(mg, "vffn", tmp_path / "bad", tokenizer=tmp_path / "tok_big")
    tok_dir = tmp_path / "tok"
    tok = _tokenizer(tok_dir, text, 200)

    out = _export(mg, "vffn", tmp_path / "hf", dtype="bf16", tokenizer=tok_dir)
    hf_tok = AutoTokenizer.from_pretrained(out, trust_remote_code=True)
    for line in text[:2] + ["unseen words: zebra quixotic 42"]:
        assert hf_tok(line, add_special_tokens=False)["input_ids"] == tok.encode(line, add_special_tokens=False).ids
    cfg = json.loads((out / "config.json").read_text())
    assert (cfg["eos_token_id"], cfg["bos_token_id"], cfg["pad_token_id"]) == (2, 1, 0)
    assert cfg["dtype"] == "bfloat16"
    gen = json.loads((out / "generation_config.json").read_text())
    assert gen["eos_token_id"] == 2

    hf = _load(out)
    assert hf.model.embed_tokens.weight.dtype == torch.bfloat16
    from vffn_hf.parity import megatron_logits

    tokens = batch()
    ref = megatron_logits(mg, tokens)
    diff = (_load(out, dtype=torch.float32)(tokens).logits - ref).abs().max().item()
    # bf16 weights (8 mantissa bits): close, not equal; the exact check is the fp32 export
    assert diff < 0.05 * ref.abs().max().item(), diff


def test_tied_embeddings_round_trip(megatron_tp1, tmp_path):
    """untie_embeddings_and_output_weights=False: HF ties lm_head to the embedding; import reproduces the model."""
    from transformers import AutoModelForCausalLM

    from vffn_hf.convert import from_hf_config, hf_to_megatron, load_into_megatron, megatron_to_hf
    from vffn_hf.export import save_hf_folder
    from vffn_hf.parity import megatron_logits
    from vffn_megatron import build_gpt_model, init_megatron

    cfg = gpt_config()
    cfg.untie_embeddings_and_output_weights = False
    init_megatron(1, 3)
    mg = build_gpt_model(cfg, vffn_config()).eval()
    out = save_hf_folder(tmp_path / "hf", megatron_to_hf(mg.state_dict(), cfg, vffn_config()), cfg, vffn_config())
    hf = AutoModelForCausalLM.from_pretrained(out, trust_remote_code=True).eval()
    assert hf.config.tie_word_embeddings and hf.lm_head.weight.data_ptr() == hf.model.embed_tokens.weight.data_ptr()
    tokens = batch()
    ref = megatron_logits(mg, tokens)
    with torch.no_grad():
        assert (hf(tokens).logits - ref).abs().max().item() <= TOL
    back = build_gpt_model(cfg, vffn_config()).eval()
    load_into_megatron(back, hf_to_megatron(hf.state_dict(), *from_hf_config(hf.config)))
    assert torch.equal(megatron_logits(back, tokens), ref)


def test_non_empty_output_names_the_cli_flag(tmp_path):
    """The refusal names tools/export_hf.py's --overwrite (the keyword stays overwrite=)."""
    from vffn_hf.export import save_hf_folder

    (tmp_path / "old.txt").write_text("x")
    with pytest.raises(FileExistsError, match=r"pass --overwrite \(overwrite=True from Python\)"):
        save_hf_folder(tmp_path, {}, model=None)
    assert (tmp_path / "old.txt").exists()
