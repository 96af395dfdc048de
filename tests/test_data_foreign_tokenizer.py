"""A real tokenizer nobody here trained (Mistral v1, 32k sentencepiece BPE with a dummy prefix, Apache-2.0,
shipped in data/tokenizers/): loading, exact HF export, preprocessing round trip."""
import shutil

import numpy as np
from megatron.core.datasets.indexed_dataset import IndexedDataset

from helpers import REPO
from helpers.data import bundled_docs, load_tool
from vffn_data.tokenizer import load_tokenizer
from vffn_data.tokenizer_train import check_hf_matches, export_hf

MISTRAL = REPO / "data" / "tokenizers" / "mistral-v1" / "tokenizer.model"


def test_mistral_loads_and_exports_exactly(tmp_path):
    tok = load_tokenizer(MISTRAL)
    assert (tok.vocab_size, tok.bos, tok.eod, tok.pad) == (32000, 1, 2, None)
    assert tok.sp.encode("Hello", out_type=str) == ["▁Hello"]  # dummy prefix, as Llama/Mistral
    shutil.copy(MISTRAL, tmp_path / "tokenizer.model")
    export_hf(tmp_path / "tokenizer.model", tmp_path)
    texts = list(bundled_docs()[::8]) + ["", " ", "  two", "é 漢字 🙂", "a\n\n\tb", "</s> <s>"]
    assert check_hf_matches(tmp_path / "tokenizer.model", tmp_path / "tokenizer.json", texts) == []

    from transformers import AutoTokenizer

    hf = AutoTokenizer.from_pretrained(str(tmp_path))
    assert hf.pad_token is None and hf.eos_token_id == 2
    assert all(hf(t)["input_ids"] == tok.encode(t) for t in texts[:20])


def test_preprocess_with_mistral(tmp_path):
    src = tmp_path / "in.jsonl"
    import json

    docs = list(bundled_docs()[:60])
    src.write_text("".join(json.dumps({"text": t}) + "\n" for t in docs))
    assert load_tool("preprocess_data").main(["--input", str(src), "--tokenizer-model", str(MISTRAL),
                                              "--output-prefix", str(tmp_path / "m"), "--append-eod",
                                              "--workers", "2", "--no-progress"]) == 0
    tok = load_tokenizer(MISTRAL)
    ds = IndexedDataset(str(tmp_path / "m_text_document"))
    assert ds.index.dtype == np.uint16 and len(ds) == 60
    assert all(ds[i].tolist() == tok.encode(t) + [2] for i, t in enumerate(docs))
