"""Two preprocessed datasets blended with weights through megatron-core's BlendedMegatronDatasetBuilder
and GPTDataset (issue 3, acceptance 3)."""
import json

import numpy as np

from helpers.data import bundled_docs, load_tool, trained_tokenizer
from vffn_data.bundled import iter_documents
from vffn_data.tokenizer import load_tokenizer


def test_blend_two_datasets_with_weights(tmp_path):
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        from megatron.core.datasets.blended_megatron_dataset_builder import BlendedMegatronDatasetBuilder
        from megatron.core.datasets.gpt_dataset import GPTDataset, GPTDatasetConfig

    tok_dir = trained_tokenizer(4096)
    tok = load_tokenizer(tok_dir)
    prefixes = {}
    for author in ("William Shakespeare", "John Milton"):
        name = author.split()[-1].lower()
        src = tmp_path / f"{name}.jsonl"
        src.write_text("".join(json.dumps(d) + "\n" for d in iter_documents() if d["author"] == author))
        assert load_tool("preprocess_data").main(["--input", str(src), "--tokenizer-model", str(tok_dir),
                                                  "--output-prefix", str(tmp_path / name), "--append-eod",
                                                  "--no-progress"]) == 0
        prefixes[name] = str(tmp_path / f"{name}_text_document")

    seq = 128
    config = GPTDatasetConfig(
        random_seed=1234, sequence_length=seq,
        blend=([prefixes["shakespeare"], prefixes["milton"]], [0.7, 0.3]), split="90,5,5",
        tokenizer=tok, reset_position_ids=False, reset_attention_mask=False, eod_mask_loss=False,
        path_to_cache=None,  # no process group in this test
    )
    n_train = 2000
    train, valid, test = BlendedMegatronDatasetBuilder(GPTDataset, [n_train, 20, 10], lambda: True, config).build()
    assert len(train) == n_train and len(valid) == 20 and len(test) == 10

    # The blend draws from each dataset in proportion to its weight.
    share = np.bincount(train.dataset_index, minlength=2) / n_train
    assert abs(share[0] - 0.7) < 0.01 and abs(share[1] - 0.3) < 0.01

    # Samples are real token windows of the right source: every sample of each side decodes to text
    # that appears in that author's documents (EOD marks document boundaries inside a window).
    texts = {a: "\n".join(d["text"] for d in iter_documents() if d["author"] == a)
             for a in ("William Shakespeare", "John Milton")}
    for idx in range(0, n_train, 97):
        sample = train[idx]
        tokens = sample["tokens"].numpy()
        assert tokens.shape == (seq,) and sample["labels"].shape == (seq,)
        author = ("William Shakespeare", "John Milton")[int(train.dataset_index[idx])]
        for piece in np.split(tokens, np.where(tokens == tok.eod)[0]):
            piece = [int(t) for t in piece if t != tok.eod]
            if len(piece) > 8:
                assert tok.decode(piece[1:-1]) in texts[author]
    assert bundled_docs()  # the corpus the datasets came from
