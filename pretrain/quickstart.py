"""The whole flow on the bundled corpus, CPU-friendly: ``python -m pretrain.quickstart`` (``make quickstart``).

1. train a 4096-piece tokenizer        -> runs/quickstart/tokenizer/
2. preprocess the corpus               -> runs/quickstart/data/corpus_text_document.{bin,idx}
3. pretrain configs/tiny.yaml (VersatileFFN) with 2 processes under torchrun (DP=2 ZeRO-1, or --tp 2)
                                        -> runs/quickstart/{checkpoints,tensorboard,metrics.jsonl,config.yaml}
4. export the latest checkpoint to a Hugging Face folder and generate a short greedy sample through
   transformers                         -> runs/quickstart/hf/

Finished steps are not redone: existing tokenizer/data are reused and pretraining resumes from its
latest checkpoint (an interrupted quickstart continues). ``--fresh`` (or ``make clean``) starts over.
"""
from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def _run(cmd: list[str], env: dict | None = None) -> None:
    print("$ " + " ".join(cmd), flush=True)
    proc = subprocess.run(cmd, cwd=REPO, env=env)
    if proc.returncode != 0:
        raise SystemExit(f"quickstart: step failed (exit {proc.returncode}): {' '.join(cmd[:6])} ...")


def tokenizer_step(out: Path, corpus: Path, vocab_size: int) -> Path:
    tok = out / "tokenizer"
    if (tok / "tokenizer.model").is_file():
        print(f"[1/4] tokenizer: reusing {tok}")
        return tok
    print("[1/4] training the tokenizer", flush=True)
    _run([sys.executable, "tools/train_tokenizer.py", "--input", str(corpus), "--output-dir", str(tok),
          "--vocab-size", str(vocab_size)])
    return tok


def preprocess_step(out: Path, corpus: Path, tok: Path, workers: int) -> Path:
    prefix = out / "data" / "corpus"
    data = Path(f"{prefix}_text_document")
    if Path(f"{data}.bin").is_file() and Path(f"{data}.idx").is_file():
        print(f"[2/4] data: reusing {data}.bin/.idx")
        return data
    print("[2/4] preprocessing the corpus", flush=True)
    _run([sys.executable, "tools/preprocess_data.py", "--input", str(corpus), "--tokenizer-model", str(tok),
          "--output-prefix", str(prefix), "--append-eod", "--workers", str(workers)])
    return data


def pretrain_step(out: Path, tok: Path, data: Path, nproc: int, tp: int, overrides: list[str]) -> None:
    print(f"[3/4] pretraining configs/tiny.yaml on {nproc} processes (TP={tp}, DP={nproc // tp})", flush=True)
    from vffn_megatron.device import configure_environment, torchrun_command

    env = configure_environment({**os.environ, "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1")})
    _run(torchrun_command(nproc, [
        "-m", "pretrain", "--config", "configs/tiny.yaml", f"output_dir={out}", f"data.tokenizer={tok}",
        f"data.datasets=[{{path: {data}}}]", f"parallel.tensor_model_parallel_size={tp}", *overrides]), env=env)


def export_step(out: Path, sample: str) -> None:
    print("[4/4] exporting the latest checkpoint to Hugging Face format", flush=True)
    _run([sys.executable, "tools/export_hf.py", "--checkpoint", str(out / "checkpoints"), "--output",
          str(out / "hf"), "--overwrite", "--sample", sample])


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m pretrain.quickstart", description=__doc__.split("\n\n")[0])
    p.add_argument("--out", default="runs/quickstart", help="output directory (default: runs/quickstart)")
    p.add_argument("--nproc", type=int, default=2, help="training processes (default 2)")
    p.add_argument("--tp", type=int, default=1, help="tensor-parallel size (default 1: data parallel; 2: TP=2)")
    p.add_argument("--vocab-size", type=int, default=4096)
    p.add_argument("--fresh", action="store_true", help="delete the output directory first")
    p.add_argument("--sample", default="To be, or not to be", help="prompt for the greedy sample after export")
    p.add_argument("overrides", nargs="*", metavar="section.key=value", help="passed to python -m pretrain")
    args = p.parse_args(argv)

    from vffn_data.bundled import corpus_path

    out = (REPO / args.out).resolve() if not os.path.isabs(args.out) else Path(args.out)
    if args.fresh and out.exists():
        shutil.rmtree(out)
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.time()
    corpus = corpus_path()
    tok = tokenizer_step(out, corpus, args.vocab_size)
    data = preprocess_step(out, corpus, tok, workers=2)
    t1 = time.time()
    pretrain_step(out, tok, data, args.nproc, args.tp, args.overrides)
    t2 = time.time()
    export_step(out, args.sample)
    t3 = time.time()

    print(f"\nquickstart done in {t3 - t0:.0f} s (data {t1 - t0:.0f} s, pretraining {t2 - t1:.0f} s, "
          f"export {t3 - t2:.0f} s)")
    print(f"  checkpoints : {out / 'checkpoints'} (latest: {(out / 'checkpoints' / 'latest').read_text().strip()})")
    print(f"  TensorBoard : tensorboard --logdir {out / 'tensorboard'}")
    print(f"  metrics     : {out / 'metrics.jsonl'};  resolved config: {out / 'config.yaml'}")
    print(f"  HF model    : {out / 'hf'}  (AutoModelForCausalLM.from_pretrained(dir, trust_remote_code=True))")
    print("  start over  : make clean  (or python -m pretrain.quickstart --fresh)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
