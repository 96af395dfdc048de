"""Preprocessing inputs (issue 15, case 9): compressed formats, symlinked folders and dotfiles in a directory
input, a corrupt Parquet among good files, pathological records (deep nesting, a document above --max-doc-mb),
memory bounded by the limit. Small generated files only."""
import bz2
import gzip
import json
import lzma
import os
import tracemalloc

import pytest
from megatron.core.datasets.indexed_dataset import IndexedDataset

from helpers.data import load_tool
from helpers.workspace import make_tokenizer


def _doc(i):
    return json.dumps({"text": f"w{4 + i % 100} w5 w6 w7"}) + "\n"


def _jsonl(n, start=0) -> bytes:
    return "".join(_doc(start + i) for i in range(n)).encode()


@pytest.fixture(scope="module")
def tok(tmp_path_factory):
    return make_tokenizer(tmp_path_factory.mktemp("tok") / "tok")


def _run(tok, inputs, prefix, *extra):
    argv = ["--input", *map(str, inputs), "--tokenizer-model", str(tok), "--output-prefix", str(prefix),
            "--no-progress", "--summary-json", f"{prefix}.summary.json", *extra]
    rc = load_tool("preprocess_data").main(argv)
    summary = json.loads(open(f"{prefix}.summary.json").read()) if os.path.exists(f"{prefix}.summary.json") else None
    return rc, summary


def test_directory_reads_compressed_and_linked_and_reports_the_rest(tmp_path, tok, capsys):
    """Before: 10 of 50 documents written, 'skipped 0 (no bad input)'."""
    d = tmp_path / "in"
    (d / "sub").mkdir(parents=True)
    (d / "a.jsonl").write_bytes(_jsonl(10, 0))
    (d / "b.jsonl.xz").write_bytes(lzma.compress(_jsonl(10, 10)))
    (d / "c.jsonl.bz2").write_bytes(bz2.compress(_jsonl(10, 20)))
    (d / "sub" / "g.txt.gz").write_bytes(gzip.compress(b"w9 w9 w9"))
    outside = tmp_path / "elsewhere"
    outside.mkdir()
    (outside / "e.jsonl").write_bytes(_jsonl(10, 30))
    os.symlink(outside, d / "linked")  # a symlinked folder: followed
    os.symlink(d, d / "sub" / "loop")  # a link loop: searched once
    (d / ".hidden.jsonl").write_bytes(_jsonl(10, 40))  # a dotfile: reported
    (d / "README.md").write_text("about")
    os.symlink(tmp_path / "gone.jsonl", d / "broken.jsonl")
    try:
        import zstandard

        (d / "z.jsonl.zst").write_bytes(zstandard.ZstdCompressor().compress(_jsonl(10, 50)))
        zst_docs = 10
    except ImportError:
        (d / "z.jsonl.zst").write_bytes(b"\x28\xb5\x2f\xfd not really")
        zst_docs = 0
    rc, s = _run(tok, [d], tmp_path / "out")
    out = capsys.readouterr().out
    assert rc == 0
    assert s["documents_written"] == 41 + zst_docs
    assert len(IndexedDataset(str(tmp_path / "out_text_document"))) == 41 + zst_docs
    files = {os.path.relpath(f["path"], d): f["reason"] for f in s["skipped_files"]}
    assert files == {".hidden.jsonl": "dotfile", "README.md": "unsupported_type", "broken.jsonl": "broken_link",
                     os.path.join("sub", "loop"): "link_loop"}
    if not zst_docs:
        assert s["skipped"] == {"zstd_unavailable": 1}
        assert "pip install zstandard" in out and f"e.g. {d / 'z.jsonl.zst'}: zstd_unavailable" in out
    assert "no bad input" not in out and "skipped files      4" in out and ".hidden.jsonl" in out


def test_corrupt_parquet_is_skipped_and_counted_like_a_corrupt_gzip(tmp_path, tok):
    """Before: a corrupt .parquet aborted the whole multi-file run (a corrupt .gz was skipped and counted)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    good = tmp_path / "good.parquet"
    pq.write_table(pa.table({"text": ["w5 w6", "w7 w8"]}), good)
    bad = tmp_path / "bad.parquet"
    bad.write_bytes(good.read_bytes()[:40] + b"\x00" * 30)
    bad_gz = tmp_path / "bad.jsonl.gz"
    bad_gz.write_bytes(b"not gzip at all")
    plain = tmp_path / "p.jsonl"
    plain.write_bytes(_jsonl(3))
    rc, s = _run(tok, [good, bad, bad_gz, plain], tmp_path / "out")
    assert rc == 0 and s["documents_written"] == 5
    assert s["skipped"] == {"unreadable": 1, "corrupt_gzip": 1}
    assert s["skipped_examples"]["unreadable"][0].startswith(f"{bad}: unreadable: not a readable Parquet file")


def test_pathological_records_are_skipped_with_file_and_line(tmp_path, tok):
    """Before: a JSON line nested 100,000 deep aborted the run with a RecursionError; a huge line was held
    whole (200 MB took 9 GiB). Here: --max-doc-mb 1 and a 3 MB line."""
    src = tmp_path / "in.jsonl"
    with open(src, "wb") as f:
        f.write(_jsonl(2))
        f.write(b'{"text": "w5", "x": ' + b"[" * 100_000 + b"]" * 100_000 + b"}\n")  # line 3
        f.write(_jsonl(1))
        f.write(b'{"text": "' + b"w5 " * 1_000_000 + b'"}\n')  # line 5: 3 MB
        f.write(_jsonl(2))
    txt = tmp_path / "big.txt"
    txt.write_bytes(b"w6 " * 1_000_000)  # a 3 MB text document
    rc, s = _run(tok, [src, txt], tmp_path / "out", "--max-doc-mb", "1")
    assert rc == 0 and s["documents_written"] == 5
    assert s["skipped"] == {"too_deep": 1, "too_large": 2}
    assert s["skipped_examples"]["too_deep"][0].startswith(f"{src}:3: too_deep")
    assert s["skipped_examples"]["too_large"][0].startswith(f"{src}:5: too_large: 2.9 MiB, over the --max-doc-mb "
                                                             "limit of 1 MiB")
    assert s["skipped_examples"]["too_large"][1].startswith(f"{txt}:1: too_large")


def _write(path, data: bytes):
    name = str(path)
    path.write_bytes(lzma.compress(data) if name.endswith(".xz") else bz2.compress(data) if name.endswith(".bz2")
                     else data)
    return path


def _peak(path, mode):
    """(problems, peak traced bytes) of reading ``path`` with a 1 MB document limit."""
    from vffn_data.corpus import decode_batch, discover, iter_batches

    sources = discover([str(path)])
    tracemalloc.start()
    try:
        problems = [p.reason for b in iter_batches(sources, ["text"], txt_mode=mode, max_doc_bytes=1 << 20)
                    for p in decode_batch(b, ["text"]).problems]
        return problems, tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


@pytest.mark.parametrize("name,mode", [("in.jsonl", "document"), ("in.txt.xz", "line"),
                                       ("in.txt.bz2", "paragraph"), ("in.txt", "document")])
def test_memory_is_bounded_by_the_document_limit(tmp_path, name, mode):
    """A 6 MB record with a 1 MB limit is never held whole, by any reader: beyond what reading a small file of
    the same format takes (the xz decoder's own buffers), the peak is about twice the limit, far under the record."""
    body = b"w5 " * 2_000_000
    if name.endswith(".jsonl"):
        data = _jsonl(1) + b'{"text": "' + body + b'"}\n' + _jsonl(1)
    else:
        data = b"w1\n\n" + body + b"\n\nw2\n"
    del body
    _write(tmp_path / ("small-" + name), _jsonl(3) if name.endswith(".jsonl") else b"w1\n\nw2\n")
    base = _peak(tmp_path / ("small-" + name), mode)[1]
    problems, peak = _peak(_write(tmp_path / name, data), mode)
    assert problems == ["too_large"]
    assert peak - base < 3.2e6, f"peak {peak / 1e6:.1f} MB ({base / 1e6:.1f} MB for a small file) for a 6 MB record"
