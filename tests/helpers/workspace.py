"""Tiny pretraining inputs: a word-level tokenizer, learnable datasets, a workspace of both, the overrides of a fast
run on it, tiny.yaml configs, and the losses a run wrote."""
from __future__ import annotations

import json
from pathlib import Path

from helpers import REPO


def make_tokenizer(directory: Path, vocab_size: int = 200) -> Path:
    """A word-level HF tokenizer.json with ``vocab_size`` tokens (ids 0-2: <pad>, <s>, </s>)."""
    from tokenizers import Tokenizer
    from tokenizers.models import WordLevel
    from tokenizers.pre_tokenizers import Whitespace

    vocab = {"<pad>": 0, "<s>": 1, "</s>": 2, "<unk>": 3}
    vocab.update({f"w{i}": i for i in range(4, vocab_size)})
    tok = Tokenizer(WordLevel(vocab, unk_token="<unk>"))
    tok.pre_tokenizer = Whitespace()
    directory.mkdir(parents=True, exist_ok=True)
    tok.save(str(directory / "tokenizer.json"))
    (directory / "tokenizer_config.json").write_text(json.dumps({"eos_token": "</s>", "bos_token": "<s>",
                                                                 "pad_token": "<pad>"}))
    return directory


def make_dataset(prefix: Path, vocab_size: int = 200, docs: int = 300, seed: int = 0, max_id: int | None = None) -> Path:
    """Learnable documents (arithmetic token sequences) + EOD, written with megatron's IndexedDatasetBuilder."""
    import numpy as np
    import torch
    from megatron.core.datasets.indexed_dataset import IndexedDatasetBuilder

    prefix.parent.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    builder = IndexedDatasetBuilder(str(prefix) + ".bin", dtype=np.uint16)
    span = vocab_size - 4
    for _ in range(docs):
        n = int(rng.integers(20, 160))
        start, stride = int(rng.integers(0, span)), int(rng.integers(1, 5))
        doc = [(start + i * stride) % span + 4 for i in range(n)] + [2]
        builder.add_document(torch.tensor(doc), [len(doc)])
    if max_id is not None:  # one document with an out-of-vocabulary id
        builder.add_document(torch.tensor([5, max_id, 2]), [3])
    builder.finalize(str(prefix) + ".idx")
    return prefix


def make_workspace(root: Path, vocab_size: int = 200) -> dict:
    """Tokenizer + two datasets (blended) under ``root``; returns the config overrides that use them."""
    tok = make_tokenizer(root / "tokenizer", vocab_size)
    a = make_dataset(root / "data" / "a_text_document", vocab_size, docs=300, seed=0)
    b = make_dataset(root / "data" / "b_text_document", vocab_size, docs=150, seed=1)
    return {"tokenizer": str(tok), "datasets": [str(a), str(b)]}


def run_overrides(ws: dict, output_dir: Path, **extra) -> list[str]:
    """Overrides for a fast deterministic tiny run on the workspace's data (fp32, 10 steps)."""
    datasets = "[" + ", ".join(f"{{path: {p}, weight: {w}}}" for p, w in zip(ws["datasets"], (0.7, 0.3))) + "]"
    base = {
        "output_dir": str(output_dir), "precision": "fp32",
        "data.tokenizer": ws["tokenizer"], "data.datasets": datasets, "data.split": "90,10,0",
        "model.vocab_size": 256, "model.seq_length": 64, "schedule.train_steps": 10, "schedule.warmup_steps": 3,
        "schedule.micro_batch_size": 2, "schedule.global_batch_size": 8, "schedule.eval_interval": 0,
        "checkpoint.interval": 0, "checkpoint.save_at_end": False, "logging.log_interval": 1,
        "logging.progress": "line", "logging.tensorboard": False,
    }
    base.update({k.replace("__", "."): v for k, v in extra.items()})
    return [f"{k}={v}" for k, v in base.items()]


def read_losses(output_dir: Path) -> dict[int, float]:
    """step -> training loss from metrics.jsonl (a resumed run appends: later records win)."""
    out = {}
    for line in (output_dir / "metrics.jsonl").read_text().splitlines():
        rec = json.loads(line)
        if "loss" in rec:
            out[rec["step"]] = rec["loss"]
    return out


def assert_same_losses(losses: dict, ref: dict, steps, against: str = "the uninterrupted run") -> None:
    """Bit-identical losses at ``steps`` (fp32 on CPU, same layout, state restored exactly, the Gumbel noise a
    pure function of the step: measured 0.0 difference)."""
    steps = list(steps)
    assert steps and all(s in losses for s in steps), f"nothing to compare, or missing steps: {sorted(set(steps) - set(losses))}"
    diff = {s: losses[s] - ref[s] for s in steps if losses[s] != ref[s]}
    assert not diff, f"loss differences vs {against}: {diff}"


def tiny_config(*overrides):
    """tiny.yaml with overrides (validated; no file is read beyond the YAML)."""
    from pretrain.config import load_config

    return load_config(str(REPO / "configs" / "tiny.yaml"), list(overrides))
