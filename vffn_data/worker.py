"""Worker side of preprocessing: decode a raw batch, tokenize its documents, pack the tokens.

Kept free of torch/megatron imports so that spawned workers start fast and stay small.
"""
from __future__ import annotations

import os
import signal
from dataclasses import dataclass, field

import numpy as np

from .corpus import Batch, Problem, decode_batch
from .tokenizer import Tokenizer, load_tokenizer


@dataclass
class Result:
    """Tokens of one batch, per key: all documents concatenated, plus each document's length."""
    source: int
    tokens: dict[str, np.ndarray] = field(default_factory=dict)
    lengths: dict[str, np.ndarray] = field(default_factory=dict)
    locs: list[int] = field(default_factory=list)
    problems: list[Problem] = field(default_factory=list)
    blank: int = 0
    nbytes: int = 0
    disk_bytes: int = 0

    @property
    def n_docs(self) -> int:
        return len(self.locs)


class BatchProcessor:
    def __init__(self, tokenizer: Tokenizer, keys: list[str], append_eod: bool, dtype):
        self.tok, self.keys, self.append_eod, self.dtype = tokenizer, list(keys), append_eod, np.dtype(dtype)

    def __call__(self, batch: Batch) -> Result:
        decoded = decode_batch(batch, self.keys)
        res = Result(batch.source, locs=decoded.locs, problems=decoded.problems, blank=decoded.blank,
                     nbytes=batch.nbytes, disk_bytes=batch.disk_bytes)
        for k, key in enumerate(self.keys):
            ids = self.tok.encode_batch([doc[k] for doc in decoded.docs])
            if self.append_eod:
                for seq in ids:
                    seq.append(self.tok.eod)
            res.lengths[key] = np.fromiter((len(s) for s in ids), dtype=np.int64, count=len(ids))
            res.tokens[key] = (np.concatenate([np.asarray(s, dtype=self.dtype) for s in ids]) if ids
                               else np.zeros(0, dtype=self.dtype))
        return res


_processor: BatchProcessor | None = None


def init_worker(tokenizer_path: str, keys: list[str], append_eod: bool, dtype: str) -> None:
    global _processor
    # The parent handles Ctrl-C (it stops the pool and removes partial output); workers ignoring
    # SIGINT avoids a traceback per worker on the terminal.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    os.environ["TOKENIZERS_PARALLELISM"] = "false"  # one thread per worker: --workers is the parallelism
    _processor = BatchProcessor(load_tokenizer(tokenizer_path), keys, append_eod, dtype)


def process(batch: Batch) -> Result:
    return _processor(batch)
