"""checkpoint.init_from through the trainer: a dense tiny run, then k-loop (1 loop), dense and paper-MoE runs
initialised from it (tests/scripts/init_from_runs.py, one process), and the checks that refuse a wrong source
before anything starts (``--check``, in process)."""
import json
import math
import sys

import pytest
import torch

from helpers import REPO
from helpers.procs import launch_env, run_ok
from helpers.workspace import make_workspace, run_overrides

TIMEOUT = 400


def _records(out):
    return {r["step"]: r for r in map(json.loads, (out / "metrics.jsonl").read_text().splitlines()) if "loss" in r}


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("init_from")
    ws = make_workspace(root / "ws")
    (root / "ws.json").write_text(json.dumps(ws))
    env = {k: v for k, v in launch_env().items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR",
                                                               "MASTER_PORT")}
    run_ok([sys.executable, str(REPO / "tests" / "scripts" / "init_from_runs.py"), str(root / "ws.json"), str(root)],
           root / "script.log", TIMEOUT, env=env)
    codes = json.loads((root / "codes.json").read_text())
    logs = {name: (root / f"{name}.log").read_text() for name in codes}
    assert all(c == 0 for n, c in codes.items() if n != "bad_source"), \
        {n: logs[n][-3000:] for n, c in codes.items() if c}
    return {"root": root, "ws": ws, "logs": logs, "codes": codes}


def test_upcycled_runs_start_from_the_dense_weights_with_a_fresh_optimizer(runs):
    root, logs = runs["root"], runs["logs"]
    step_dir = root / "dense" / "checkpoints" / "step_00000002"
    assert f"initialised from {step_dir} (step 2 of a dense run): upcycled dense -> kloop" in logs["kloop1"]
    assert f"initialised from {step_dir} (step 2 of a dense run): weights copied (dense -> dense)" in logs["dense_cont"]
    assert (f"initialised from {step_dir} (step 2 of a dense run): upcycled dense -> moe (experts: slices; fresh "
            f"router)") in logs["moe"]
    scratch, kloop, cont, moe = (_records(root / n) for n in ("dense", "kloop1", "dense_cont", "moe"))
    # the same first batch (consumed samples start at 0): k-loop with one loop computes the dense model's loss
    print(f"[init_from] first loss: from scratch {scratch[1]['loss']:.6f}, dense continued {cont[1]['loss']:.6f}, "
          f"k-loop(1) {kloop[1]['loss']:.6f}, MoE (slices) {moe[1]['loss']:.6f}")
    assert abs(kloop[1]["loss"] - cont[1]["loss"]) < 1e-5, (kloop[1], cont[1])
    assert cont[1]["loss"] < scratch[1]["loss"] - 0.05  # ... of the trained dense weights, not a fresh init
    for recs in (kloop, cont, moe):  # fresh LR schedule, step and sample count: those of the run from scratch
        assert sorted(recs)[:2] == [1, 2] and all(math.isfinite(recs[s]["loss"]) for s in (1, 2))
        assert [recs[s]["lr"] for s in (1, 2)] == [scratch[s]["lr"] for s in (1, 2)]
        assert recs[1]["consumed_samples"] == scratch[1]["consumed_samples"] == 4


def test_paper_moe_checkpoint_has_the_table_s_tensors(runs):
    from vffn_hf.convert import megatron_shapes
    from vffn_hf.trainer_ckpt import ffn_block, load_checkpoint

    ck = load_checkpoint(runs["root"] / "moe" / "checkpoints", archs=("moe",))
    block = ffn_block(ck.config)
    assert (block.num_experts, block.top_k, block.shared_expert, block.expert_hidden(128)) == (8, 2, True, 16)
    assert {k: tuple(v.shape) for k, v in ck.state_dict.items()} == megatron_shapes(ck.model, block)
    state = torch.load(runs["root"] / "moe" / "checkpoints" / "step_00000002" / "mp_rank_00_model_states.pt",
                       map_location="cpu", weights_only=False)
    assert "upcycled dense -> moe" in state["initialised_from"]


def test_resume_wins_over_init_from(runs):
    log = runs["logs"]["dense_cont_resume"]
    assert "checkpoint.init_from=" in log and "ignored: resuming from this run's own checkpoint" in log
    assert "resumed from" in log and "initialised from" not in log
    assert sorted(_records(runs["root"] / "dense_cont")) == [1, 2, 3]


@pytest.mark.parametrize("overrides, expected", [
    (["model.arch=moe", "checkpoint.init_from={root}/nope"], "checkpoint.init_from: checkpoint {root}/nope does not exist"),
    (["model.arch=kloop", "model.num_layers=3", "model.hidden_size=32", "checkpoint.init_from={root}/dense"],
     "add these overrides (and check the tokenizer is the model's): model.num_layers=2 model.hidden_size=64"),
    (["model.arch=moe", "checkpoint.init_from={root}/kloop1"],
     "is a kloop model; a run of model.arch=moe can start from a dense checkpoint (upcycled) or a moe checkpoint"),
    (["model.arch=moe", "moe.expert_ffn_hidden_size=32", "checkpoint.init_from={root}/dense"],
     "moe.upcycle_experts=slices makes expert e the dense FFN's hidden slice e"),
    (["model.arch=moe", "moe.num_experts=4", "checkpoint.init_from={root}/moe"],
     "add these overrides: moe.num_experts=8"),
])
def test_wrong_sources_are_refused_before_start(runs, tmp_path, overrides, expected):
    """The checks ``python -m pretrain`` runs before any process group (also under --check: exit 2, see the
    script's bad_source run); called directly here, since main() tears down this process's group on exit 2."""
    from pretrain.config import ConfigError, load_config
    from pretrain.init_from import prepare_init_from

    root = runs["root"]
    over = run_overrides(runs["ws"], tmp_path / "x") + [o.format(root=root) for o in overrides]
    cfg = load_config(str(REPO / "configs" / "tiny.yaml"), over)
    with pytest.raises(ConfigError) as e:
        prepare_init_from(cfg, 256, resuming=False, load=False)
    assert expected.format(root=root) in str(e.value), str(e.value)


def test_check_exits_2_naming_the_source(runs):
    assert runs["codes"]["bad_source"] == 2
    assert "is a kloop model; a run of model.arch=moe can start from a dense checkpoint" in runs["logs"]["bad_source"]
