"""tools/compare_architectures.py and tools/plot_routing.py on a trivially small budget (tiny synthetic data).

One module-scoped comparison (dense + vffn, 1 seed, 3 steps, through the real trainer in subprocesses);
the plot_routing tests reuse its VersatileFFN checkpoint.
"""
import subprocess
import sys

import pytest

from helpers import REPO
from helpers.procs import launch_env
from helpers.workspace import make_dataset, make_tokenizer

PY = sys.executable


def _compare(root, tok, data, protocol: str, archs: str, *extra):
    out, work = root / "results", root / "work"
    cmd = [PY, str(REPO / "tools" / "compare_architectures.py"), "--protocol", protocol, "--steps", "3",
           "--seeds", "7,8", "--archs", archs, "--kloops", "2", "--jobs", "2", "--eval-interval", "1",
           "--output-dir", str(out), "--work-dir", str(work), "--sample-text", "w5 w6 w7 w8 w9", *extra,
           f"data.tokenizer={tok}", f"data.datasets=[{{path: {data}, weight: 1.0}}]", "data.split=80,20,0",
           "model.vocab_size=256", "model.seq_length=32", "model.num_layers=2", "schedule.micro_batch_size=4",
           "schedule.global_batch_size=4", "schedule.warmup_steps=1", "schedule.eval_iters=1",
           "logging.log_interval=1"]
    res = subprocess.run(cmd, cwd=REPO, env=launch_env(), capture_output=True, text=True, timeout=900)
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    return out, work / protocol


@pytest.fixture(scope="module")
def compared(tmp_path_factory):
    """Both protocols on a 3-step budget: continued with dense, k-loop and VersatileFFN over 2 seeds (base + 4
    runs: 1 loop and k-loop are seed-free), scratch with dense and MoE (upcycled MoE: tests/test_init_from.py)."""
    root = tmp_path_factory.mktemp("compare")
    tok = make_tokenizer(root / "tokenizer", 200)
    data = make_dataset(root / "d_text_document", 200, docs=60)
    out, cont = _compare(root, tok, data, "continued", "dense,kloop,vffn", "--base-steps", "2")
    _, scratch = _compare(root, tok, data, "scratch", "dense,moe", "--seeds", "7")
    return {"out": out, "work": cont, "scratch": scratch, "tok": tok}


def test_compare_writes_both_protocols(compared):
    from PIL import Image

    out = compared["out"]
    md = (out / "compare.md").read_text()
    assert "The paper's numbers" in md and "2.617" in md  # the paper's Table 1, labelled as the paper's
    assert md.index("## Continued pretraining") < md.index("## Every model from scratch")
    cont = (out / "compare_continued.md").read_text()
    for row in ("| Base (dense checkpoint, no extra training) |", "| 1 loop (dense, continued) | every (seed-free) |",
                "| 2-loop | every (seed-free) |", "| VersatileFFN (inference:"):
        assert row in cont, row
    assert "Δ vs 1 loop (paired by seed)" in cont and "- VersatileFFN − 1 loop:" in cont
    assert "Measured wall time of the whole command" in cont and "--steps 3" in cont
    scratch = (out / "compare_scratch.md").read_text()
    assert "| 1 loop (dense) | 7 |" in scratch and "| MoE | 7 |" in scratch and "step-0" not in scratch
    for png in ("continued_valid_loss.png", "continued_depth_share.png", "continued_expert_load.png",
                "continued_routing_sample.png", "scratch_valid_loss.png"):
        with Image.open(out / png) as im:
            im.verify()
            assert im.size[0] > 200 and im.size[1] > 100
        assert f"]({png})" in md


def test_continued_runs_start_from_the_base(compared):
    """Step 0 of the dense continuation is the base checkpoint itself: the same validation loss; the upcycled
    runs start at step 0 of a fresh schedule (init_from, not resume)."""
    import json

    def valid(run):
        recs = [json.loads(x) for x in (compared["work"] / run / "metrics.jsonl").read_text().splitlines()]
        return {r["step"]: r["valid_loss"] for r in recs if "valid_loss" in r}

    base, dense = valid("base"), valid("dense_s7")
    assert sorted(dense) == [0, 1, 2, 3] and abs(dense[0] - base[2]) < 1e-6
    assert not (compared["work"] / "dense_s8").exists()  # seed-free: one run serves every seed
    assert set(valid("vffn_s8")) == {0, 1, 2, 3}


def test_plot_routing_on_a_checkpoint(compared, tmp_path):
    from PIL import Image
    import json

    png, js = tmp_path / "r.png", tmp_path / "r.json"
    res = subprocess.run([PY, str(REPO / "tools" / "plot_routing.py"), "--checkpoint", str(compared["work"] / "vffn_s7"),
                          "--text", "w4 w5 w6 w7", "--output", str(png), "--json", str(js)],
                         cwd=REPO, env=launch_env(), capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr[-3000:]
    r = json.loads(js.read_text())
    assert len(r["tokens"]) == 4 and len(r["loops"]) == 2  # 2 layers
    assert all(1 <= L <= r["max_depth"] for row in r["loops"] for L in row)
    for row_l, row_e in zip(r["loops"], r["experts"]):  # width path (k sub-experts) iff loops < D
        assert all((len(e) == 2) == (L < r["max_depth"]) for L, e in zip(row_l, row_e))
    with Image.open(png) as im:
        im.verify()


def test_plot_routing_refuses_a_dense_checkpoint(compared, tmp_path):
    res = subprocess.run([PY, str(REPO / "tools" / "plot_routing.py"), "--checkpoint", str(compared["work"] / "dense_s7"),
                          "--text", "w4", "--output", str(tmp_path / "x.png")],
                         cwd=REPO, env=launch_env(), capture_output=True, text=True, timeout=300)
    assert res.returncode == 2 and "routing pictures need a VersatileFFN" in res.stderr


def test_bad_arguments():
    res = subprocess.run([PY, str(REPO / "tools" / "compare_architectures.py"), "--archs", "dense,mlp"],
                         cwd=REPO, env=launch_env(), capture_output=True, text=True, timeout=120)
    assert res.returncode == 2 and "--archs: unknown ['mlp']" in res.stderr
    res = subprocess.run([PY, str(REPO / "tools" / "plot_routing.py"), "--checkpoint", "/nonexistent",
                          "--text", "x", "--output", "x.png"],
                         cwd=REPO, env=launch_env(), capture_output=True, text=True, timeout=120)
    assert res.returncode == 2 and "does not exist" in res.stderr
