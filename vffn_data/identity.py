"""What a preprocessed dataset is: its content fingerprint and the tokenizer that made it.

``tools/preprocess_data.py`` writes ``<prefix>.meta.json`` next to each ``<prefix>.bin/.idx`` pair
(``prefix`` = ``OUT_text_document``), atomically and after the pair:

- ``content``: sha256 of the ``.idx`` bytes (document and sequence lengths, dtype) plus the ``.bin``
  size. Cheap (the ``.idx`` is a few bytes per document), and any re-preprocessing that changes the
  documents changes it.
- ``tokenizer``: sha256 of the tokenizer file (``tokenizer.model`` or ``tokenizer.json``), its path,
  kind and vocabulary size.
- ``documents``: the document count.

The trainer recomputes the content fingerprint at start (so a sidecar left over from an older pair
is recognised as stale, never trusted), refuses data whose tokenizer differs from ``data.tokenizer``,
and keys megatron's sample-index cache by the fingerprints (megatron's own cache key is the path).
No torch/megatron import here.
"""
from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass

META_SUFFIX = ".meta.json"
FORMAT = "vffn-indexed-dataset/1"
_memo: dict = {}


def meta_path(prefix: str) -> str:
    return str(prefix) + META_SUFFIX


def content_fingerprint(prefix: str, idx_path: str | None = None) -> str:
    """sha256 of the ``.idx`` bytes and the ``.bin`` size (``idx_path`` overrides ``prefix.idx``)."""
    idx = idx_path or str(prefix) + ".idx"
    bin_path = str(prefix) + ".bin"
    ist, bst = os.stat(idx), os.stat(bin_path)
    key = (os.path.abspath(idx), ist.st_size, ist.st_mtime_ns, ist.st_ino, bst.st_size, bst.st_mtime_ns)
    if key in _memo:
        return _memo[key]
    h = hashlib.sha256()
    with open(idx, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    h.update(f"|bin_bytes={bst.st_size}".encode())
    _memo[key] = h.hexdigest()
    return _memo[key]


def tokenizer_record(tokenizer) -> dict:
    """What the sidecar stores about a vffn_data tokenizer (the file's sha256 identifies it)."""
    uid = tokenizer.unique_identifiers
    return {"sha256": uid["sha256"], "path": str(tokenizer.path), "kind": getattr(tokenizer, "kind", "?"),
            "vocab_size": int(tokenizer.vocab_size)}


def write_meta(prefix: str, fingerprint: str, tokenizer: dict, documents: int, **extra) -> str:
    """Write ``prefix.meta.json`` atomically (temporary name, fsync, rename)."""
    path = meta_path(prefix)
    tmp = f"{path}.tmp-{os.getpid()}"
    data = {"format": FORMAT, "content": fingerprint, "tokenizer": tokenizer, "documents": int(documents), **extra}
    with open(tmp, "w") as f:
        json.dump(data, f, indent=2)
        f.write("\n")
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    return path


@dataclass
class DatasetIdentity:
    prefix: str
    fingerprint: str  # content fingerprint of the pair as it is on disk now
    meta: dict | None  # the sidecar, only when it describes this very pair
    problem: str = ""  # why there is no usable sidecar ("" when meta is set)

    @property
    def tokenizer(self) -> dict | None:
        return (self.meta or {}).get("tokenizer")


def identify(prefix: str) -> DatasetIdentity:
    """The pair's fingerprint and its sidecar, if the sidecar is present, readable and current."""
    fp = content_fingerprint(prefix)
    path = meta_path(prefix)
    if not os.path.exists(path):
        return DatasetIdentity(prefix, fp, None, f"no {os.path.basename(path)} (preprocessed by an older version "
                                                 "or another tool)")
    try:
        with open(path) as f:
            meta = json.load(f)
        if not isinstance(meta, dict) or not isinstance(meta.get("tokenizer"), dict):
            raise ValueError("not a dataset sidecar")
    except (OSError, ValueError) as e:
        return DatasetIdentity(prefix, fp, None, f"{path} is unreadable ({type(e).__name__}: {e})")
    if meta.get("content") != fp:
        return DatasetIdentity(prefix, fp, None, f"{path} describes other data (the .bin/.idx were rewritten "
                                                 "after it, by another tool or an interrupted run)")
    return DatasetIdentity(prefix, fp, meta)


def blend_fingerprint(prefixes: list[str]) -> str:
    """One short key for the content of all blended datasets, in order (the index cache's folder)."""
    h = hashlib.sha256(json.dumps([content_fingerprint(p) for p in prefixes]).encode())
    return h.hexdigest()[:16]
