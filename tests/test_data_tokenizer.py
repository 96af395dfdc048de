"""Tokenizer training (sentencepiece) and its HF export: identical encodings (issue 3, acceptance 5)."""
import json

import pytest
import sentencepiece as spm

from helpers.data import bundled_docs, load_tool, trained_tokenizer, write_lines
from vffn_data.tokenizer import HFTokenizer, SentencePieceTokenizer, TokenizerError, load_tokenizer

EDGE = ["", " ", "  two leading", "trailing  ", "a\n\nb", "\ttab", "▁literal", "é ü 漢字 🙂", "12345 3.14",
        "<s>not special</s>", "<pad><unk>", " \n ", "Hello  world   !", "\r\n", "x" * 5000]


def test_quickstart_command_writes_all_files():
    out = trained_tokenizer(4096)
    for name in ("tokenizer.model", "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json"):
        assert (out / name).is_file(), name
    assert not [p for p in out.iterdir() if p.name.startswith(".")]  # no temp files left
    sp = spm.SentencePieceProcessor(model_file=str(out / "tokenizer.model"))
    assert sp.get_piece_size() == 4096
    assert [sp.id_to_piece(i) for i in range(4)] == ["<unk>", "<s>", "</s>", "<pad>"]


def test_autotokenizer_encodes_bundled_corpus_identically():
    from transformers import AutoTokenizer

    out = trained_tokenizer(4096)
    sp = spm.SentencePieceProcessor(model_file=str(out / "tokenizer.model"))
    hf = AutoTokenizer.from_pretrained(str(out))
    assert hf.eos_token_id == sp.eos_id() and hf.bos_token_id == sp.bos_id() and hf.pad_token_id == sp.pad_id()
    assert len(hf) == sp.get_piece_size()
    texts = list(bundled_docs()) + EDGE
    mismatched = [i for i, t in enumerate(texts) if hf(t)["input_ids"] != sp.encode(t)]
    assert not mismatched, f"{len(mismatched)} of {len(texts)} texts differ, first: {texts[mismatched[0]][:80]!r}"
    for t in texts[:50] + EDGE:
        assert hf.decode(sp.encode(t)) == sp.decode(sp.encode(t))


def test_load_tokenizer_paths_and_interface():
    out = trained_tokenizer(4096)
    by_dir, by_model, by_json = (load_tokenizer(out), load_tokenizer(out / "tokenizer.model"),
                                 load_tokenizer(out / "tokenizer.json"))
    assert isinstance(by_dir, SentencePieceTokenizer) and isinstance(by_json, HFTokenizer)
    for tok in (by_dir, by_model, by_json):
        assert (tok.vocab_size, tok.eod, tok.bos, tok.pad) == (4096, 2, 1, 3)
        json.dumps(tok.unique_identifiers)
    text = bundled_docs()[3]
    ids = by_dir.encode(text)
    assert ids == by_json.encode(text) == by_dir.encode_batch([text])[0] == by_json.encode_batch([text])[0]
    assert by_dir.eod not in ids and by_dir.bos not in ids  # encode adds no specials
    assert by_dir.decode(ids) == text == by_json.decode(ids)
    assert by_json.encode("</s>") == by_dir.encode("</s>")  # special-token text stays text
    assert by_dir.unique_identifiers["sha256"] == by_model.unique_identifiers["sha256"]


def test_load_tokenizer_errors(tmp_path):
    with pytest.raises(TokenizerError, match="no such tokenizer"):
        load_tokenizer(tmp_path / "missing")
    with pytest.raises(TokenizerError, match="train one with tools/train_tokenizer.py"):
        load_tokenizer(tmp_path)
    (tmp_path / "bad.model").write_bytes(b"not a model")
    with pytest.raises(TokenizerError, match="not a valid sentencepiece model"):
        load_tokenizer(tmp_path / "bad.model")


def test_special_token_options(tmp_path):
    corpus = write_lines(tmp_path / "c.jsonl", [{"text": t} for t in bundled_docs()[:60]])
    out = tmp_path / "tok"
    rc = load_tool("train_tokenizer").main(["--input", str(corpus), "--output-dir", str(out), "--vocab-size", "600",
                                            "--no-bos", "--no-pad", "--eos-piece", "<|endoftext|>",
                                            "--user-defined-symbols", "<|sep|>"])
    assert rc == 0
    tok = load_tokenizer(out)
    assert (tok.bos, tok.pad, tok.eod) == (None, None, 1)
    assert tok.sp.id_to_piece(1) == "<|endoftext|>"
    hf = load_tokenizer(out / "tokenizer.json")
    assert (hf.bos, hf.pad, hf.eod) == (None, None, 1)
    text = "first part<|sep|>second part"
    assert tok.encode(text) == hf.encode(text) and tok.sp.piece_to_id("<|sep|>") in tok.encode(text)


def test_unigram_trains_and_exports(tmp_path):
    corpus = write_lines(tmp_path / "c.jsonl", [{"text": t} for t in bundled_docs()[:40]])
    out = tmp_path / "uni"
    rc = load_tool("train_tokenizer").main(["--input", str(corpus), "--output-dir", str(out), "--vocab-size", "500",
                                            "--model-type", "unigram"])
    assert rc == 0
    sp, hf = load_tokenizer(out), load_tokenizer(out / "tokenizer.json")
    texts = bundled_docs()[40:80]
    # Score ties may break differently (documented); the encodings must still agree almost everywhere.
    same = sum(sp.encode(t) == hf.encode(t) for t in texts)
    assert same >= 0.8 * len(texts)
    assert all(hf.decode(sp.encode(t)) == t for t in texts[:5])


def test_training_strict_and_skip(tmp_path, capsys):
    corpus = write_lines(tmp_path / "c.jsonl", [{"text": t} for t in bundled_docs()[:30]] + [b'{"text": broken\n'])
    tool = load_tool("train_tokenizer")
    assert tool.main(["--input", str(corpus), "--output-dir", str(tmp_path / "a"), "--vocab-size", "400"]) == 0
    assert "malformed_json" in capsys.readouterr().out
    assert tool.main(["--input", str(corpus), "--output-dir", str(tmp_path / "b"), "--vocab-size", "400", "--strict"]) == 1
    assert f"{corpus}:31: malformed_json" in capsys.readouterr().err
    assert not (tmp_path / "b" / "tokenizer.model").exists()


def test_llama_style_dummy_prefix_exports_exactly(tmp_path):
    from vffn_data.tokenizer_train import check_hf_matches

    corpus = write_lines(tmp_path / "c.jsonl", [{"text": t} for t in bundled_docs()[:100]])
    out = tmp_path / "llama"
    assert load_tool("train_tokenizer").main(["--input", str(corpus), "--output-dir", str(out),
                                              "--vocab-size", "800", "--add-dummy-prefix"]) == 0
    assert load_tokenizer(out).sp.encode("Hi", out_type=str)[0].startswith("▁")
    assert check_hf_matches(out / "tokenizer.model", out / "tokenizer.json", list(bundled_docs()) + EDGE) == []
