"""tools/preprocess_data.py takes Megatron-LM's preprocess_data.py flags where it can honour them and
refuses the others by name with the reason (issue 10, item 4): a Megatron-style command gives the same
dataset as the plain one; every refused flag or tokenizer type exits 2 naming it; a --tokenizer-type that
does not match --tokenizer-model fails clearly. Calls main() in-process."""
import json
import shutil

import pytest
from megatron.core.datasets.indexed_dataset import IndexedDataset

from helpers import REPO
from helpers.data import load_tool, paragraphs_jsonl
from helpers.workspace import make_tokenizer
from vffn_data.megatron_compat import REFUSED_FLAGS, REFUSED_TOKENIZER_TYPES
from vffn_data.tokenizer import load_tokenizer

TOOL = load_tool("preprocess_data")
MISTRAL = REPO / "data" / "tokenizers" / "mistral-v1"  # a sentencepiece tokenizer.model


def run(*argv):
    return TOOL.main([*map(str, argv), "--no-progress"])


def documents(prefix) -> list[list[int]]:
    ds = IndexedDataset(f"{prefix}_text_document")
    return [ds[i].tolist() for i in range(len(ds))]


def test_megatron_command_gives_the_same_dataset(tmp_path, capsys):
    src = paragraphs_jsonl(400)  # real paragraphs, newlines inside
    common = ["--input", src, "--append-eod", "--workers", 1]
    assert run(*common, "--tokenizer-model", MISTRAL / "tokenizer.model", "--output-prefix", tmp_path / "plain") == 0
    assert run(*common, "--tokenizer-type", "SentencePieceTokenizer", "--tokenizer-model", MISTRAL / "tokenizer.model",
               "--partitions", 2, "--keep-newlines", "--keep-sequential-samples", "--dataset-impl", "mmap",
               "--output-prefix", tmp_path / "megatron") == 0
    err = capsys.readouterr().err
    assert "note: --tokenizer-type SentencePieceTokenizer" in err  # how Megatron's own type would differ
    plain, megatron = documents(tmp_path / "plain"), documents(tmp_path / "megatron")
    assert len(plain) == 400 and megatron == plain
    # one merged dataset (and its identity sidecar), no partition files
    assert sorted(p.name for p in tmp_path.glob("megatron*")) == ["megatron_text_document.bin",
                                                                  "megatron_text_document.idx",
                                                                  "megatron_text_document.meta.json"]
    # the text reaches the tokenizer as it is (--keep-newlines), input order kept, EOD = the model's EOS
    tok = load_tokenizer(MISTRAL)
    texts = [json.loads(line)["text"] for line in src.read_text().splitlines()]
    assert sum("\n" in t for t in texts) > 100
    assert megatron == [tok.encode(t) + [tok.eod] for t in texts]
    # a directory, with the GPT type: the same .model
    assert run(*common, "--tokenizer-type", "GPTSentencePieceTokenizer", "--tokenizer-model", MISTRAL,
               "--output-prefix", tmp_path / "gpt") == 0
    assert documents(tmp_path / "gpt") == plain


def test_hf_type_picks_the_tokenizer_json_next_to_a_model(tmp_path):
    both = make_tokenizer(tmp_path / "both")  # a word-level tokenizer.json ...
    shutil.copy(MISTRAL / "tokenizer.model", both / "tokenizer.model")  # ... and a sentencepiece .model
    src = paragraphs_jsonl(400)
    assert run("--input", src, "--tokenizer-type", "HuggingFaceTokenizer", "--tokenizer-model", both,
               "--output-prefix", tmp_path / "hf", "--append-eod") == 0
    assert run("--input", src, "--tokenizer-model", both / "tokenizer.json", "--output-prefix", tmp_path / "json",
               "--append-eod") == 0
    assert run("--input", src, "--tokenizer-model", both, "--output-prefix", tmp_path / "default",
               "--append-eod") == 0  # without a type the directory's .model wins
    assert documents(tmp_path / "hf") == documents(tmp_path / "json") != documents(tmp_path / "default")


BASE = ["--input", "in.jsonl", "--tokenizer-model", str(MISTRAL), "--output-prefix", "out"]
REFUSED_ARGS = {"--split-sentences": [], "--lang": ["english"], "--vocab-file": ["vocab.json"],
                "--merge-file": ["merges.txt"], "--vocab-size": ["786"], "--vocab-extra-ids": ["100"],
                "--tokenizer-prompt-format": ["nvlm-yi-34b"], "--tiktoken-pattern": ["v2"],
                "--find-optimal-num-workers": [], "--legacy-tokenizer": []}


@pytest.mark.parametrize("flag", sorted(REFUSED_ARGS))
def test_refused_flags_exit_2_naming_the_flag(flag, capsys):
    assert flag in REFUSED_FLAGS
    assert run(*BASE, flag, *REFUSED_ARGS[flag]) == 2
    err = capsys.readouterr().err
    assert f"error: {flag} (Megatron-LM flag) refused: " in err
    assert run(*BASE, f"{flag}=x" if REFUSED_ARGS[flag] else flag) == 2  # --flag=value form too


def test_refused_tokenizer_types_and_mismatches_fail_clearly(tmp_path, capsys):
    def fails(*extra) -> str:
        assert run(*BASE[:2], "--output-prefix", tmp_path / "out", *extra) == 2
        return capsys.readouterr().err

    for name in REFUSED_TOKENIZER_TYPES:
        err = fails("--tokenizer-type", name, "--tokenizer-model", MISTRAL)
        assert f"--tokenizer-type {name} is not supported" in err
    err = fails("--tokenizer-type", "GPT2BPETokenizer", "--tokenizer-model", MISTRAL)
    assert "tokenizer.json" in err and "HuggingFaceTokenizer" in err  # the fix
    assert "unknown type" in fails("--tokenizer-type", "FancyTokenizer", "--tokenizer-model", MISTRAL)

    hf = make_tokenizer(tmp_path / "hf")
    err = fails("--tokenizer-type", "SentencePieceTokenizer", "--tokenizer-model", hf / "tokenizer.json")
    assert "expects a sentencepiece .model" in err and "HuggingFaceTokenizer" in err
    err = fails("--tokenizer-type", "Llama2Tokenizer", "--tokenizer-model", hf)  # a directory with only a .json
    assert "expects a sentencepiece .model" in err
    err = fails("--tokenizer-type", "HuggingFaceTokenizer", "--tokenizer-model", MISTRAL / "tokenizer.model")
    assert "expects a tokenizer.json" in err and "GPTSentencePieceTokenizer" in err
    err = fails("--tokenizer-type", "HuggingFaceTokenizer", "--tokenizer-model", MISTRAL)
    assert "no tokenizer.json" in err and "GPTSentencePieceTokenizer" in err
    err = fails("--tokenizer-type", "HuggingFaceTokenizer", "--tokenizer-model", "gpt2")  # a Hub name
    assert "not a local file or directory" in err and "save_pretrained" in err
    assert "only mmap" in fails("--tokenizer-model", MISTRAL, "--dataset-impl", "lazy")
    assert ">= 1" in fails("--tokenizer-model", MISTRAL, "--partitions", "0")
    assert not list(tmp_path.glob("out*"))
