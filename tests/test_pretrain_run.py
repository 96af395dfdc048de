"""End-to-end runs of ``python -m pretrain`` under torchrun (2 CPU processes, gloo, fp32):

* acceptance 3: SIGKILL after step k, then resume -> the same losses as an uninterrupted run; SIGTERM
  saves a checkpoint and exits, resume -> the same losses;
* acceptance 4: two nodes simulated on localhost (launch/torchrun.sh -> torchrun --nnodes 2 --node_rank 0|1)
  match the single-node run;
* acceptance 5: the TensorBoard event files hold the listed scalars;
* checkpoints: latest only after a complete write, keep-last, resolved config saved.

The uninterrupted single-node run (DP=2, ZeRO-1, 30 steps, checkpoint every 3) is the shared reference.
"""
import json
import re
import signal
import sys
from pathlib import Path

import pytest

from helpers import REPO
from helpers.procs import Proc, launch_env, run_ok
from helpers.workspace import assert_same_losses, make_workspace, read_losses, run_overrides
from vffn_megatron.device import free_port, torchrun_command

STEPS = 30
TIMEOUT = 240


def _args(ws, out: Path, **extra) -> list[str]:
    over = run_overrides(ws, out, schedule__train_steps=STEPS, checkpoint__interval=3, checkpoint__keep_last=2,
                         checkpoint__save_at_end=True, schedule__eval_interval=10, **extra)
    return ["-m", "pretrain", "--config", str(REPO / "configs" / "tiny.yaml"), *over]


@pytest.fixture(scope="module")
def ws(tmp_path_factory):
    return make_workspace(tmp_path_factory.mktemp("run_ws"))


@pytest.fixture(scope="module")
def reference(ws, tmp_path_factory):
    out = tmp_path_factory.mktemp("reference")
    run_ok(torchrun_command(2, _args(ws, out, logging__tensorboard=True)), out / "log.txt", TIMEOUT)
    return out


def _resumed_step(log: str) -> int:
    m = re.search(r"resumed from \S+ at step (\d+)", log)
    assert m, f"the second run did not resume:\n{log[-3000:]}"
    return int(m.group(1))


def test_checkpoints_latest_keep_last_and_config(reference):
    ckpt = reference / "checkpoints"
    assert (ckpt / "latest").read_text().strip() == "step_00000030"
    steps = sorted(p.name for p in ckpt.glob("step_*"))
    assert steps == ["step_00000027", "step_00000030"], steps  # keep_last: 2
    for name in steps:
        d = ckpt / name
        assert (d / "config.yaml").is_file() and (d / "layout.json").is_file()
        assert list(d.glob("mp_rank_00_model_states.pt")) and list(d.glob("*optim_states.pt"))
    assert "arch: vffn" in (reference / "config.yaml").read_text()
    losses = read_losses(reference)
    assert sorted(losses) == list(range(1, STEPS + 1))


def test_tensorboard_scalars(reference):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(reference / "tensorboard"), size_guidance={"scalars": 0})
    acc.Reload()
    tags = set(acc.Tags()["scalars"])
    expected = {"train/loss", "valid/loss", "train/lr", "train/grad_norm", "train/tokens_per_sec",
                "train/consumed_samples", "vffn/tau", "vffn/aux_loss"}
    for layer in (1, 2):  # tiny: 2 layers, max_depth 3, 4 sub-experts
        p = f"vffn/layer_{layer:02d}"
        expected |= {f"{p}/mean_loops", f"{p}/aux_loss"}
        expected |= {f"{p}/depth_share_{d}" for d in (1, 2, 3)}
        expected |= {f"{p}/expert_load_{e}" for e in range(4)}
    assert not expected - tags, f"missing scalars: {sorted(expected - tags)}"
    loss = acc.Scalars("train/loss")
    assert [e.step for e in loss] == list(range(1, STEPS + 1))
    assert [e.step for e in acc.Scalars("valid/loss")] == [10, 20, 30]
    assert acc.Scalars("train/consumed_samples")[-1].value == STEPS * 8
    shares = [acc.Scalars(f"vffn/layer_01/depth_share_{d}")[-1].value for d in (1, 2, 3)]
    assert abs(sum(shares) - 1) < 1e-5
    assert 1.0 <= acc.Scalars("vffn/layer_01/mean_loops")[-1].value <= 3.0
    taus = [e.value for e in acc.Scalars("vffn/tau")]
    assert taus[0] == pytest.approx(5.0) and taus[-1] < taus[0]  # the temperature follows the global step


def test_resume_after_sigkill_matches(ws, reference, tmp_path):
    out = tmp_path / "killed"
    cmd = _args(ws, out)
    with Proc(torchrun_command(2, cmd), tmp_path / "first.txt") as p:
        p.wait_for("checkpoints/step_00000006", timeout=TIMEOUT)
        p.signal(signal.SIGKILL, tree=True)  # torchrun and every rank, no chance to clean up
        p.p.wait()
    killed_at = max(read_losses(out))
    assert killed_at < STEPS, "the run finished before it was killed"
    log = run_ok(torchrun_command(2, cmd), tmp_path / "second.txt", TIMEOUT)
    start = _resumed_step(log)
    assert 6 <= start <= killed_at
    assert_same_losses(read_losses(out), read_losses(reference), range(start + 1, STEPS + 1))
    # the steps trained again after the resume replace their first records instead of repeating them
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records if "loss" in r] == list(range(1, STEPS + 1))
    assert [r["step"] for r in records if "valid_loss" in r] == [10, 20, 30]


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_resume_after_sigterm_matches(ws, reference, tmp_path, sig):
    """SIGTERM (SLURM, k8s) and Ctrl-C both save a checkpoint and exit 0; the resumed run matches."""
    out = tmp_path / "terminated"
    cmd = _args(ws, out)
    with Proc(torchrun_command(2, cmd), tmp_path / "first.txt") as p:
        p.wait_for("step 4/", timeout=TIMEOUT)
        p.signal(sig)  # to torchrun, which forwards it to the workers
        p.wait(TIMEOUT)
        first = p.output()
    m = re.search(r"stop signal received: saving at step (\d+)", first)
    assert m, first[-4000:]
    saved = int(m.group(1))
    assert saved < STEPS and (out / "checkpoints" / "latest").read_text().strip() == f"step_{saved:08d}"
    log = run_ok(torchrun_command(2, cmd), tmp_path / "second.txt", TIMEOUT)
    assert _resumed_step(log) == saved
    assert_same_losses(read_losses(out), read_losses(reference), range(saved + 1, STEPS + 1))


def test_two_node_launch_matches_single_node(ws, reference, tmp_path):
    """Two nodes simulated on localhost with launch/torchrun.sh (static rendezvous at MASTER_ADDR:PORT)."""
    out = tmp_path / "two_node"
    args = _args(ws, out)[2:]  # launch/torchrun.sh adds `-m pretrain`
    port = free_port()
    nodes = []
    for rank in (0, 1):
        env = launch_env(NNODES="2", NODE_RANK=str(rank), MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port),
                         NPROC_PER_NODE="1", PYTHON=sys.executable)
        nodes.append(Proc(["bash", str(REPO / "launch" / "torchrun.sh"), *args], tmp_path / f"node{rank}.txt", env))
    try:
        codes = [n.wait(TIMEOUT) for n in nodes]
        assert codes == [0, 0], "\n".join(n.output()[-4000:] for n in nodes)
    finally:
        for n in nodes:
            n.kill()
    assert_same_losses(read_losses(out), read_losses(reference), range(1, STEPS + 1))
    assert json.loads((out / "checkpoints" / "step_00000030" / "layout.json").read_text())["data_parallel_size"] == 2


@pytest.mark.slow
def test_deepspeed_launcher_matches_torchrun(ws, reference, tmp_path):
    out = tmp_path / "deepspeed_launcher"
    args = _args(ws, out)[2:]  # launch/deepspeed.sh adds the module
    env = launch_env(NUM_GPUS="2", PYTHON=sys.executable)
    run_ok(["bash", str(REPO / "launch" / "deepspeed.sh"), *args], tmp_path / "log.txt", TIMEOUT, env)
    assert_same_losses(read_losses(out), read_losses(reference), range(1, STEPS + 1))
