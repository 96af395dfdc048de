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


@pytest.fixture(scope="module")
def compared(tmp_path_factory):
    root = tmp_path_factory.mktemp("compare")
    tok = make_tokenizer(root / "tokenizer", 200)
    data = make_dataset(root / "d_text_document", 200, docs=60)
    out, work = root / "results", root / "work"
    cmd = [PY, str(REPO / "tools" / "compare_architectures.py"), "--steps", "3", "--seeds", "7",
           "--archs", "dense,vffn", "--jobs", "2", "--eval-interval", "1", "--output-dir", str(out),
           "--work-dir", str(work), "--sample-text", "w5 w6 w7 w8 w9",
           f"data.tokenizer={tok}", f"data.datasets=[{{path: {data}, weight: 1.0}}]", "data.split=80,20,0",
           "model.vocab_size=256", "model.seq_length=32", "schedule.micro_batch_size=4",
           "schedule.global_batch_size=4", "schedule.warmup_steps=1", "schedule.eval_iters=1",
           "logging.log_interval=1"]
    res = subprocess.run(cmd, cwd=REPO, env=launch_env(), capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    return {"out": out, "work": work, "tok": tok}


def test_compare_writes_table_and_pngs(compared):
    from PIL import Image

    md = (compared["out"] / "compare.md").read_text()
    assert "| model | seeds | params total |" in md
    assert "| dense | 7 |" in md and "| VersatileFFN" in md
    assert "Measured wall time of the whole command" in md and "--steps 3" in md
    for png in ("valid_loss.png", "depth_share.png", "expert_load.png", "routing_sample.png"):
        with Image.open(compared["out"] / png) as im:
            im.verify()
            assert im.size[0] > 200 and im.size[1] > 100
        assert f"]({png})" in md


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
