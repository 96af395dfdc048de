"""Writing megatron-core indexed datasets (.bin/.idx) so that an interrupted run never leaves a
pair that looks complete.

Data goes to ``<final>.tmp-<pid>`` names through megatron-core's ``IndexedDatasetBuilder``. On
commit, each key's old ``.idx`` is removed first, then the new ``.bin`` and finally the new ``.idx``
are renamed into place: the ``.idx`` is the commit marker (megatron opens it first and needs both),
so at every instant a crash leaves either the old pair, no pair, or a ``.bin`` with no ``.idx``.
Each pair's sidecar ``.meta.json`` (content fingerprint, tokenizer; see identity.py) goes last; the
old one is removed with the old ``.idx``, so a sidecar never describes a pair it was not written for.
"""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np


def output_paths(prefix: str, key: str) -> tuple[str, str]:
    base = f"{prefix}_{key}_document"
    return base + ".bin", base + ".idx"


def _megatron_indexed():
    import warnings

    # megatron.core's package import warns about missing Transformer Engine/Apex, which the data
    # path never uses; keep the tool output clean.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        from megatron.core.datasets import indexed_dataset
    return indexed_dataset


def token_dtype(vocab_size: int):
    DType = _megatron_indexed().DType

    return DType.optimal_dtype(vocab_size)  # uint16 below 65,500 ids, else int32


def _fsync(path: str) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class AtomicIndexedWriter:
    """One ``IndexedDatasetBuilder`` per key, under temporary names until ``commit``."""

    def __init__(self, prefix: str, keys: list[str], dtype):
        IndexedDatasetBuilder = _megatron_indexed().IndexedDatasetBuilder

        Path(prefix).parent.mkdir(parents=True, exist_ok=True)
        self.dtype = np.dtype(dtype)
        self.keys = list(keys)
        self.final = {k: output_paths(prefix, k) for k in self.keys}
        tag = f".tmp-{os.getpid()}"
        self.tmp = {k: (b + tag, i + tag) for k, (b, i) in self.final.items()}
        self.builders = {}
        try:
            for k in self.keys:
                self.builders[k] = IndexedDatasetBuilder(self.tmp[k][0], dtype=self.dtype.type)
        except BaseException:
            self.abort()
            raise
        self.bin_bytes = {k: 0 for k in self.keys}
        self.n_docs = {k: 0 for k in self.keys}

    def add_documents(self, key: str, tokens: np.ndarray, lengths: np.ndarray) -> None:
        b = self.builders[key]
        start = 0
        for n in lengths.tolist():
            b.add_document(tokens[start:start + n], [n])
            start += n
        self.bin_bytes[key] += tokens.nbytes
        self.n_docs[key] += len(lengths)

    def commit(self, tokenizer: dict | None = None) -> list[str]:
        """Rename the pairs into place; with ``tokenizer`` (identity.tokenizer_record) also write
        each pair's ``.meta.json`` sidecar. Returns the written paths."""
        from .identity import content_fingerprint, meta_path, write_meta

        for k in self.keys:
            self.builders[k].finalize(self.tmp[k][1])  # also closes the .bin
        for k in self.keys:
            for path in self.tmp[k]:
                _fsync(path)
        written = []
        for k in self.keys:
            final_bin, final_idx = self.final[k]
            prefix = final_idx[:-len(".idx")]
            for old in (final_idx, meta_path(prefix)):
                if os.path.exists(old):
                    os.unlink(old)
            os.replace(self.tmp[k][0], final_bin)
            os.replace(self.tmp[k][1], final_idx)
            written += [final_bin, final_idx]
            if tokenizer is not None:
                written.append(write_meta(prefix, content_fingerprint(prefix), tokenizer, self.n_docs[k], key=k))
        self.builders = {}
        return written

    def abort(self) -> None:
        """Close and delete the temporary files (Ctrl-C, strict-mode stop, crash in the parent)."""
        for b in self.builders.values():
            try:
                b.data_file.close()
            except Exception:
                pass
        self.builders = {}
        for paths in self.tmp.values():
            for p in paths:
                if os.path.exists(p):
                    os.unlink(p)
