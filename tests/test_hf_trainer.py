"""Export / import against real trainer checkpoints (issue 5 acceptance 1-4), on real text.

Three tiny runs of ``python -m pretrain`` on the bundled corpus (2 processes, fp32, a few steps): VersatileFFN at
TP=1 x DP=2 with ZeRO-1, VersatileFFN at TP=2 with ZeRO-3, dense at TP=2 with ZeRO-0. The megatron side of every
comparison comes from tests/scripts/hf_ckpt_reference.py, which reloads each checkpoint the way a resume does
(DeepSpeed, at its own TP/ZeRO layout) - independent of the conversion code under test.
"""
import math
import os
import re
import sys
from pathlib import Path

import pytest
import torch

from helpers import REPO
from helpers.data import bundled_docs, load_tool, paragraphs_jsonl, trained_tokenizer
from helpers.procs import launch_env, run_ok, torchrun
from helpers.workspace import read_losses
from vffn_megatron.device import torchrun_command

os.environ["HF_HUB_OFFLINE"] = "1"
TOL = 1e-4
GEN = 32
RUNS = {  # name: (model.arch, TP, ZeRO stage)
    "vffn_tp1_zero1": ("vffn", 1, 1),
    "vffn_tp2_zero3": ("vffn", 2, 3),
    "dense_tp2_zero0": ("dense", 2, 0),
}
TIMEOUT = 300


def _overrides(ws, out, arch, tp, zero, steps=6):
    return [f"output_dir={out}", "precision=fp32", f"model.arch={arch}", f"parallel.tensor_model_parallel_size={tp}",
            f"parallel.zero_stage={zero}", f"data.tokenizer={ws['tokenizer']}",
            f"data.datasets=[{{path: {ws['data']}, weight: 1.0}}]", "data.split=98,2,0",
            f"schedule.train_steps={steps}", "schedule.warmup_steps=2", "schedule.micro_batch_size=2",
            "schedule.global_batch_size=4", "schedule.eval_interval=0", "checkpoint.interval=0",
            "checkpoint.save_at_end=true", "logging.tensorboard=false", "logging.progress=none"]


def _train(ws, out, arch, tp, zero, steps=6):
    cmd = torchrun_command(2, ["-m", "pretrain", "--config", str(REPO / "configs" / "tiny.yaml"),
                               *_overrides(ws, out, arch, tp, zero, steps)])
    return run_ok(cmd, out.parent / f"{out.name}.log", TIMEOUT)


def _no_launcher_env():
    """This process may have set RANK / WORLD_SIZE for its own single-process group (init_distributed): a child
    must not mistake them for a launcher's."""
    keys = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT")
    return {k: v for k, v in launch_env().items() if k not in keys}


@pytest.fixture(scope="module")
def ws(tmp_path_factory):
    """The real-data workspace: the data tools' tokenizer (sentencepiece + its HF files) and the bundled
    corpus preprocessed with it."""
    root = tmp_path_factory.mktemp("hf_ws")
    tok = trained_tokenizer()
    rc = load_tool("preprocess_data").main(["--input", str(paragraphs_jsonl(600)), "--tokenizer-model", str(tok),
                                            "--append-eod", "--output-prefix", str(root / "bundled"),
                                            "--workers", "1", "--no-progress"])
    assert rc == 0
    return {"root": root, "tokenizer": str(tok), "data": str(root / "bundled_text_document")}


@pytest.fixture(scope="module")
def text_batch(ws):
    """3 x 48 tokens of real text (paragraphs of the bundled corpus, training tokenizer)."""
    from vffn_data.tokenizer import load_tokenizer

    tok = load_tokenizer(ws["tokenizer"])
    rows = [ids[:48] for ids in (tok.encode(d) for d in bundled_docs()[10:200]) if len(ids) >= 48][:3]
    return torch.tensor(rows)


@pytest.fixture(scope="module")
def runs(ws, text_batch):
    """Train the three runs, then compute the megatron references of their final checkpoints in one launch."""
    step_dirs = {}
    for name, (arch, tp, zero) in RUNS.items():
        out = ws["root"] / name
        _train(ws, out, arch, tp, zero)
        step_dirs[name] = out / "checkpoints" / "step_00000006"
        assert step_dirs[name].is_dir()
    torch.save(text_batch, ws["root"] / "tokens.pt")
    torchrun("tests/scripts/hf_ckpt_reference.py", 2, str(ws["root"] / "ref.pt"), str(ws["root"] / "tokens.pt"),
             *map(str, step_dirs.values()), timeout=TIMEOUT)
    refs = torch.load(ws["root"] / "ref.pt")
    return {name: (d, refs[str(d)]) for name, d in step_dirs.items()}


@pytest.fixture(scope="module")
def exports(runs, ws):
    """tools/export_hf.py on every run's checkpoints/ directory (latest step; tokenizer from the run config)."""
    tool, out = load_tool("export_hf"), {}
    for name, (step_dir, _) in runs.items():
        out[name] = ws["root"] / f"hf_{name}"
        # the tool's own parity check and the transformers-only greedy sample (the quickstart's last step), once
        extra = ["--verify", "--sample", "To be, or not to be", "--sample-tokens", "8"] if name == "vffn_tp1_zero1" else []
        assert tool.main(["--checkpoint", str(step_dir.parent), "--output", str(out[name]), *extra]) == 0
    return out


@pytest.mark.parametrize("name", list(RUNS))
def test_export_matches_trained_megatron(runs, exports, text_batch, name):
    from transformers import AutoModelForCausalLM

    from vffn_hf.parity import hf_greedy

    _, ref = runs[name]
    folder = exports[name]
    hf = AutoModelForCausalLM.from_pretrained(folder, trust_remote_code=True).eval()
    if RUNS[name][0] == "dense":
        assert type(hf).__name__ == "LlamaForCausalLM" and not list(folder.glob("*.py"))
    else:
        assert type(hf).__name__ == "VersatileFFNLlamaForCausalLM"
    with torch.no_grad():
        logits = hf(text_batch).logits
    diff = (logits - ref["logits"]).abs().max().item()
    print(f"[parity] trained {name}: max abs logit diff {diff:.3e} (logit scale {ref['logits'].abs().max():.1f})")
    assert diff <= TOL, f"{name}: exported logits differ by {diff}"
    assert torch.equal(hf_greedy(hf, text_batch[:, :8], GEN), ref["greedy"]), f"{name}: greedy decoding differs"


def test_exported_tokenizer_encodes_corpus_like_training_tokenizer(exports, ws):
    from transformers import AutoTokenizer

    from vffn_data.tokenizer import load_tokenizer

    folder = exports["vffn_tp1_zero1"]
    assert {"tokenizer.json", "tokenizer_config.json"} <= {p.name for p in folder.iterdir()}
    hf_tok = AutoTokenizer.from_pretrained(folder, trust_remote_code=True)
    train_tok = load_tokenizer(ws["tokenizer"])
    docs = list(bundled_docs())
    assert hf_tok(docs, add_special_tokens=False)["input_ids"] == train_tok.encode_batch(docs)
    import json

    cfg = json.loads((folder / "config.json").read_text())
    assert cfg["eos_token_id"] == train_tok.eod and cfg["vocab_size"] >= train_tok.vocab_size


def test_import_dense_round_trip_and_resume(exports, ws):
    """Dense export -> tools/import_hf.py into a VersatileFFN run (TP=2, ZeRO-1, 2 processes) -> export: the dense
    weights come back bit for bit; the trainer resumes the imported checkpoint."""
    from vffn_hf.hf_io import read_hf_weights

    out = ws["root"] / "upcycled"
    over = _overrides(ws, out, "vffn", 2, 1, steps=2)
    log = run_ok([sys.executable, str(REPO / "tools" / "import_hf.py"), "--hf", str(exports["dense_tp2_zero0"]),
                  "--config", str(REPO / "configs" / "tiny.yaml"), *over, "--nproc", "2"],
                 ws["root"] / "import.log", TIMEOUT, env=_no_launcher_env())
    assert "upcycled dense -> vffn (fresh routers)" in log
    assert (out / "checkpoints" / "latest").read_text().strip() == "step_00000000"

    back = ws["root"] / "hf_upcycled"
    assert load_tool("export_hf").main(["--checkpoint", str(out / "checkpoints"), "--output", str(back)]) == 0
    dense, vffn = read_hf_weights(exports["dense_tp2_zero0"]), read_hf_weights(back)
    for k, v in dense.items():
        assert torch.equal(vffn[k.replace("post_attention_layernorm", "mlp.norm")], v), f"{k} changed"

    log = _train(ws, out, "vffn", 2, 1, steps=2)
    assert re.search(r"resumed from \S+step_00000000 at step 0", log), log[-3000:]
    losses = read_losses(out)
    assert set(losses) == {1, 2} and all(math.isfinite(v) for v in losses.values())


def test_export_and_import_errors_are_actionable(runs, tmp_path, capsys):
    export, imp = load_tool("export_hf"), load_tool("import_hf")
    assert export.main(["--checkpoint", str(tmp_path / "nope"), "--output", str(tmp_path / "o")]) == 2
    assert "does not exist" in capsys.readouterr().err
    ckpt = runs["vffn_tp1_zero1"][0].parent
    assert export.main(["--checkpoint", str(ckpt), "--step", "3", "--output", str(tmp_path / "o")]) == 2
    assert "available steps: [6]" in capsys.readouterr().err
    assert export.main(["--checkpoint", str(ckpt), "--output", str(tmp_path / "o"), "--tokenizer",
                        str(tmp_path / "missing")]) == 2
    assert "--tokenizer DIR" in capsys.readouterr().err
    # a run config that does not describe the HF model: the error lists the overrides that would
    ws = {"tokenizer": trained_tokenizer(), "data": "unused"}
    dense_cfg = Path(runs["dense_tp2_zero0"][0]) / "config.yaml"
    hf = tmp_path / "hf_dense"
    assert export.main(["--checkpoint", str(runs["dense_tp2_zero0"][0]), "--output", str(hf), "--no-tokenizer"]) == 0
    assert dense_cfg.is_file()
    rc = imp.main(["--hf", str(hf), "--config", str(REPO / "configs" / "tiny.yaml"),
                   *_overrides(ws, tmp_path / "x", "vffn", 1, 1), "model.num_layers=3", "model.hidden_size=32"])
    assert rc == 2
    err = capsys.readouterr().err
    assert "model.num_layers=2" in err and "model.hidden_size=64" in err
