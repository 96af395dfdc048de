"""Finding input files and reading them as a stream of small batches of documents.

Formats: JSON Lines (``.jsonl``, ``.json``, optionally ``.gz``), plain text (``.txt``, ``.txt.gz``),
Parquet (``.parquet``) and ``datasets.save_to_disk`` directories.

Why two reading paths: Parquet and save_to_disk data go through the ``datasets`` library (streaming
for Parquet, memory-mapped Arrow for save_to_disk). Line-oriented text is read here, line by line:
``datasets``' JSON loader aborts a whole file at the first malformed line or invalid UTF-8 byte and
cannot name the line, while this tool must skip such a line, count it and report ``file:line``.

The reader only splits input into raw batches (cheap, in the main process); ``decode_batch`` turns a
batch into documents or classified problems and runs in the workers, so JSON parsing scales too.
Memory is bounded by the batch size, never by the corpus size.
"""
from __future__ import annotations

import glob
import gzip
import json
import logging
import os
import re
import zlib
from dataclasses import dataclass, field
from typing import Iterator

SUFFIXES = {
    ".jsonl": "jsonl", ".json": "jsonl", ".jsonl.gz": "jsonl", ".json.gz": "jsonl",
    ".txt": "txt", ".txt.gz": "txt", ".parquet": "parquet",
}
TXT_MODES = ("document", "paragraph", "line")

# Why a document was skipped. File-level reasons end the file; the rest skip one record.
REASONS = {
    "invalid_utf8": "the bytes are not valid UTF-8 (or the JSON escapes a lone surrogate); re-encode the file as UTF-8",
    "malformed_json": "the line is not valid JSON; each line must hold one complete JSON object",
    "not_an_object": "the line is valid JSON but not an object ({...}); each line must be one object",
    "missing_key": "the record has no such field; pick the field with --json-keys",
    "non_string": "the field is not a string (null, number, list, ...); fix the record or choose another --json-keys",
    "empty": "the text is empty or whitespace only",
    "truncated_gzip": "the gzip stream ends early (interrupted download/copy?); re-fetch the file; lines before it were used",
    "corrupt_gzip": "the gzip data is damaged or not gzip at all; re-fetch or re-compress the file",
    "unreadable": "the file could not be read by the Parquet/Arrow reader; check it with pyarrow",
}
FILE_LEVEL = {"truncated_gzip", "corrupt_gzip", "unreadable"}
_BOM = b"\xef\xbb\xbf"


class InputError(ValueError):
    """An input that cannot be processed at all (missing, unsupported format); message says how to fix."""


@dataclass
class Source:
    path: str
    kind: str  # "jsonl" | "txt" | "parquet" | "arrow"
    gzip: bool = False
    size: int = 0  # bytes on disk, for the progress bar

    def where(self, loc: int) -> str:
        """Human location of record ``loc``: file:line for text formats, a 0-based row for tables."""
        return f"{self.path}:{loc}" if self.kind in ("jsonl", "txt") else f"{self.path}: row {loc}"


@dataclass
class Problem:
    reason: str
    source: int
    loc: int
    detail: str = ""


@dataclass
class Batch:
    source: int
    kind: str  # "lines" (raw JSON lines) | "texts" (raw text bytes) | "rows" (tuples of values per key)
    locs: list[int]
    items: list
    nbytes: int = 0  # input bytes (decompressed) in this batch, for MB/s
    disk_bytes: int = 0  # on-disk bytes consumed, for the progress bar
    missing_keys: tuple = ()  # rows: requested keys the table does not have
    read_error: Problem | None = None  # a file-level problem found after these items


@dataclass
class Decoded:
    """The valid documents of a batch (one text per requested key) and what was wrong with the rest."""
    docs: list[tuple[str, ...]] = field(default_factory=list)
    locs: list[int] = field(default_factory=list)
    problems: list[Problem] = field(default_factory=list)
    blank: int = 0  # blank lines between records: not documents, not errors


def _suffix(path: str) -> str | None:
    name = path.lower()
    for suf in sorted(SUFFIXES, key=len, reverse=True):
        if name.endswith(suf):
            return suf
    return None


def _is_saved_dataset(path: str) -> bool:
    return os.path.isfile(os.path.join(path, "dataset_dict.json")) or (
        os.path.isfile(os.path.join(path, "state.json")) and os.path.isfile(os.path.join(path, "dataset_info.json")))


def _source(path: str) -> Source:
    if os.path.isdir(path):
        size = sum(os.path.getsize(os.path.join(d, f)) for d, _, files in os.walk(path) for f in files)
        return Source(path, "arrow", size=size)
    suf = _suffix(path)
    if suf is None:
        raise InputError(f"{path}: unsupported input type; supported: {', '.join(SUFFIXES)} files and "
                         "datasets.save_to_disk directories")
    return Source(path, SUFFIXES[suf], gzip=suf.endswith(".gz"), size=os.path.getsize(path))


def discover(inputs: list[str]) -> list[Source]:
    """Expand files, directories (recursively, sorted) and globs into an ordered list of sources."""
    found: list[str] = []
    for spec in inputs:
        if os.path.exists(spec):
            paths = [spec]
        elif glob.has_magic(spec):
            paths = sorted(glob.glob(spec, recursive=True))
            if not paths:
                raise InputError(f"{spec}: the pattern matches no file")
        else:
            raise InputError(f"{spec}: no such file or directory")
        for p in paths:
            if os.path.isdir(p) and not _is_saved_dataset(p):
                found.extend(_walk(p))
            else:
                found.append(p)
    sources, seen = [], set()
    for p in found:
        key = os.path.realpath(p)
        if key in seen:
            # Reading a file twice is almost always an overlapping glob, not intended upsampling
            # (weights belong in the blend).
            logging.getLogger("vffn_data").warning("note: %s is given more than once; reading it once", p)
            continue
        seen.add(key)
        sources.append(_source(p))
    if not sources:
        raise InputError(f"no input files found in {inputs}; supported: {', '.join(SUFFIXES)} and "
                         "datasets.save_to_disk directories")
    return sources


def _walk(root: str) -> list[str]:
    out = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames.sort()
        keep = []
        for d in dirnames:
            if d.startswith("."):
                continue
            full = os.path.join(dirpath, d)
            if _is_saved_dataset(full):
                out.append(full)  # a dataset directory is one input; do not descend into its shards
            else:
                keep.append(d)
        dirnames[:] = keep
        out.extend(os.path.join(dirpath, f) for f in sorted(filenames)
                   if not f.startswith(".") and _suffix(f) is not None)
    return sorted(out)


# ----------------------------------------------------------------------------------------------
# Readers: raw batches, in input order.

def iter_batches(sources: list[Source], keys: list[str], *, batch_bytes: int = 1 << 20,
                 txt_mode: str = "document", split: str = "train") -> Iterator[Batch]:
    if txt_mode not in TXT_MODES:
        raise InputError(f"txt mode must be one of {TXT_MODES}, not {txt_mode!r}")
    for i, src in enumerate(sources):
        if src.kind == "jsonl":
            yield from _read_lines(i, src, batch_bytes)
        elif src.kind == "txt":
            yield from _read_txt(i, src, batch_bytes, txt_mode)
        elif src.kind == "parquet":
            yield from _read_parquet(i, src, keys, batch_bytes)
        else:
            yield from _read_arrow(i, src, keys, batch_bytes, split)


def _open(src: Source):
    raw = open(src.path, "rb")
    return raw, (gzip.GzipFile(fileobj=raw, mode="rb") if src.gzip else raw)


def _stream_error(src: Source, index: int, line: int, e: Exception) -> Problem:
    if isinstance(e, EOFError):
        return Problem("truncated_gzip", index, line, str(e))
    return Problem("corrupt_gzip" if src.gzip else "unreadable", index, line, f"{type(e).__name__}: {e}")


def _read_lines(index: int, src: Source, batch_bytes: int) -> Iterator[Batch]:
    raw, stream = _open(src)
    try:
        items, locs, nbytes, done_disk = [], [], 0, 0
        lineno, error = 0, None
        try:
            for line in stream:
                lineno += 1
                if lineno == 1 and line.startswith(_BOM):
                    line = line[len(_BOM):]  # Windows tools write one; it is not part of the first record
                if lineno == 1 and line.lstrip()[:1] == b"[":
                    raise InputError(
                        f"{src.path}:1: this is a JSON array; JSON inputs must be JSON Lines (one object per line, "
                        f"as in Megatron-LM). Convert it with: jq -c '.[]' {src.path} > out.jsonl")
                items.append(line)
                locs.append(lineno)
                nbytes += len(line)
                if nbytes >= batch_bytes:
                    pos = raw.tell()
                    yield Batch(index, "lines", locs, items, nbytes, pos - done_disk)
                    items, locs, nbytes, done_disk = [], [], 0, pos
        except (EOFError, OSError, zlib.error) as e:  # gzip.BadGzipFile is an OSError
            error = _stream_error(src, index, lineno + 1, e)
        yield Batch(index, "lines", locs, items, nbytes, src.size - done_disk, read_error=error)
    finally:
        stream.close()
        raw.close()


def _read_txt(index: int, src: Source, batch_bytes: int, mode: str) -> Iterator[Batch]:
    raw, stream = _open(src)
    try:
        items, locs, nbytes, done_disk = [], [], 0, 0
        lineno, error = 0, None
        para: list[bytes] = []
        para_start = 0

        def flush_para():
            nonlocal para
            if para:
                items.append(b"".join(para).rstrip(b"\r\n"))
                locs.append(para_start)
                para = []

        try:
            if mode == "document":
                # One file is one document (a book, an article): it has to be held whole.
                data = stream.read()
                if data.startswith(_BOM):
                    data = data[len(_BOM):]
                if data.strip():
                    items, locs, nbytes = [data], [1], len(data)
                else:
                    items, locs = [b""], [1]  # reported as an empty document
            else:
                for line in stream:
                    lineno += 1
                    if lineno == 1 and line.startswith(_BOM):
                        line = line[len(_BOM):]
                    blank = not line.strip()
                    if mode == "line":
                        if not blank:
                            items.append(line.rstrip(b"\r\n"))
                            locs.append(lineno)
                    elif blank:
                        flush_para()
                    else:
                        if not para:
                            para_start = lineno
                        para.append(line)
                    nbytes += len(line)
                    if nbytes >= batch_bytes and not para:
                        pos = raw.tell()
                        yield Batch(index, "texts", locs, items, nbytes, pos - done_disk)
                        items, locs, nbytes, done_disk = [], [], 0, pos
                flush_para()
        except (EOFError, OSError, zlib.error) as e:
            if mode == "paragraph":
                flush_para()  # the lines read before the damage are still good
            error = _stream_error(src, index, lineno + 1, e)
        yield Batch(index, "texts", locs, items, nbytes, src.size - done_disk, read_error=error)
    finally:
        stream.close()
        raw.close()


def _row_batches(index, src, table_iter, present, missing, batch_bytes, num_rows):
    """Group rows from an iterator of column dicts into byte-sized batches of value tuples."""
    items, locs, nbytes, row, done_disk = [], [], 0, 0, 0
    error = None
    try:
        for cols in table_iter:
            n = len(next(iter(cols.values()))) if cols else 0
            for j in range(n):
                values = tuple(cols[k][j] for k in present)
                items.append(values)
                locs.append(row)
                row += 1
                nbytes += sum(len(v) for v in values if isinstance(v, str))
            if nbytes >= batch_bytes:
                disk = int(src.size * row / max(num_rows, 1))
                yield Batch(index, "rows", locs, items, nbytes, disk - done_disk, missing_keys=missing)
                items, locs, nbytes, done_disk = [], [], 0, disk
    except Exception as e:  # pyarrow raises many types for damaged files; all mean "cannot read on"
        error = Problem("unreadable", index, row, f"{type(e).__name__}: {e}")
    yield Batch(index, "rows", locs, items, nbytes, src.size - done_disk, missing_keys=missing, read_error=error)


def _read_parquet(index: int, src: Source, keys: list[str], batch_bytes: int) -> Iterator[Batch]:
    import datasets
    import pyarrow.parquet as pq

    try:
        columns = pq.read_schema(src.path).names
        num_rows = pq.read_metadata(src.path).num_rows
    except Exception as e:
        raise InputError(f"{src.path}: not a readable Parquet file ({type(e).__name__}: {e})") from e
    present = [k for k in keys if k in columns]
    missing = tuple(k for k in keys if k not in columns)
    # Streaming: rows come from pyarrow record batches, nothing is copied into the HF cache.
    ds = datasets.load_dataset("parquet", data_files=[os.path.abspath(src.path)], split="train", streaming=True)
    if present:
        ds = ds.select_columns(present)
        table_iter = ds.iter(batch_size=256)
    else:
        # No requested column at all: still walk the rows so each is counted (and located) as missing.
        table_iter = ({"__row__": [None] * b.num_rows} for b in pq.ParquetFile(src.path).iter_batches(columns=[]))
    yield from _row_batches(index, src, table_iter, present, missing, batch_bytes, num_rows)


def _read_arrow(index: int, src: Source, keys: list[str], batch_bytes: int, split: str) -> Iterator[Batch]:
    import datasets

    try:
        ds = datasets.load_from_disk(src.path)  # memory-mapped Arrow: nothing is loaded up front
    except Exception as e:
        raise InputError(f"{src.path}: not a readable datasets.save_to_disk directory ({type(e).__name__}: {e})") from e
    if isinstance(ds, datasets.DatasetDict):
        if split not in ds:
            raise InputError(f"{src.path}: no split {split!r} in this DatasetDict (it has {list(ds)}); choose one with --split")
        ds = ds[split]
    present = [k for k in keys if k in ds.column_names]
    missing = tuple(k for k in keys if k not in ds.column_names)
    if present:
        table_iter = ds.select_columns(present).iter(batch_size=256)
    else:
        table_iter = ({"__row__": [None] * min(256, ds.num_rows - s)} for s in range(0, ds.num_rows, 256))
    yield from _row_batches(index, src, table_iter, present, missing, batch_bytes, ds.num_rows)


# ----------------------------------------------------------------------------------------------
# Decoding: raw batch -> documents + problems (runs in the workers).

_SURROGATE = re.compile("[\ud800-\udfff]")


def _check_text(value, key: str, escapes_possible: bool) -> tuple[str | None, str]:
    """(reason, detail) for a field value that cannot be a document, else (None, "")."""
    if not isinstance(value, str):
        kind = "null" if value is None else type(value).__name__
        return "non_string", f"field {key!r} is {kind}"
    if not value.strip():
        return "empty", f"field {key!r} is empty" if not value else f"field {key!r} is whitespace only"
    if escapes_possible and _SURROGATE.search(value):
        return "invalid_utf8", f"field {key!r} contains a lone surrogate escape (\\ud800-\\udfff)"
    return None, ""


def _utf8_error_detail(data: bytes, e: UnicodeDecodeError) -> tuple[int, str]:
    """Line offset within ``data`` (0-based) and a description of the bad bytes."""
    line = data.count(b"\n", 0, e.start)
    col = e.start - (data.rfind(b"\n", 0, e.start) + 1) + 1
    return line, f"byte 0x{data[e.start]:02x} at column {col}: {e.reason}"


def decode_batch(batch: Batch, keys: list[str]) -> Decoded:
    out = Decoded()

    def bad(reason, loc, detail):
        out.problems.append(Problem(reason, batch.source, loc, detail))

    if batch.kind == "lines":
        for line, loc in zip(batch.items, batch.locs):
            if not line.strip():
                out.blank += 1
                continue
            try:
                text = line.decode("utf-8")
            except UnicodeDecodeError as e:
                bad("invalid_utf8", loc, _utf8_error_detail(line, e)[1])
                continue
            try:
                record = json.loads(text)
            except json.JSONDecodeError as e:
                bad("malformed_json", loc, f"{e.msg} at column {e.colno}")
                continue
            if not isinstance(record, dict):
                bad("not_an_object", loc, f"found a JSON {type(record).__name__}")
                continue
            values = []
            for key in keys:
                if key not in record:
                    bad("missing_key", loc, f"no field {key!r} (fields: {', '.join(list(record)[:8])})")
                    break
                reason, detail = _check_text(record[key], key, "\\u" in text)
                if reason:
                    bad(reason, loc, detail)
                    break
                values.append(record[key])
            else:
                # All keys valid or none used: keeping outputs of several keys aligned by document.
                out.docs.append(tuple(values))
                out.locs.append(loc)
    elif batch.kind == "texts":
        for data, loc in zip(batch.items, batch.locs):
            try:
                text = data.decode("utf-8")
            except UnicodeDecodeError as e:
                offset, detail = _utf8_error_detail(data, e)
                bad("invalid_utf8", loc + offset, detail)
                continue
            if not text.strip():
                bad("empty", loc, "empty text")
                continue
            out.docs.append(tuple(text for _ in keys))
            out.locs.append(loc)
    else:
        for values, loc in zip(batch.items, batch.locs):
            if batch.missing_keys:
                bad("missing_key", loc, f"no column {batch.missing_keys[0]!r}")
                continue
            for key, value in zip(keys, values):
                reason, detail = _check_text(value, key, False)
                if reason:
                    bad(reason, loc, detail)
                    break
            else:
                out.docs.append(tuple(values))
                out.locs.append(loc)
    if batch.read_error is not None:
        out.problems.append(batch.read_error)
    return out


def iter_texts(sources: list[Source], keys: list[str], *, stats=None, strict: bool = False,
               txt_mode: str = "document", split: str = "train") -> Iterator[str]:
    """In-process document texts (every requested key), for tokenizer training. Problems are
    counted in ``stats`` (a summary.Stats); with ``strict`` the first one raises ValueError."""
    for batch in iter_batches(sources, keys, txt_mode=txt_mode, split=split):
        decoded = decode_batch(batch, keys)
        if strict and decoded.problems:
            p = decoded.problems[0]
            raise ValueError(f"{sources[p.source].where(p.loc)}: {p.reason}: {p.detail}\n  {REASONS[p.reason]}")
        if stats is not None:
            stats.add(len(decoded.docs), 0, batch.nbytes, decoded.blank, decoded.problems)
        for doc in decoded.docs:
            yield from doc
