"""Data identity (issue 15, cases 3 and 8): each preprocessed dataset records its content fingerprint and its
tokenizer's in <prefix>.meta.json; the trainer refuses data of another tokenizer and keys megatron's sample-index
cache by content; train_tokenizer leaves no file of an older tokenizer behind."""
import json

import numpy as np
import pytest

from helpers.data import load_tool, paragraphs_jsonl
from helpers.workspace import make_dataset, make_tokenizer, make_workspace, run_overrides, tiny_config


def _other_tokenizer(directory, vocab_size=200):
    """Same size and specials as make_tokenizer's, other words: a different tokenizer of the same vocab size."""
    from tokenizers import Tokenizer
    from tokenizers.models import WordLevel
    from tokenizers.pre_tokenizers import Whitespace

    vocab = {"<pad>": 0, "<s>": 1, "</s>": 2, "<unk>": 3}
    vocab.update({f"w{vocab_size + 3 - i}": i for i in range(4, vocab_size)})  # reversed ids
    tok = Tokenizer(WordLevel(vocab, unk_token="<unk>"))
    tok.pre_tokenizer = Whitespace()
    directory.mkdir(parents=True, exist_ok=True)
    tok.save(str(directory / "tokenizer.json"))
    (directory / "tokenizer_config.json").write_text(json.dumps({"eos_token": "</s>"}))
    return directory


def _preprocess(src, tok, prefix):
    rc = load_tool("preprocess_data").main(["--input", str(src), "--tokenizer-model", str(tok), "--output-prefix",
                                            str(prefix), "--append-eod", "--no-progress"])
    assert rc == 0
    return f"{prefix}_text_document"


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    root = tmp_path_factory.mktemp("ident")
    src = root / "in.jsonl"
    rng = np.random.default_rng(0)
    src.write_text("".join(json.dumps({"text": " ".join(f"w{int(i)}" for i in rng.integers(4, 200, 60))}) + "\n"
                           for _ in range(40)))
    return {"root": root, "src": src, "tok_a": make_tokenizer(root / "tok_a"), "tok_b": _other_tokenizer(root / "tok_b")}


def _cfg(tok, prefix, out):
    ws = {"tokenizer": str(tok), "datasets": [str(prefix)]}
    return tiny_config(*run_overrides(ws, out), "data.datasets=[{path: " + str(prefix) + ", weight: 1.0}]",
                       "data.split=100,0,0")


def test_sidecar_records_content_and_tokenizer(corpus):
    from vffn_data.identity import content_fingerprint, identify

    prefix = _preprocess(corpus["src"], corpus["tok_a"], corpus["root"] / "a")
    meta = json.loads(open(prefix + ".meta.json").read())
    assert meta["content"] == content_fingerprint(prefix) and meta["documents"] == 40
    assert meta["tokenizer"]["path"] == str((corpus["tok_a"] / "tokenizer.json").resolve())
    assert len(meta["tokenizer"]["sha256"]) == 64 and meta["tokenizer"]["vocab_size"] == 200
    assert identify(prefix).meta == meta


def test_trainer_refuses_data_of_another_tokenizer_of_the_same_size(corpus, capsys):
    """Case 8: before, only max id < vocab was checked, and this passed --check."""
    from pretrain.checks import preflight
    from pretrain.config import ConfigError

    prefix = _preprocess(corpus["src"], corpus["tok_b"], corpus["root"] / "b")
    with pytest.raises(ConfigError) as e:
        preflight(_cfg(corpus["tok_a"], prefix, corpus["root"] / "out"))
    msg = str(e.value)
    assert "data.datasets[0]" in msg and str(corpus["tok_b"].resolve()) in msg and str(corpus["tok_a"]) in msg
    assert "preprocess_data.py --tokenizer-model" in msg and "point data.tokenizer at" in msg
    preflight(_cfg(corpus["tok_b"], prefix, corpus["root"] / "out"))  # the right tokenizer passes
    assert "WARNING" not in capsys.readouterr().err


def test_data_without_or_with_a_stale_sidecar_warns(corpus, capsys):
    from pretrain.checks import preflight

    bare = make_dataset(corpus["root"] / "bare_text_document", docs=30)
    preflight(_cfg(corpus["tok_a"], bare, corpus["root"] / "out"))
    err = capsys.readouterr().err
    assert "WARNING" in err and "bare_text_document.meta.json" in err and "preprocess_data.py" in err
    # A pair rewritten by another tool after preprocessing: its old sidecar is not trusted (no refusal either).
    prefix = _preprocess(corpus["src"], corpus["tok_b"], corpus["root"] / "stale")
    make_dataset(corpus["root"] / "stale_text_document", docs=30, seed=3)
    preflight(_cfg(corpus["tok_a"], prefix, corpus["root"] / "out"))
    assert "describes other data" in capsys.readouterr().err


def _first_samples(cfg, n=4):
    from pretrain.checks import load_tokenizer
    from pretrain.data import build_datasets

    train, _ = build_datasets(cfg, load_tokenizer(cfg.data.tokenizer), 1)
    return [train[i]["tokens"].tolist() for i in range(n)]


@pytest.mark.parametrize("docs", [300, 60])
def test_index_cache_is_keyed_by_content(tmp_path, docs, megatron_tp1):
    """Case 3: data re-preprocessed to the same prefix, rerun in the same output_dir. Before: megatron's cache
    (keyed by path) was reused: stale samples (same document count) or an IndexError (fewer documents)."""
    from pretrain.data import index_cache_dir

    ws = make_workspace(tmp_path)
    cfg = tiny_config(*run_overrides(ws, tmp_path / "run"))
    first = _first_samples(cfg)
    assert _first_samples(cfg) == first  # unchanged data: the same cache and order
    cache = index_cache_dir(cfg)
    make_dataset(tmp_path / "data" / "a_text_document", 200, docs=docs, seed=7)  # re-preprocessed in place
    assert index_cache_dir(cfg) != cache
    again = _first_samples(cfg)
    fresh = _first_samples(tiny_config(*run_overrides(ws, tmp_path / "fresh")))
    assert again == fresh and again != first


def test_train_tokenizer_leaves_no_file_of_an_older_tokenizer(tmp_path):
    """Case 8: --no-hf into a folder with an older export left its tokenizer.json (which export_hf copied)."""
    src = paragraphs_jsonl(400)
    tool = load_tool("train_tokenizer")
    out = tmp_path / "tok"
    base = ["--input", str(src), "--output-dir", str(out), "--num-threads", "1"]
    assert tool.main(base + ["--vocab-size", "500"]) == 0
    assert (out / "tokenizer.json").is_file()
    (out / "notes.txt").write_text("mine")
    assert tool.main(base + ["--vocab-size", "450", "--no-hf"]) == 0
    assert sorted(p.name for p in out.iterdir()) == ["notes.txt", "tokenizer.model", "tokenizer.vocab"]
