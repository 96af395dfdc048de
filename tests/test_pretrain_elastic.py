"""Resuming at another parallel layout (pretrain/elastic.py): DP=2 -> DP=1, DP=1 -> DP=2, TP=2 -> TP=1 and
ZeRO-1 -> ZeRO-2 continue the uninterrupted run (losses, LR, consumed samples, skipped steps); a conversion that
fails on one rank fails on every rank; parallel.deepspeed_overrides reaches the engine. fp32, 2 CPU processes.

One torchrun launch runs tests/scripts/pretrain_elastic.py (the in-process runs); DP=1 -> DP=2 goes through
``python -m pretrain`` (the CLI path, its one-line announcement)."""
import json
import re

import pytest

from helpers import REPO
from helpers.procs import run_ok, run_workspace_script
from helpers.workspace import read_losses, run_overrides
from vffn_megatron.device import torchrun_command

# The conversion copies every fp32 value and AdamW moment exactly; what is left is the other layout's reduction
# order (DP=2 averages two micro-batch gradients per rank where DP=1 accumulates four; TP=2 splits the matmuls),
# which the uninterrupted runs at the two layouts show too: measured max |loss difference| 2.4e-7 after resume,
# 1.2e-7 between the uninterrupted DP=1 and DP=2 runs. 2e-6 is the fp32 parity bound of test_pretrain_parallel.
LOSS_ATOL = 2e-6
RESUMED = (4, 5, 6)  # the steps trained after resuming step 3


@pytest.fixture(scope="module")
def elastic(tmp_path_factory):
    root = tmp_path_factory.mktemp("elastic")
    res, log = run_workspace_script("pretrain_elastic.py", root, timeout=300)
    return {"root": root, "ws": json.loads((root / "ws.json").read_text()), "res": res, "log": log}


def _worst(resumed: dict, ref: dict) -> float:
    worst = max(abs(resumed[str(s)] - ref[str(s)]) for s in RESUMED)
    print(f"max |loss difference| after resume: {worst:.3e}")
    return worst


def _continues(r: dict, refs: list, change: str) -> None:
    """Resumed at step 3, the losses of steps 4-6 equal the uninterrupted runs', and so do the LR, the consumed
    samples (the data order continued: sample 24 onwards) and the skipped-step count (step 2's NaN)."""
    assert r["change"] == change
    assert r["start"] == 3 and sorted(r["losses"], key=int) == [str(s) for s in RESUMED]
    for ref in refs:
        assert _worst(r["losses"], ref["losses"]) <= LOSS_ATOL
        for s in map(str, RESUMED):
            for k in ("lr", "consumed_samples", "skipped_steps"):
                assert r["metrics"][s][k] == ref["metrics"][s][k], (s, k, r["metrics"][s], ref["metrics"][s])
    assert r["metrics"]["4"]["consumed_samples"] == 32 and r["skipped"] == 1


def test_dp2_to_dp1(elastic):
    res = elastic["res"]
    _continues(res["D"], [res["A"], res["C"]], "a checkpoint written at DP=2 on DP=1")
    assert re.search(r"resuming a checkpoint written at DP=2 on DP=1: converted to a universal checkpoint in "
                     r"\S+/A/checkpoints/step_00000003/universal", elastic["log"])
    # the interrupted conversion's leftovers were replaced by a complete, marked one
    assert ".universal_tmp_killed" not in res["D"]["step_dir"] and "universal" in res["D"]["step_dir"]
    assert (elastic["root"] / "runs" / "A" / "checkpoints" / "step_00000003" / "universal" /
            "vffn_universal.json").is_file()


def test_tp2_to_tp1(elastic):
    res = elastic["res"]
    _continues(res["E"], [res["B"], res["C"]], "a checkpoint written at TP=2 on TP=1")


def test_zero1_to_zero2(elastic):
    res = elastic["res"]
    _continues(res["G"], [res["C"]], "a checkpoint written at ZeRO-1 on ZeRO-2")


def test_dp1_to_dp2_from_the_command_line(elastic, tmp_path):
    """python -m pretrain on 2 processes resumes the DP=1 run's step 3; the same layout's own checkpoints stay
    exact (test_pretrain_run.py)."""
    res, ws = elastic["res"], elastic["ws"]
    step3 = elastic["root"] / "runs" / "C" / "checkpoints" / "step_00000003"
    over = run_overrides(ws, tmp_path / "out", schedule__train_steps=6, on_nonfinite="skip",
                         checkpoint__resume=str(step3), logging__progress="none")
    log = run_ok(torchrun_command(2, ["-m", "pretrain", "--config", str(REPO / "configs" / "tiny.yaml"), *over]),
                 tmp_path / "log.txt", timeout=180)
    assert "resuming a checkpoint written at DP=1 on DP=2: converted to a universal checkpoint in " \
           f"{step3}/universal" in log
    losses = {str(k): v for k, v in read_losses(tmp_path / "out").items()}
    for ref in (res["C"], res["A"]):
        assert _worst(losses, ref["losses"]) <= LOSS_ATOL
    assert (step3 / "universal" / "vffn_universal.json").is_file()  # the cache the earlier G resume wrote, reused


def test_failed_conversion_is_agreed_by_every_rank(elastic):
    errors = elastic["res"]["failed_conversion"]
    assert errors[0] == errors[1] and errors[0] is not None
    assert "resuming a checkpoint written at DP=2, TP=1 on DP=1, TP=2: converting" in errors[0]
    assert "zero_pp_rank_1_mp_rank_00_optim_states.pt" in errors[0] and "tools/export_hf.py" in errors[0]


def test_deepspeed_override_reaches_the_engine(elastic):
    assert elastic["res"]["B"]["reduce_bucket_size"] == 123457


def test_a_changed_whole_shape_is_refused_before_converting(tmp_path):
    """model.vocab_size: null pads the vocabulary by TP: a TP change that changes a whole shape is named, with the
    model.vocab_size to set, before anything is converted."""
    import torch

    from pretrain.elastic import LayoutChangeError, convert

    emb = torch.nn.Parameter(torch.zeros(128, 8))  # this run: TP=1, vocabulary padded to 128
    emb.tensor_model_parallel, emb.partition_dim = True, 0
    model = torch.nn.Module()
    model.register_parameter("embedding", emb)
    torch.save({"param_shapes": [{"embedding": torch.Size([128, 8])}]}, tmp_path / "mp_rank_00_model_states.pt")
    for t in (0, 1):  # written at TP=2: 2 x 128 = 256 rows
        (tmp_path / f"zero_pp_rank_0_mp_rank_{t:02d}_optim_states.pt").write_bytes(b"")
    with pytest.raises(LayoutChangeError, match=r"embedding is \[256, 8\] in the checkpoint and \[128, 8\] in this "
                                                r"run .*set model.vocab_size: 256"):
        convert(str(tmp_path), model, {"data_parallel_size": 1, "tensor_model_parallel_size": 2, "zero_stage": 1}, 1)
    assert len(list(tmp_path.iterdir())) == 3  # nothing written
