"""Bad input: skipped and counted with file:line by default, first one fatal with --strict
(issue 3, acceptance 2); interrupted runs never leave a complete-looking .bin/.idx pair."""
import gzip
import json
import os
import signal
import subprocess
import sys
import time

import pytest
from megatron.core.datasets.indexed_dataset import IndexedDataset

from helpers import REPO
from helpers.data import bundled_docs, leftovers, load_tool, outputs_exist, trained_tokenizer, write_lines
from vffn_data.tokenizer import load_tokenizer

TOOL = load_tool("preprocess_data")
GOOD = [{"text": bundled_docs()[0][:300]}, {"text": bundled_docs()[1][:300]}]

# (case, bad line, reason, detail fragment)
LINE_CASES = [
    ("malformed_json", b'{"text": "unterminated\n', "malformed_json", "column"),
    ("invalid_utf8", b'{"text": "caf\xe9 au lait"}\n', "invalid_utf8", "byte 0xe9"),
    ("lone_surrogate", b'{"text": "bad \\ud800 escape"}\n', "invalid_utf8", "surrogate"),
    ("missing_key", b'{"content": "no text field"}\n', "missing_key", "'text'"),
    ("number", b'{"text": 42}\n', "non_string", "int"),
    ("null", b'{"text": null}\n', "non_string", "null"),
    ("list", b'{"text": ["a", "b"]}\n', "non_string", "list"),
    ("empty", b'{"text": ""}\n', "empty", "empty"),
    ("whitespace", b'{"text": " \\n\\t "}\n', "empty", "whitespace"),
    ("not_object", b'["text", "x"]\n', "not_an_object", "list"),
]


def run(*argv):
    return TOOL.main([*map(str, argv), "--no-progress"])


@pytest.fixture(scope="module")
def tok_dir():
    return trained_tokenizer(4096)


@pytest.mark.parametrize("case,line,reason,detail", LINE_CASES, ids=[c[0] for c in LINE_CASES])
def test_bad_line_default_skips_and_reports(tmp_path, tok_dir, capsys, case, line, reason, detail):
    src = write_lines(tmp_path / "in.jsonl", [GOOD[0], line, b"\n", GOOD[1]])
    assert run("--input", src, "--tokenizer-model", tok_dir, "--output-prefix", tmp_path / "o", "--append-eod") == 0
    out = capsys.readouterr().out
    assert f"{src}:2: {reason}" in out and detail in out
    assert "documents written  2" in out and "blank lines ignored 1" in out
    tok = load_tokenizer(tok_dir)
    ds = IndexedDataset(str(tmp_path / "o_text_document"))
    assert [ds[i].tolist() for i in range(len(ds))] == [tok.encode(g["text"]) + [tok.eod] for g in GOOD]


@pytest.mark.parametrize("case,line,reason,detail", LINE_CASES, ids=[c[0] for c in LINE_CASES])
def test_bad_line_strict_stops(tmp_path, tok_dir, capsys, case, line, reason, detail):
    src = write_lines(tmp_path / "in.jsonl", [GOOD[0], line, GOOD[1]])
    assert run("--input", src, "--tokenizer-model", tok_dir, "--output-prefix", tmp_path / "o", "--strict") == 1
    err = capsys.readouterr().err
    assert f"{src}:2: {reason}" in err and "no output written" in err
    assert outputs_exist(tmp_path / "o") == (False, False) and leftovers(tmp_path) == []


def _big_gzip(n=3000):
    lines = b"".join(json.dumps({"text": f"{i}: " + bundled_docs()[i % 50][:200]}).encode() + b"\n" for i in range(n))
    return gzip.compress(lines)


def test_truncated_gzip(tmp_path, tok_dir, capsys):
    data = _big_gzip()
    src = tmp_path / "cut.jsonl.gz"
    src.write_bytes(data[: len(data) // 2])
    assert run("--input", src, "--tokenizer-model", tok_dir, "--output-prefix", tmp_path / "o") == 0
    out = capsys.readouterr().out
    n = len(IndexedDataset(str(tmp_path / "o_text_document")))
    assert 0 < n < 3000
    assert f"{src}:{n + 1}: truncated_gzip" in out and "re-fetch" in out
    assert run("--input", src, "--tokenizer-model", tok_dir, "--output-prefix", tmp_path / "s", "--strict") == 1
    assert f"{src}:{n + 1}: truncated_gzip" in capsys.readouterr().err
    assert outputs_exist(tmp_path / "s") == (False, False)


def test_corrupt_and_fake_gzip(tmp_path, tok_dir, capsys):
    fake = write_lines(tmp_path / "fake.jsonl.gz", GOOD)  # plain text with a .gz name
    good = write_lines(tmp_path / "good.jsonl", GOOD)
    assert run("--input", fake, good, "--tokenizer-model", tok_dir, "--output-prefix", tmp_path / "o") == 0
    out = capsys.readouterr().out
    assert f"{fake}:1: corrupt_gzip" in out and "documents written  2" in out


def test_bad_parquet_values(tmp_path, tok_dir, capsys):
    import datasets

    pq = tmp_path / "t.parquet"
    datasets.Dataset.from_dict({"text": ["good one", None, "", "good two"]}).to_parquet(str(pq))
    assert run("--input", pq, "--tokenizer-model", tok_dir, "--output-prefix", tmp_path / "o") == 0
    out = capsys.readouterr().out
    assert f"{pq}: row 1: non_string" in out and f"{pq}: row 2: empty" in out and "documents written  2" in out
    assert run("--input", pq, "--tokenizer-model", tok_dir, "--output-prefix", tmp_path / "o", "--json-keys", "body",
               "--strict") == 1
    assert f"{pq}: row 0: missing_key: no column 'body'" in capsys.readouterr().err


def test_invalid_utf8_in_txt_names_the_line(tmp_path, tok_dir, capsys):
    src = tmp_path / "book.txt"
    src.write_bytes(b"line one\nline two\nline \xff three\n")
    assert run("--input", src, "--tokenizer-model", tok_dir, "--output-prefix", tmp_path / "o", "--strict") == 1
    assert f"{src}:3: invalid_utf8: byte 0xff at column 6" in capsys.readouterr().err


@pytest.mark.parametrize("setup,message", [
    (lambda d: d / "missing.jsonl", "no such file or directory"),
    (lambda d: (d / "x.csv").write_text("a,b") and d / "x.csv", "unsupported input type"),
    (lambda d: (d / "arr.json").write_text('[{"text": "a"}]') and d / "arr.json", "jq -c"),
    (lambda d: d / "nomatch-*.jsonl", "matches no file"),
])
def test_unusable_inputs_exit_2(tmp_path, tok_dir, capsys, setup, message):
    assert run("--input", setup(tmp_path), "--tokenizer-model", tok_dir, "--output-prefix", tmp_path / "o") == 2
    assert message in capsys.readouterr().err
    assert outputs_exist(tmp_path / "o") == (False, False) and leftovers(tmp_path) == []


def test_no_valid_documents_exit_1(tmp_path, tok_dir, capsys):
    src = write_lines(tmp_path / "in.jsonl", [b"{bad\n", {"text": ""}])
    assert run("--input", src, "--tokenizer-model", tok_dir, "--output-prefix", tmp_path / "o") == 1
    assert "no valid document" in capsys.readouterr().err
    assert outputs_exist(tmp_path / "o") == (False, False)


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGKILL], ids=["ctrl-c", "kill-9"])
def test_interrupt_never_leaves_a_complete_pair(tmp_path, tok_dir, sig):
    """Interrupted mid-run with an older pair already in place: Ctrl-C removes its temporaries and
    keeps the old pair; even SIGKILL only leaves clearly temporary names, never a new-looking pair."""
    src = tmp_path / "big.jsonl"
    with open(src, "w") as f:
        for _ in range(6):  # ~40 MB of text: long enough to interrupt after the first MB is written
            for t in bundled_docs():
                f.write(json.dumps({"text": t}) + "\n")
    prefix = tmp_path / "o"
    old = write_lines(tmp_path / "old.jsonl", GOOD)
    assert run("--input", old, "--tokenizer-model", tok_dir, "--output-prefix", prefix) == 0
    old_bytes = [(tmp_path / f"o_text_document.{e}").read_bytes() for e in ("bin", "idx")]
    proc = subprocess.Popen([sys.executable, str(REPO / "tools" / "preprocess_data.py"), "--input", str(src),
                             "--tokenizer-model", str(tok_dir), "--output-prefix", str(prefix), "--workers", "2"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:  # wait until it is writing tokens
        tmp = [f for f in leftovers(tmp_path) if ".bin.tmp-" in f]
        if tmp and os.path.getsize(tmp_path / tmp[0]) > 1_000_000:
            break
        time.sleep(0.05)
    else:
        pytest.fail("preprocessing did not start writing")
    proc.send_signal(sig)
    _, err = proc.communicate(timeout=60)
    if sig == signal.SIGINT:
        assert proc.returncode == 130 and "no output written" in err
        assert leftovers(tmp_path) == []
    else:
        assert proc.returncode == -signal.SIGKILL
        assert all(".tmp-" in f for f in leftovers(tmp_path))
    # the previous complete pair is untouched
    assert [(tmp_path / f"o_text_document.{e}").read_bytes() for e in ("bin", "idx")] == old_bytes


def test_bom_and_crlf_are_not_errors(tmp_path, tok_dir, capsys):
    src = tmp_path / "win.jsonl"
    src.write_bytes(b"\xef\xbb\xbf" + b"".join(json.dumps(g).encode() + b"\r\n" for g in GOOD))
    assert run("--input", src, "--tokenizer-model", tok_dir, "--output-prefix", tmp_path / "o", "--strict") == 0
    tok = load_tokenizer(tok_dir)
    ds = IndexedDataset(str(tmp_path / "o_text_document"))
    assert [ds[i].tolist() for i in range(len(ds))] == [tok.encode(g["text"]) for g in GOOD]
