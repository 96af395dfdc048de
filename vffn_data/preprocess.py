"""Corpus -> megatron-core indexed dataset, with N worker processes and input order preserved.

The main process reads raw batches (cheap), workers decode + tokenize them, and the main process
writes results strictly in input order. At most ``4 * workers`` batches are in flight, which bounds
memory independently of corpus size (``Pool.imap`` would read the whole input ahead).
"""
from __future__ import annotations

import json
import multiprocessing as mp
import os
from collections import deque
from dataclasses import dataclass, field
from typing import Iterator

from .corpus import DEFAULT_MAX_DOC_BYTES, REASONS, InputError, discover, iter_batches
from .identity import tokenizer_record
from .summary import Progress, Stats
from .tokenizer import load_tokenizer, resolve_tokenizer_file
from .worker import BatchProcessor, Result, init_worker, process


class StrictModeError(RuntimeError):
    """--strict: the first bad record; the message has file:line, the reason and the fix."""


class NoDocumentsError(RuntimeError):
    pass


@dataclass
class PreprocessConfig:
    inputs: list[str]
    tokenizer_model: str
    output_prefix: str
    json_keys: list[str] = field(default_factory=lambda: ["text"])
    workers: int = 1
    append_eod: bool = False
    strict: bool = False
    txt_mode: str = "document"
    split: str = "train"
    batch_bytes: int = 1 << 20
    progress: bool = True
    log_interval: float = 30.0
    summary_json: str | None = None
    max_doc_bytes: int = DEFAULT_MAX_DOC_BYTES


def _ordered_results(batches, workers: int, init_args: tuple) -> Iterator[Result]:
    if workers <= 1:
        # In-process: no pickling, and the same code path as the workers.
        processor = BatchProcessor(load_tokenizer(init_args[0]), *init_args[1:])
        for b in batches:
            yield processor(b)
        return
    # spawn, not fork: the parent has torch (megatron) loaded with its thread pools; forked children
    # of a threaded process can deadlock, and spawned workers import only what they use.
    pool = mp.get_context("spawn").Pool(workers, initializer=init_worker, initargs=init_args)
    try:
        pending: deque = deque()
        it = iter(batches)
        exhausted = False
        while True:
            while not exhausted and len(pending) < 4 * workers:
                try:
                    pending.append(pool.apply_async(process, (next(it),)))
                except StopIteration:
                    exhausted = True
            if not pending:
                break
            yield pending.popleft().get()
        pool.close()
        pool.join()
    finally:
        pool.terminate()  # no-op after a clean join; stops workers on error, strict stop or Ctrl-C


def preprocess(cfg: PreprocessConfig) -> tuple[Stats, list[str]]:
    """Run preprocessing; returns (stats, written paths). Raises InputError, StrictModeError,
    NoDocumentsError; on any exception or Ctrl-C no final output is created or replaced."""
    from .indexed import AtomicIndexedWriter, token_dtype  # imports megatron-core (and torch)

    if cfg.workers < 1:
        raise InputError("--workers must be at least 1")
    keys = list(cfg.json_keys)
    if not keys or len(set(keys)) != len(keys):
        raise InputError(f"--json-keys must be distinct field names, got {keys}")
    skipped_files: list = []
    sources = discover(cfg.inputs, skipped_files)
    if len(keys) > 1 and any(s.kind == "txt" for s in sources):
        raise InputError("plain-text inputs have one field per document; use a single --json-keys with .txt files")
    tok_file = str(resolve_tokenizer_file(cfg.tokenizer_model))
    tokenizer = load_tokenizer(tok_file)
    dtype = token_dtype(tokenizer.vocab_size)

    stats = Stats(sources, skipped_files=skipped_files)
    progress = Progress(sum(s.size for s in sources), stats, enabled=cfg.progress, interval=cfg.log_interval)
    writer = AtomicIndexedWriter(cfg.output_prefix, keys, dtype)
    results = None
    try:
        batches = iter_batches(sources, keys, batch_bytes=cfg.batch_bytes, txt_mode=cfg.txt_mode, split=cfg.split,
                               max_doc_bytes=cfg.max_doc_bytes)
        results = _ordered_results(batches, cfg.workers, (tok_file, keys, cfg.append_eod, dtype.__name__))
        for res in results:
            if cfg.strict and res.problems:
                p = res.problems[0]
                raise StrictModeError(f"{stats.describe(p)}\n  {REASONS[p.reason]}\n  (--strict stops at the first "
                                      "bad record; without it such records are skipped and counted)")
            for key in keys:
                writer.add_documents(key, res.tokens[key], res.lengths[key])
            stats.add(res.n_docs, sum(int(res.lengths[k].sum()) for k in keys), res.nbytes, res.blank, res.problems)
            progress.update(res.disk_bytes)
        if stats.docs == 0:
            raise NoDocumentsError("no valid document in the input; nothing written"
                                   + (f" (skipped: {dict(stats.skipped)})" if stats.skipped else ""))
        outputs = writer.commit(tokenizer=tokenizer_record(tokenizer))
    except BaseException:
        if results is not None:
            results.close()  # stops the worker pool before the files go
        writer.abort()
        raise
    finally:
        progress.close()
    stats.seconds = stats.elapsed()
    if cfg.summary_json:
        tmp = cfg.summary_json + ".tmp"
        with open(tmp, "w") as f:
            json.dump({**stats.as_dict(), "outputs": outputs, "workers": cfg.workers,
                       "tokenizer": tok_file, "vocab_size": tokenizer.vocab_size}, f, indent=2)
        os.replace(tmp, cfg.summary_json)
    return stats, outputs


__all__ = ["PreprocessConfig", "preprocess", "StrictModeError", "NoDocumentsError", "InputError"]
