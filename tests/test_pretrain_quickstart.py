"""`python -m pretrain.quickstart` end to end (tokenizer, preprocessing, 2-process pretraining), shortened."""
import subprocess
import sys

from helpers import REPO
from helpers.procs import launch_env


def test_quickstart_flow(tmp_path):
    out = tmp_path / "qs"
    cmd = [sys.executable, "-m", "pretrain.quickstart", "--out", str(out), "--vocab-size", "512",
           "schedule.train_steps=4", "schedule.eval_interval=2", "schedule.eval_iters=1", "checkpoint.interval=2",
           "logging.log_interval=2"]
    p = subprocess.run(cmd, cwd=REPO, env=launch_env(), capture_output=True, text=True, timeout=300,
                       start_new_session=True)
    assert p.returncode == 0, p.stdout[-5000:] + p.stderr[-5000:]
    assert (out / "tokenizer" / "tokenizer.model").is_file()
    assert (out / "data" / "corpus_text_document.bin").is_file()
    assert (out / "checkpoints" / "latest").read_text().strip() == "step_00000004"
    assert list((out / "tensorboard").glob("events.out.tfevents.*"))
    assert "TensorBoard : tensorboard --logdir" in p.stdout and str(out / "checkpoints") in p.stdout
    # step 4: the HF export loads through transformers alone and generated a sample
    assert (out / "hf" / "config.json").is_file() and (out / "hf" / "modeling_vffn.py").is_file()
    assert "HF model    :" in p.stdout
    # a second run reuses tokenizer and data and finds the training finished
    p = subprocess.run(cmd, cwd=REPO, env=launch_env(), capture_output=True, text=True, timeout=300,
                       start_new_session=True)
    assert p.returncode == 0 and "tokenizer: reusing" in p.stdout and "resumed from" in p.stdout, p.stdout[-3000:]
