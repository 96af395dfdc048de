"""Pre-flight checks that read files (tokenizer, preprocessed data), run before any process group starts.

The expensive one, the largest token id in each ``.bin`` file, is cached per (path, size, mtime) in the
data cache directory, so a resumed or re-launched run does not re-scan terabytes.
"""
from __future__ import annotations

import json
import math
import os
import struct
import sys
from typing import Optional

import numpy as np

from .config import ConfigError, RunConfig

_IDX_MAGIC = b"MMIDIDX\x00\x00"  # megatron-core indexed dataset header


def load_tokenizer(path: str):
    """The project tokenizer (vffn_data), with an actionable error when it is missing or unreadable."""
    if not os.path.exists(path):
        raise ConfigError(f"data.tokenizer: {path} does not exist; train one with "
                          f"`python tools/train_tokenizer.py --input <text> --output-dir {path} --vocab-size N`")
    try:
        from vffn_data.tokenizer import load_tokenizer as _load
    except ImportError as e:  # pragma: no cover - the data package is part of this repository
        raise ConfigError(f"cannot import vffn_data.tokenizer ({e}); is the vffn package installed (pip install -e .)?")
    try:
        return _load(path)
    except Exception as e:  # a foreign/corrupt directory: say which file and what went wrong
        raise ConfigError(f"data.tokenizer: cannot load the tokenizer at {path}: {type(e).__name__}: {e}") from None


def resolve_vocab_size(cfg: RunConfig, tokenizer_vocab: int) -> int:
    """The model's embedding rows: explicit model.vocab_size, or the tokenizer's padded for TP."""
    tp = cfg.parallel.tensor_model_parallel_size
    if cfg.model.vocab_size is not None:
        if cfg.model.vocab_size < tokenizer_vocab:
            raise ConfigError(f"model.vocab_size ({cfg.model.vocab_size}) is smaller than the tokenizer's vocabulary "
                              f"({tokenizer_vocab}, {cfg.data.tokenizer}); set model.vocab_size: null to derive it")
        return cfg.model.vocab_size
    # independent of the TP size (unlike megatron's divisible_by x TP), so one seed gives the same
    # model at every TP size and checkpoints can be resharded
    multiple = math.lcm(cfg.model.make_vocab_size_divisible_by, tp)
    return -(-tokenizer_vocab // multiple) * multiple


def _read_idx_header(idx_path: str) -> tuple[np.dtype, int]:
    """(token dtype, number of sequences) from a megatron ``.idx`` header (magic, version, dtype, count)."""
    from megatron.core.datasets.indexed_dataset import DType

    with open(idx_path, "rb") as f:
        head = f.read(26)
    if len(head) < 26 or head[:9] != _IDX_MAGIC:
        raise ConfigError(f"{idx_path} is not a megatron indexed-dataset index (bad header); "
                          f"re-create it with tools/preprocess_data.py")
    dtype = np.dtype(DType.dtype_from_code(struct.unpack("<B", head[17:18])[0]))
    return dtype, struct.unpack("<Q", head[18:26])[0]


def _read_idx_dtype(idx_path: str) -> np.dtype:
    return _read_idx_header(idx_path)[0]


SPLIT_NAMES = ("train", "validation", "test")


def check_split(cfg: RunConfig, index: int, path: str, num_docs: int) -> None:
    """Every split with a non-zero share of data.split must get >= 1 document of every dataset.

    megatron-core builds each such split, and ``GPTDataset`` loops forever (100% CPU, no message) looking for
    tokens in a split of 0 documents, even when nothing is sampled from it. The document ranges are megatron's
    own: round(bound * documents) for the normalised split bounds.
    """
    from megatron.core.datasets.blended_megatron_dataset_config import (
        convert_split_vector_to_split_matrix, parse_and_normalize_split)

    matrix = convert_split_vector_to_split_matrix(parse_and_normalize_split(cfg.data.split))
    for name, bounds in zip(SPLIT_NAMES, matrix):
        if bounds is None:  # a zero share: megatron does not build this split
            continue
        count = int(round(bounds[1] * num_docs)) - int(round(bounds[0] * num_docs))
        if count < 1:
            share = bounds[1] - bounds[0]
            need = math.ceil(1500.0 / max(num_docs, 1)) / 10  # percent: 1.5 documents survive the rounding
            raise ConfigError(
                f"data.split {cfg.data.split!r} gives the {name} split {share:.2%} of the {num_docs} documents of "
                f"data.datasets[{index}] ({path}), which rounds to 0 documents (megatron-core would hang building "
                f"it). Give the {name} split a share of at least ~{need:g}% (e.g. data.split="
                f"{_suggest_split(matrix, SPLIT_NAMES.index(name), need)}), preprocess more documents, or set its "
                f"share to 0" + (" (and schedule.eval_interval=0)" if name == "validation" else ""))


def _suggest_split(matrix, which: int, percent: float) -> str:
    shares = [0.0 if b is None else (b[1] - b[0]) * 100 for b in matrix]
    shares[which] = max(shares[which], percent)
    shares[0] = 100 - sum(shares[1:])
    return ",".join(f"{s:g}" for s in shares)


def max_token_id(prefix: str, cache_dir: Optional[str] = None) -> int:
    """Largest token id stored in ``prefix.bin`` (cached by path, size and mtime)."""
    bin_path, idx_path = prefix + ".bin", prefix + ".idx"
    st = os.stat(bin_path)
    key = f"{os.path.abspath(bin_path)}|{st.st_size}|{st.st_mtime_ns}"
    cache_file = os.path.join(cache_dir, "max_token_ids.json") if cache_dir else None
    cache = {}
    if cache_file and os.path.exists(cache_file):
        try:
            with open(cache_file) as f:
                cache = json.load(f)
        except (OSError, ValueError):
            cache = {}
    if key in cache:
        return int(cache[key])
    dtype = _read_idx_dtype(idx_path)
    if st.st_size == 0:
        return -1
    data = np.memmap(bin_path, dtype=dtype, mode="r")
    chunk = 1 << 26  # bounded resident memory on multi-GB files
    result = max(int(data[i:i + chunk].max()) for i in range(0, data.shape[0], chunk))
    del data
    if cache_file:
        try:  # several ranks may write: atomic replace, a lost update only costs a re-scan
            os.makedirs(cache_dir, exist_ok=True)
            cache[key] = result
            tmp = f"{cache_file}.{os.getpid()}.tmp"
            with open(tmp, "w") as f:
                json.dump(cache, f)
            os.replace(tmp, cache_file)
        except OSError:
            pass
    return result


def _warn(msg: str) -> None:
    if int(os.environ.get("RANK", "0")) == 0:
        print(f"WARNING: {msg}", file=sys.stderr, flush=True)


def check_data_tokenizer(cfg: RunConfig, index: int, path: str, tokenizer) -> None:
    """The data was tokenized by data.tokenizer (same file sha256), per the dataset's .meta.json sidecar;
    data without a current sidecar gets a warning only (its tokenizer is unknown)."""
    from vffn_data.identity import identify, meta_path

    ident = identify(path)
    if ident.meta is None:
        _warn(f"data.datasets[{index}] ({path}): {ident.problem}; cannot check that it was tokenized with "
              f"{cfg.data.tokenizer}. Re-run tools/preprocess_data.py to record it in {meta_path(path)}")
        return
    made_by = ident.tokenizer
    ours = tokenizer.unique_identifiers.get("sha256")
    if made_by.get("sha256") != ours:
        raise ConfigError(
            f"data.datasets[{index}] ({path}) was tokenized with {made_by.get('path')} ({made_by.get('kind')}, "
            f"{made_by.get('vocab_size')} tokens, sha256 {str(made_by.get('sha256'))[:12]}), but data.tokenizer is "
            f"{tokenizer.path} ({tokenizer.vocab_size} tokens, sha256 {str(ours)[:12]}): a different tokenizer, so "
            f"the token ids would mean other text. Re-run tools/preprocess_data.py --tokenizer-model "
            f"{cfg.data.tokenizer} for this data, or point data.tokenizer at {made_by.get('path')}")


def check_data(cfg: RunConfig, tokenizer) -> None:
    """Every dataset prefix exists and its token ids fit the tokenizer (and hence the model)."""
    for i, entry in enumerate(cfg.data.datasets):
        missing = [p for p in (entry.path + ".bin", entry.path + ".idx") if not os.path.isfile(p)]
        if missing:
            raise ConfigError(f"data.datasets[{i}].path: {', '.join(missing)} not found. The path is the prefix "
                              f"written by `tools/preprocess_data.py --output-prefix P` (e.g. P_text_document), "
                              f"without .bin/.idx")
        _, num_docs = _read_idx_header(entry.path + ".idx")
        check_split(cfg, i, entry.path, num_docs)
        check_data_tokenizer(cfg, i, entry.path, tokenizer)
        if cfg.data.check_token_ids:
            top = max_token_id(entry.path, cfg.data_cache_dir)
            if top >= tokenizer.vocab_size:
                raise ConfigError(
                    f"data.datasets[{i}] ({entry.path}) contains token id {top}, but the tokenizer "
                    f"{cfg.data.tokenizer} has only {tokenizer.vocab_size} tokens: the data was preprocessed with "
                    f"another tokenizer. Re-run tools/preprocess_data.py with --tokenizer-model {cfg.data.tokenizer} "
                    f"or point data.tokenizer at the tokenizer used for this data")


def preflight(cfg: RunConfig):
    """File checks + vocabulary resolution. Returns (tokenizer, model vocab size)."""
    tokenizer = load_tokenizer(cfg.data.tokenizer)
    for attr in ("vocab_size", "eod", "unique_identifiers"):
        if not hasattr(tokenizer, attr):
            raise ConfigError(f"the tokenizer at {cfg.data.tokenizer} has no '{attr}' (not a vffn_data tokenizer?)")
    vocab = resolve_vocab_size(cfg, tokenizer.vocab_size)
    check_data(cfg, tokenizer)
    return tokenizer, vocab
