"""preprocess_data.py round trips: megatron-core's IndexedDataset gives back exactly the tokenizer's
encoding of every valid document, in input order, for 1 and 4 workers (issue 3, acceptance 1)."""
import json
import shutil

import numpy as np
import pytest
from megatron.core.datasets.indexed_dataset import IndexedDataset

from helpers.data import bundled_docs, leftovers, load_tool, paragraphs_jsonl, trained_tokenizer
from vffn_data.bundled import corpus_path
from vffn_data.tokenizer import load_tokenizer

TOOL = load_tool("preprocess_data")


def run(*argv):
    return TOOL.main([*map(str, argv), "--no-progress"])


def assert_round_trip(prefix, texts, tok, eod=True):
    ds = IndexedDataset(str(prefix))
    assert len(ds) == len(texts)
    assert ds.document_indices.tolist() == list(range(len(texts) + 1))
    for i, text in enumerate(texts):
        expected = tok.encode(text) + ([tok.eod] if eod else [])
        assert ds[i].tolist() == expected, f"document {i} differs"


@pytest.mark.parametrize("workers", [1, 4])
def test_bundled_corpus_round_trip(tmp_path, workers, capsys):
    tok_dir = trained_tokenizer(4096)
    prefix = tmp_path / "data" / "corpus"
    summary = tmp_path / "summary.json"
    assert run("--input", corpus_path(), "--tokenizer-model", tok_dir, "--output-prefix", prefix,
               "--append-eod", "--workers", workers, "--batch-mb", "0.25", "--summary-json", summary) == 0
    out = capsys.readouterr().out
    assert "documents written  798" in out and "no bad input" in out
    tok = load_tokenizer(tok_dir)
    assert_round_trip(f"{prefix}_text_document", bundled_docs(), tok)
    ds = IndexedDataset(f"{prefix}_text_document")
    assert ds.index.dtype == np.uint16  # vocab 4096 < 65,500
    s = json.loads(summary.read_text())
    assert s["documents_written"] == 798 and s["tokens"] == int(ds.sequence_lengths.sum()) and s["skipped"] == {}
    assert leftovers(tmp_path / "data") == []


@pytest.mark.parametrize("workers", [1, 4])
def test_jsonl_few_thousand_documents_two_keys(tmp_path, workers):
    """3,000 paragraphs, tiny batches (many work units in flight) and two keys written side by side."""
    tok_dir = trained_tokenizer(4096)
    src = paragraphs_jsonl(3000)
    prefix = tmp_path / "para"
    assert run("--input", src, "--tokenizer-model", tok_dir, "--output-prefix", prefix, "--json-keys", "text", "title",
               "--workers", workers, "--batch-mb", "0.02") == 0
    records = [json.loads(l) for l in src.read_text().splitlines()]
    tok = load_tokenizer(tok_dir)
    assert_round_trip(f"{prefix}_text_document", [r["text"] for r in records], tok, eod=False)
    assert_round_trip(f"{prefix}_title_document", [r["title"] for r in records], tok, eod=False)


def test_workers_give_identical_files(tmp_path):
    tok_dir = trained_tokenizer(4096)
    src = paragraphs_jsonl(3000)
    for w in (1, 2):
        assert run("--input", src, "--tokenizer-model", tok_dir, "--output-prefix", tmp_path / f"w{w}",
                   "--append-eod", "--workers", w, "--batch-mb", "0.05") == 0
    for ext in ("bin", "idx"):
        assert (tmp_path / f"w1_text_document.{ext}").read_bytes() == (tmp_path / f"w2_text_document.{ext}").read_bytes()


def test_hf_tokenizer_json_gives_same_tokens(tmp_path):
    tok_dir = trained_tokenizer(4096)
    src = paragraphs_jsonl(3000)
    assert run("--input", src, "--tokenizer-model", tok_dir / "tokenizer.json", "--output-prefix", tmp_path / "hf",
               "--append-eod", "--workers", 2) == 0
    assert run("--input", src, "--tokenizer-model", tok_dir / "tokenizer.model", "--output-prefix", tmp_path / "sp",
               "--append-eod") == 0
    assert (tmp_path / "hf_text_document.bin").read_bytes() == (tmp_path / "sp_text_document.bin").read_bytes()


def test_parquet_save_to_disk_txt_and_directory_inputs(tmp_path):
    """Every input type, mixed in one run, in the order given; directories sorted by path."""
    import datasets

    tok_dir = trained_tokenizer(4096)
    tok = load_tokenizer(tok_dir)
    docs = list(bundled_docs())
    a, b, c, d = docs[:40], docs[40:80], docs[80:83], docs[83:100]
    pq = tmp_path / "shard.parquet"
    datasets.Dataset.from_dict({"text": a, "n": list(range(40))}).to_parquet(str(pq))
    saved = tmp_path / "saved"
    datasets.DatasetDict({"train": datasets.Dataset.from_dict({"text": b}),
                          "test": datasets.Dataset.from_dict({"text": ["held out"]})}).save_to_disk(str(saved))
    txt_dir = tmp_path / "books"
    (txt_dir / "sub").mkdir(parents=True)
    for i, t in enumerate(c):
        (txt_dir / ("sub" if i == 1 else "") / f"{i}.txt").write_text(t, encoding="utf-8")
    (txt_dir / "ignored.csv").write_text("not an input")
    (tmp_path / "lines.txt").write_text("\n".join(x.replace("\n", " ") for x in d) + "\n\n", encoding="utf-8")

    prefix = tmp_path / "mixed"
    assert run("--input", pq, saved, txt_dir, "--tokenizer-model", tok_dir, "--output-prefix", prefix,
               "--append-eod", "--workers", 2) == 0
    # directory order is by path: books/0.txt, books/2.txt, books/sub/1.txt; the DatasetDict's train split only
    assert_round_trip(f"{prefix}_text_document", a + b + [c[0], c[2], c[1]], tok)

    # --txt-mode line with a glob; the blank lines at the end are not documents
    assert run("--input", tmp_path / "lin*.txt", "--txt-mode", "line", "--tokenizer-model", tok_dir,
               "--output-prefix", tmp_path / "lines", "--workers", 2) == 0
    assert_round_trip(tmp_path / "lines_text_document", [x.replace("\n", " ") for x in d], tok, eod=False)


def test_txt_document_and_paragraph_modes(tmp_path):
    tok_dir = trained_tokenizer(4096)
    tok = load_tokenizer(tok_dir)
    text = bundled_docs()[5]
    (tmp_path / "book.txt").write_text(text, encoding="utf-8")
    assert run("--input", tmp_path / "book.txt", "--tokenizer-model", tok_dir, "--output-prefix", tmp_path / "doc") == 0
    assert_round_trip(tmp_path / "doc_text_document", [text], tok, eod=False)
    assert run("--input", tmp_path / "book.txt", "--txt-mode", "paragraph", "--tokenizer-model", tok_dir,
               "--output-prefix", tmp_path / "par") == 0
    paras = [p.strip("\n") for p in text.split("\n\n") if p.strip()]
    assert_round_trip(tmp_path / "par_text_document", paras, tok, eod=False)


def test_output_replaces_previous_pair(tmp_path):
    tok_dir = trained_tokenizer(4096)
    prefix = tmp_path / "x"
    src = paragraphs_jsonl(3000)
    small = tmp_path / "small.jsonl"
    small.write_text("".join(src.read_text().splitlines(keepends=True)[:10]))
    assert run("--input", src, "--tokenizer-model", tok_dir, "--output-prefix", prefix) == 0
    assert run("--input", small, "--tokenizer-model", tok_dir, "--output-prefix", prefix) == 0
    assert len(IndexedDataset(f"{prefix}_text_document")) == 10
    assert leftovers(tmp_path) == []


def test_quickstart_invocation(tmp_path, capsys):
    """The exact commands the quickstart runs (as subprocess-free calls of the same CLIs)."""
    tok_dir = tmp_path / "runs" / "quickstart" / "tokenizer"
    assert load_tool("train_tokenizer").main(["--input", str(corpus_path()), "--output-dir", str(tok_dir),
                                              "--vocab-size", "4096"]) == 0
    prefix = tmp_path / "runs" / "quickstart" / "data" / "corpus"
    assert TOOL.main(["--input", str(corpus_path()), "--tokenizer-model", str(tok_dir), "--output-prefix", str(prefix),
                      "--append-eod", "--workers", "2"]) == 0
    assert IndexedDataset.exists(f"{prefix}_text_document")
    shutil.rmtree(tmp_path / "runs")
