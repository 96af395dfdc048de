"""Helpers for the pretraining tests: tiny datasets, configs, and torchrun launches with clean teardown."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from pathlib import Path

from vffn_megatron.device import configure_environment

REPO = Path(__file__).resolve().parent.parent


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


def launch_env(**extra) -> dict:
    """Environment of a launched test process: one thread, unbuffered, this checkout, the device's accelerator."""
    env = configure_environment({**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1",
                                 "PYTHONPATH": str(REPO), "TOKENIZERS_PARALLELISM": "false"})
    env.update(extra)
    return env


class Proc:
    """A launched process group; output goes to a log file; always killed (whole group) on exit."""

    def __init__(self, cmd: list[str], log: Path, env: dict | None = None):
        self.log_path = log
        self._log = open(log, "w")
        self.p = subprocess.Popen(cmd, cwd=REPO, env=env or launch_env(), stdout=self._log, stderr=subprocess.STDOUT,
                                  start_new_session=True)

    def output(self) -> str:
        self._log.flush()
        return self.log_path.read_text(errors="replace")

    def wait_for(self, text: str, timeout: float) -> None:
        end = time.time() + timeout
        while time.time() < end:
            if text in self.output():
                return
            if self.p.poll() is not None:
                raise AssertionError(f"process exited ({self.p.returncode}) before printing {text!r}:\n"
                                     f"{self.output()[-6000:]}")
            time.sleep(0.2)
        self.kill()
        raise AssertionError(f"timed out waiting for {text!r}:\n{self.output()[-6000:]}")

    def wait(self, timeout: float) -> int:
        try:
            return self.p.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.kill()
            raise AssertionError(f"timed out after {timeout}s:\n{self.output()[-6000:]}")

    def tree(self) -> list:
        """The launcher and all its descendants (torchrun starts workers in their own sessions, so
        killing the process group alone would orphan them)."""
        import psutil

        try:
            root = psutil.Process(self.p.pid)
            return [root, *root.children(recursive=True)]
        except psutil.NoSuchProcess:
            return []

    def signal(self, sig: int, tree: bool = False) -> None:
        """``sig`` to the launcher only (it forwards to the workers), or to every process of the tree."""
        if not tree:
            self.p.send_signal(sig)
            return
        import psutil

        for proc in self.tree():
            try:
                proc.send_signal(sig)
            except psutil.NoSuchProcess:
                pass

    def kill(self) -> None:
        if self.p.poll() is None or self.tree()[1:]:
            self.signal(signal.SIGKILL, tree=True)
            try:
                os.killpg(self.p.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        self.p.wait()
        if not self._log.closed:
            self._log.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.kill()


def run_ok(cmd: list[str], log: Path, timeout: float, env: dict | None = None) -> str:
    with Proc(cmd, log, env) as p:
        rc = p.wait(timeout)
        out = p.output()
    assert rc == 0, f"{' '.join(cmd[:8])} ... failed ({rc}):\n{out[-8000:]}"
    return out


def read_losses(output_dir: Path) -> dict[int, float]:
    """step -> training loss from metrics.jsonl (a resumed run appends: later records win)."""
    out = {}
    for line in (output_dir / "metrics.jsonl").read_text().splitlines():
        rec = json.loads(line)
        if "loss" in rec:
            out[rec["step"]] = rec["loss"]
    return out
