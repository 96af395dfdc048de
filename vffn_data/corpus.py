"""Finding input files and reading them as a stream of small batches of documents.

Formats: JSON Lines (``.jsonl``, ``.json``), plain text (``.txt``), each optionally compressed (``.gz``,
``.xz``, ``.bz2``; ``.zst`` when the optional ``zstandard`` package is installed, else the file is
reported as skipped), Parquet (``.parquet``) and ``datasets.save_to_disk`` directories.

Directory inputs are searched recursively, following symlinked folders (each real folder once: a
link loop ends there). Nothing is ignored silently: dotfiles, hidden folders, files of unsupported
types, broken links and link loops are listed as skipped files in the summary.

Why two reading paths: Parquet and save_to_disk data go through the ``datasets`` library (streaming
for Parquet, memory-mapped Arrow for save_to_disk). Line-oriented text is read here, line by line:
``datasets``' JSON loader aborts a whole file at the first malformed line or invalid UTF-8 byte and
cannot name the line, while this tool must skip such a line, count it and report ``file:line``.

The reader only splits input into raw batches (cheap, in the main process); ``decode_batch`` turns a
batch into documents or classified problems and runs in the workers, so JSON parsing scales too.
Memory is bounded by the batch size, never by the corpus size, and by ``max_doc_bytes`` per record:
lines are read with a size cap, so an over-long line (or text file, or Parquet value) is skipped and
counted, never held whole.
"""
from __future__ import annotations

import bz2
import glob
import gzip
import io
import json
import lzma
import logging
import os
import re
import zlib
from dataclasses import dataclass, field
from typing import Iterator

COMPRESSIONS = {".gz": "gzip", ".xz": "xz", ".bz2": "bz2", ".zst": "zstd"}
SUFFIXES = {".parquet": "parquet"}
for _base, _kind in ((".jsonl", "jsonl"), (".json", "jsonl"), (".txt", "txt")):
    SUFFIXES[_base] = _kind
    for _comp in COMPRESSIONS:
        SUFFIXES[_base + _comp] = _kind
DEFAULT_MAX_DOC_BYTES = 64 << 20  # --max-doc-mb 64
WHOLE_FILE = -1  # Problem.loc of a file that could not be read at all
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
    "truncated_compressed": "the .xz/.bz2/.zst stream ends early (interrupted download/copy?); re-fetch the file; lines before it were used",
    "corrupt_compressed": "the .xz/.bz2/.zst data is damaged or not in that format; re-fetch or re-compress the file",
    "unreadable": "the file could not be read by the Parquet/Arrow reader; check it with pyarrow",
    "zstd_unavailable": "reading .zst needs the optional zstandard package: pip install zstandard, or decompress "
                        "first (zstd -d FILE)",
    "too_deep": "the JSON nests deeper than the parser allows (about 1000 levels); such a record is not text data",
    "too_large": "the document is larger than --max-doc-mb; raise the limit if such documents are intended",
}
FILE_LEVEL = {"truncated_gzip", "corrupt_gzip", "truncated_compressed", "corrupt_compressed", "unreadable",
              "zstd_unavailable"}
# Files a directory search passes over: never silently (listed in the summary as skipped files).
FILE_SKIPS = {
    "dotfile": "hidden file (name starts with '.'); give it as an explicit --input to read it",
    "hidden_dir": "hidden folder (name starts with '.') not searched; give it as an explicit --input to read it",
    "unsupported_type": f"not an input type ({', '.join(sorted(SUFFIXES))} or a datasets.save_to_disk folder)",
    "broken_link": "a symlink whose target does not exist",
    "link_loop": "a symlinked folder already searched (a link loop or a second link to it): searched once",
}
_BOM = b"\xef\xbb\xbf"


class InputError(ValueError):
    """An input that cannot be processed at all (missing, unsupported format); message says how to fix."""


@dataclass
class SkippedFile:
    path: str
    reason: str  # a FILE_SKIPS key

    def describe(self) -> str:
        return f"{self.path}: {self.reason}: {FILE_SKIPS[self.reason]}"


@dataclass
class Source:
    path: str
    kind: str  # "jsonl" | "txt" | "parquet" | "arrow"
    compression: str | None = None  # "gzip" | "xz" | "bz2" | "zstd"
    size: int = 0  # bytes on disk, for the progress bar

    @property
    def gzip(self) -> bool:
        return self.compression == "gzip"

    def where(self, loc: int) -> str:
        """Human location of record ``loc``: file:line for text formats, a 0-based row for tables, the
        path alone for the whole file (WHOLE_FILE)."""
        if loc == WHOLE_FILE:
            return self.path
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
    problems: list = field(default_factory=list)  # records the reader already refused (too_large)


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
    comp = COMPRESSIONS.get(os.path.splitext(suf)[1])
    return Source(path, SUFFIXES[suf], compression=comp, size=os.path.getsize(path))


def discover(inputs: list[str], skipped: list | None = None) -> list[Source]:
    """Expand files, directories (recursively, sorted, symlinked folders followed once) and globs
    into an ordered list of sources. Files a directory search passes over are appended to
    ``skipped`` (SkippedFile), or logged as warnings when no list is given."""
    found: list[str] = []
    passed: list[SkippedFile] = []
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
                found.extend(_walk(p, passed))
            else:
                found.append(p)
    if skipped is not None:
        skipped.extend(passed)
    else:
        for sk in passed:
            logging.getLogger("vffn_data").warning("skipped %s", sk.describe())
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


def _walk(root: str, skipped: list) -> list[str]:
    out = []
    visited = {os.path.realpath(root)}
    for dirpath, dirnames, filenames in os.walk(root, followlinks=True):
        dirnames.sort()
        keep = []
        for d in dirnames:
            full = os.path.join(dirpath, d)
            if d.startswith("."):
                skipped.append(SkippedFile(full, "hidden_dir"))
                continue
            real = os.path.realpath(full)
            if real in visited:  # a link loop, or a second link to a folder: read once
                skipped.append(SkippedFile(full, "link_loop"))
                continue
            visited.add(real)
            if _is_saved_dataset(full):
                out.append(full)  # a dataset directory is one input; do not descend into its shards
            else:
                keep.append(d)
        dirnames[:] = keep
        for f in sorted(filenames):
            full = os.path.join(dirpath, f)
            if f.startswith("."):
                skipped.append(SkippedFile(full, "dotfile"))
            elif not os.path.exists(full):
                skipped.append(SkippedFile(full, "broken_link"))
            elif _suffix(f) is None:
                skipped.append(SkippedFile(full, "unsupported_type"))
            else:
                out.append(full)
    skipped.sort(key=lambda sk: sk.path)
    return sorted(out)


# ----------------------------------------------------------------------------------------------
# Readers: raw batches, in input order.

def iter_batches(sources: list[Source], keys: list[str], *, batch_bytes: int = 1 << 20,
                 txt_mode: str = "document", split: str = "train",
                 max_doc_bytes: int = DEFAULT_MAX_DOC_BYTES) -> Iterator[Batch]:
    if txt_mode not in TXT_MODES:
        raise InputError(f"txt mode must be one of {TXT_MODES}, not {txt_mode!r}")
    if max_doc_bytes < 1:
        raise InputError("--max-doc-mb must be positive")
    for i, src in enumerate(sources):
        if src.compression == "zstd" and _zstd() is None:
            yield Batch(i, "lines", [], [], 0, src.size, read_error=Problem("zstd_unavailable", i, WHOLE_FILE))
        elif src.kind == "jsonl":
            yield from _read_lines(i, src, batch_bytes, max_doc_bytes)
        elif src.kind == "txt":
            yield from _read_txt(i, src, batch_bytes, txt_mode, max_doc_bytes)
        elif src.kind == "parquet":
            yield from _read_parquet(i, src, keys, batch_bytes, max_doc_bytes)
        else:
            yield from _read_arrow(i, src, keys, batch_bytes, split, max_doc_bytes)


def _zstd():
    try:
        import zstandard
    except ImportError:
        return None
    return zstandard


def _open(src: Source):
    raw = open(src.path, "rb")
    if src.compression == "gzip":
        return raw, gzip.GzipFile(fileobj=raw, mode="rb")
    if src.compression == "xz":
        return raw, lzma.LZMAFile(raw, mode="rb")
    if src.compression == "bz2":
        return raw, bz2.BZ2File(raw, mode="rb")
    if src.compression == "zstd":
        return raw, io.BufferedReader(_zstd().ZstdDecompressor().stream_reader(raw, read_across_frames=True))
    return raw, raw


# gzip.BadGzipFile and bz2's "Invalid data stream" are OSErrors; zstandard has its own.
_STREAM_ERRORS = (EOFError, OSError, zlib.error, lzma.LZMAError) + ((_zstd().ZstdError,) if _zstd() else ())


def _stream_error(src: Source, index: int, line: int, e: Exception) -> Problem:
    gz = src.compression == "gzip"
    if isinstance(e, EOFError):
        return Problem("truncated_gzip" if gz else "truncated_compressed", index, line, str(e))
    reason = "corrupt_gzip" if gz else "corrupt_compressed" if src.compression else "unreadable"
    return Problem(reason, index, line, f"{type(e).__name__}: {e}")


def _capped_lines(stream, limit: int) -> Iterator[bytes | int]:
    """The stream's lines, each read with a size cap: a line over ``limit`` bytes is consumed in
    64 KiB pieces and yielded as its length (an int) instead, so it is never held whole."""
    while True:
        line = stream.readline(limit + 1)
        if not line:
            return
        if len(line) <= limit or line.endswith(b"\n"):
            yield line
            continue
        total = len(line)
        del line
        while True:
            piece = stream.readline(1 << 16)
            total += len(piece)
            if not piece or piece.endswith(b"\n"):
                break
        yield total


def _too_large(index: int, loc: int, nbytes: int, limit: int) -> Problem:
    return Problem("too_large", index, loc,
                   f"{nbytes / 2**20:,.1f} MiB, over the --max-doc-mb limit of {limit / 2**20:g} MiB")


def _read_lines(index: int, src: Source, batch_bytes: int, max_doc_bytes: int) -> Iterator[Batch]:
    raw, stream = _open(src)
    try:
        items, locs, nbytes, done_disk = [], [], 0, 0
        lineno, error = 0, None
        problems: list[Problem] = []
        try:
            for line in _capped_lines(stream, max_doc_bytes):
                lineno += 1
                if isinstance(line, int):
                    problems.append(_too_large(index, lineno, line, max_doc_bytes))
                    nbytes += line
                    continue
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
                    yield Batch(index, "lines", locs, items, nbytes, pos - done_disk, problems=problems)
                    items, locs, nbytes, done_disk, problems = [], [], 0, pos, []
        except _STREAM_ERRORS as e:
            error = _stream_error(src, index, lineno + 1, e)
        yield Batch(index, "lines", locs, items, nbytes, src.size - done_disk, read_error=error, problems=problems)
    finally:
        stream.close()
        raw.close()


def _read_txt(index: int, src: Source, batch_bytes: int, mode: str, max_doc_bytes: int) -> Iterator[Batch]:
    raw, stream = _open(src)
    try:
        items, locs, nbytes, done_disk = [], [], 0, 0
        lineno, error = 0, None
        problems: list[Problem] = []
        para: list[bytes] = []
        para_start, para_bytes, para_over = 0, 0, False

        def flush_para():
            nonlocal para, para_bytes, para_over
            if para_over:
                problems.append(_too_large(index, para_start, para_bytes, max_doc_bytes))
            elif para:
                items.append(b"".join(para).rstrip(b"\r\n"))
                locs.append(para_start)
            para, para_bytes, para_over = [], 0, False

        try:
            if mode == "document":
                # One file is one document (a book, an article): it has to be held whole, up to the limit.
                data = stream.read(max_doc_bytes + len(_BOM) + 1)
                if data.startswith(_BOM):
                    data = data[len(_BOM):]
                if len(data) > max_doc_bytes:
                    total = len(data)
                    del data
                    while True:
                        piece = stream.read(1 << 20)
                        if not piece:
                            break
                        total += len(piece)
                    problems.append(_too_large(index, 1, total, max_doc_bytes))
                    nbytes = total
                elif data.strip():
                    items, locs, nbytes = [data], [1], len(data)
                else:
                    items, locs = [b""], [1]  # reported as an empty document
            else:
                for line in _capped_lines(stream, max_doc_bytes):
                    lineno += 1
                    if isinstance(line, int):  # one line over the limit: its document is too large
                        nbytes += line
                        if mode == "line":
                            problems.append(_too_large(index, lineno, line, max_doc_bytes))
                        else:
                            if not para and not para_over:
                                para_start = lineno
                            para, para_bytes, para_over = [], para_bytes + line, True
                        continue
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
                        if not para and not para_over:
                            para_start = lineno
                        para_bytes += len(line)
                        if para_over or para_bytes > max_doc_bytes:
                            para, para_over = [], True  # drop what was gathered: memory stays bounded
                        else:
                            para.append(line)
                    nbytes += len(line)
                    if nbytes >= batch_bytes and not para and not para_over:
                        pos = raw.tell()
                        yield Batch(index, "texts", locs, items, nbytes, pos - done_disk, problems=problems)
                        items, locs, nbytes, done_disk, problems = [], [], 0, pos, []
                flush_para()
        except _STREAM_ERRORS as e:
            if mode == "paragraph":
                flush_para()  # the lines read before the damage are still good
            error = _stream_error(src, index, lineno + 1, e)
        yield Batch(index, "texts", locs, items, nbytes, src.size - done_disk, read_error=error, problems=problems)
    finally:
        stream.close()
        raw.close()


def _row_batches(index, src, table_iter, present, missing, batch_bytes, num_rows, max_doc_bytes):
    """Group rows from an iterator of column dicts into byte-sized batches of value tuples."""
    items, locs, nbytes, row, done_disk = [], [], 0, 0, 0
    error = None
    problems: list[Problem] = []
    try:
        for cols in table_iter:
            n = len(next(iter(cols.values()))) if cols else 0
            for j in range(n):
                values = tuple(cols[k][j] for k in present)
                size = sum(len(v) for v in values if isinstance(v, str))
                # characters: a value over the limit in characters is over it in UTF-8 bytes too
                big = max((len(v.encode("utf-8")) for v in values if isinstance(v, str) and 4 * len(v) > max_doc_bytes),
                          default=0)
                if big > max_doc_bytes:
                    problems.append(_too_large(index, row, big, max_doc_bytes))
                else:
                    items.append(values)
                    locs.append(row)
                row += 1
                nbytes += size
            if nbytes >= batch_bytes:
                disk = int(src.size * row / max(num_rows, 1))
                yield Batch(index, "rows", locs, items, nbytes, disk - done_disk, missing_keys=missing, problems=problems)
                items, locs, nbytes, done_disk, problems = [], [], 0, disk, []
    except Exception as e:  # pyarrow raises many types for damaged files; all mean "cannot read on"
        error = Problem("unreadable", index, row, f"{type(e).__name__}: {e}")
    yield Batch(index, "rows", locs, items, nbytes, src.size - done_disk, missing_keys=missing, read_error=error,
                problems=problems)


def _read_parquet(index: int, src: Source, keys: list[str], batch_bytes: int, max_doc_bytes: int) -> Iterator[Batch]:
    import datasets
    import pyarrow.parquet as pq

    try:
        columns = pq.read_schema(src.path).names
        num_rows = pq.read_metadata(src.path).num_rows
    except Exception as e:  # a damaged file is skipped and counted, like a corrupt gzip
        yield Batch(index, "rows", [], [], 0, src.size, read_error=Problem(
            "unreadable", index, WHOLE_FILE, f"not a readable Parquet file ({type(e).__name__}: {e})"))
        return
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
    yield from _row_batches(index, src, table_iter, present, missing, batch_bytes, num_rows, max_doc_bytes)


def _read_arrow(index: int, src: Source, keys: list[str], batch_bytes: int, split: str,
                max_doc_bytes: int) -> Iterator[Batch]:
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
    yield from _row_batches(index, src, table_iter, present, missing, batch_bytes, ds.num_rows, max_doc_bytes)


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
            except RecursionError:
                bad("too_deep", loc, "nested arrays/objects beyond the JSON parser's depth limit")
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
    if batch.problems:
        out.problems.extend(batch.problems)
        out.problems.sort(key=lambda p: p.loc)  # file:line order, whichever stage found the problem
    if batch.read_error is not None:
        out.problems.append(batch.read_error)
    return out


def iter_texts(sources: list[Source], keys: list[str], *, stats=None, strict: bool = False,
               txt_mode: str = "document", split: str = "train",
               max_doc_bytes: int = DEFAULT_MAX_DOC_BYTES) -> Iterator[str]:
    """In-process document texts (every requested key), for tokenizer training. Problems are
    counted in ``stats`` (a summary.Stats); with ``strict`` the first one raises ValueError."""
    for batch in iter_batches(sources, keys, txt_mode=txt_mode, split=split, max_doc_bytes=max_doc_bytes):
        decoded = decode_batch(batch, keys)
        if strict and decoded.problems:
            p = decoded.problems[0]
            raise ValueError(f"{sources[p.source].where(p.loc)}: {p.reason}: {p.detail}\n  {REASONS[p.reason]}")
        if stats is not None:
            stats.add(len(decoded.docs), 0, batch.nbytes, decoded.blank, decoded.problems)
        for doc in decoded.docs:
            yield from doc
