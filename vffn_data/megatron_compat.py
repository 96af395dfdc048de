"""Megatron-LM ``tools/preprocess_data.py`` flags: the ones tools/preprocess_data.py can honour, and a
clear refusal, by name and with the reason and the fix, for the rest (argparse would only say
"unrecognized arguments").

Accepted: ``--tokenizer-type`` SentencePieceTokenizer / GPTSentencePieceTokenizer / Llama2Tokenizer
(a sentencepiece ``.model``) and HuggingFaceTokenizer (a ``tokenizer.json``, or a directory with one),
checked against what ``--tokenizer-model`` points at; ``--partitions N``, ``--keep-newlines``,
``--keep-sequential-samples`` and ``--dataset-impl mmap``, which describe what this tool always does.
No torch import here (the tool checks its flags before importing megatron-core).
"""
from __future__ import annotations

from pathlib import Path

from .tokenizer import TokenizerError, resolve_tokenizer_file

SENTENCEPIECE_TYPES = ("SentencePieceTokenizer", "GPTSentencePieceTokenizer", "Llama2Tokenizer")
HF_TYPE = "HuggingFaceTokenizer"
TOKENIZER_TYPES = (*SENTENCEPIECE_TYPES, HF_TYPE)

# How Megatron-LM's own tokenizer of that type would encode differently. Here every type encodes a
# document as the tokenizer's pieces, no BOS/EOS added, and --append-eod appends the tokenizer's EOS:
# exactly Megatron's GPTSentencePieceTokenizer, and what the trainer (same tokenizer loader) expects.
ENCODING_NOTES = {
    "SentencePieceTokenizer": "Megatron's SentencePieceTokenizer appends <CLS>/<SEP>/<EOD>/<MASK> ids after the "
                              "model's vocabulary and ends documents with its own <EOD>; here EOD is the model's EOS "
                              "and no ids are added (as Megatron's GPTSentencePieceTokenizer does)",
    "Llama2Tokenizer": "Megatron's Llama2Tokenizer prepends BOS to every document; here no BOS is added "
                       "(as Megatron's GPTSentencePieceTokenizer does)",
    "HuggingFaceTokenizer": "Megatron's HuggingFaceTokenizer adds the tokenizer's special tokens (a BOS for many "
                            "models); here none are added, EOD is the tokenizer's EOS",
}

_CONVERT_HF = ("convert it to a Hugging Face tokenizer.json (with `transformers`: "
               "AutoTokenizer.from_pretrained(...).save_pretrained(DIR)) and pass "
               "--tokenizer-type HuggingFaceTokenizer --tokenizer-model DIR")

REFUSED_TOKENIZER_TYPES = {
    "GPT2BPETokenizer": "GPT-2 BPE from vocab.json + merges.txt (--vocab-file/--merge-file) is not loaded here; "
                        "convert it to a tokenizer.json (with `tokenizers`: "
                        "ByteLevelBPETokenizer('vocab.json', 'merges.txt').save('tokenizer.json'), or with "
                        "`transformers`: GPT2TokenizerFast.from_pretrained(...).save_pretrained(DIR)) and pass "
                        "--tokenizer-type HuggingFaceTokenizer --tokenizer-model that file or DIR",
    "BertWordPieceLowerCase": "WordPiece vocab.txt tokenizers (BERT) are not loaded here; " + _CONVERT_HF,
    "BertWordPieceCase": "WordPiece vocab.txt tokenizers (BERT) are not loaded here; " + _CONVERT_HF,
    "Llama3Tokenizer": "tiktoken-based tokenizers are not loaded here; use the model's Hugging Face "
                       "tokenizer.json with --tokenizer-type HuggingFaceTokenizer",
    "TikTokenizer": "tiktoken-based tokenizers are not loaded here; " + _CONVERT_HF,
    "MistralTokenizer": "mistral-common (tekken) tokenizers are not loaded here; use the model's sentencepiece "
                        ".model with --tokenizer-type GPTSentencePieceTokenizer, or its tokenizer.json with "
                        "--tokenizer-type HuggingFaceTokenizer",
    "QwenTokenizer": "use the model's Hugging Face tokenizer.json with --tokenizer-type HuggingFaceTokenizer",
    "DeepSeekV2Tokenizer": "use the model's Hugging Face tokenizer.json with --tokenizer-type HuggingFaceTokenizer",
    "MultimodalTokenizer": "chat / image prompt formats are not supported (text-only pretraining); use "
                           "--tokenizer-type HuggingFaceTokenizer with the text tokenizer",
    "NullTokenizer": "documents of space-separated ids (Megatron's test tokenizer) are not supported; use a "
                     "real tokenizer (tools/train_tokenizer.py trains one)",
}

_SPLIT = ("NLTK sentence splitting (sentence-level datasets for BERT-style models) is not done here: GPT "
          "pretraining reads whole documents; drop the flag (the output is PREFIX_{key}_document)")
_MULTIMODAL = "a MultimodalTokenizer option: not supported (text-only pretraining); drop it"
_TIKTOKEN = "a TikTokenizer option: tiktoken tokenizers are not loaded here; " + _CONVERT_HF
_FIND_WORKERS = ("Megatron's worker-count search is not supported: measure with tools/bench_preprocess.py "
                 "and pass --workers")

REFUSED_FLAGS = {
    "--split-sentences": _SPLIT,
    "--lang": "the language of NLTK sentence splitting (--split-sentences), which is not supported; drop it",
    "--vocab-file": "vocabulary files (GPT-2 BPE vocab.json, WordPiece vocab.txt) are not loaded here; convert "
                    "the tokenizer to a tokenizer.json (GPT-2 BPE with `tokenizers`: "
                    "ByteLevelBPETokenizer('vocab.json', 'merges.txt').save('tokenizer.json'); any with "
                    "`transformers`: AutoTokenizer.from_pretrained(...).save_pretrained(DIR)) and pass "
                    "--tokenizer-type HuggingFaceTokenizer --tokenizer-model FILE or DIR",
    "--merge-file": "GPT-2 BPE merges files are not loaded here; convert vocab.json + merges.txt to a "
                    "tokenizer.json (tokenizers: ByteLevelBPETokenizer('vocab.json', 'merges.txt')"
                    ".save('tokenizer.json')) and pass --tokenizer-type HuggingFaceTokenizer --tokenizer-model FILE",
    "--vocab-size": "only used by Megatron's NullTokenizer; the vocabulary size here is the tokenizer's own; drop it",
    "--vocab-extra-ids": "T5 sentinel tokens (<extra_id_N>) are not added: the vocabulary is the tokenizer's own; "
                         "add them to the tokenizer itself if you need them",
    "--tokenizer-prompt-format": _MULTIMODAL,
    "--special-tokens": _MULTIMODAL,
    "--image-tag-type": _MULTIMODAL,
    "--force-system-message": _MULTIMODAL,
    "--tiktoken-pattern": _TIKTOKEN,
    "--tiktoken-num-special-tokens": _TIKTOKEN,
    "--tiktoken-special-tokens": _TIKTOKEN,
    "--find-optimal-num-workers": _FIND_WORKERS,
    "--workers-to-check": _FIND_WORKERS,
    "--max-documents": _FIND_WORKERS,
    "--performance-dir": _FIND_WORKERS,
    "--legacy-tokenizer": "chooses between Megatron's two tokenizer implementations; here the tokenizer is always "
                          "loaded with sentencepiece / tokenizers (vffn_data.tokenizer); drop it",
}


def refused_flag(argv: list[str]) -> tuple[str, str] | None:
    """The first Megatron-LM flag in ``argv`` that this tool refuses, with the reason; else None."""
    for arg in argv:
        name = arg.split("=", 1)[0]
        if name in REFUSED_FLAGS:
            return name, REFUSED_FLAGS[name]
    return None


def check_dataset_impl(value: str | None) -> None:
    if value is not None and value != "mmap":
        raise TokenizerError(f"--dataset-impl {value}: only mmap exists in megatron-core (the format written "
                             "here); drop the flag or pass mmap")


def tokenizer_path_for_type(tokenizer_type: str | None, path: str) -> str:
    """The tokenizer file to load for Megatron's ``--tokenizer-type`` and ``--tokenizer-model``; raises
    TokenizerError when the type is not supported or does not match the file."""
    if tokenizer_type is None:
        return path
    if tokenizer_type in REFUSED_TOKENIZER_TYPES:
        raise TokenizerError(f"--tokenizer-type {tokenizer_type} is not supported: "
                             f"{REFUSED_TOKENIZER_TYPES[tokenizer_type]}")
    if tokenizer_type not in TOKENIZER_TYPES:
        raise TokenizerError(f"--tokenizer-type {tokenizer_type}: unknown type; accepted: {', '.join(TOKENIZER_TYPES)} "
                             "(or leave it out: the kind of --tokenizer-model decides)")
    p = Path(path)
    if tokenizer_type == HF_TYPE:
        if p.is_dir():
            if (p / "tokenizer.json").is_file():
                return str(p / "tokenizer.json")  # also when a .model sits next to it (what AutoTokenizer loads)
            hint = (" (it holds a sentencepiece .model: use --tokenizer-type GPTSentencePieceTokenizer)"
                    if list(p.glob("*.model")) else "")
            raise TokenizerError(f"--tokenizer-type {HF_TYPE}: no tokenizer.json in {p}{hint}")
        if not p.exists():
            raise TokenizerError(
                f"--tokenizer-type {HF_TYPE}: {path} is not a local file or directory (Hugging Face Hub names "
                "are not downloaded here: save the tokenizer with AutoTokenizer.from_pretrained(NAME)"
                ".save_pretrained(DIR) and pass --tokenizer-model DIR)")
        if p.suffix != ".json":
            raise TokenizerError(f"--tokenizer-type {HF_TYPE} expects a tokenizer.json, but --tokenizer-model {path} "
                                 "is not one; for a sentencepiece .model use --tokenizer-type GPTSentencePieceTokenizer")
        return path
    f = resolve_tokenizer_file(p)  # sentencepiece types: the .model of a directory, as without a type
    if f.suffix == ".json":
        raise TokenizerError(
            f"--tokenizer-type {tokenizer_type} expects a sentencepiece .model, but --tokenizer-model {path} is a "
            f"Hugging Face tokenizer.json ({f}): pass --tokenizer-type {HF_TYPE}, or point --tokenizer-model at "
            "the .model")
    return str(f)
