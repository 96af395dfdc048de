"""Acceptance 6: bad configs fail before training (before any process group) with a clear message.

In-process: pretrain.config / pretrain.checks are pure Python + file reads. One CLI run checks the exit
code and that nothing was started.
"""
import subprocess
import sys

import pytest

from helpers import REPO
from helpers.procs import launch_env
from helpers.workspace import make_dataset, make_tokenizer, run_overrides

TINY = str(REPO / "configs" / "tiny.yaml")


@pytest.fixture(scope="module")
def ws(tmp_path_factory):
    root = tmp_path_factory.mktemp("cfg_ws")
    tok = make_tokenizer(root / "tokenizer", 200)
    good = make_dataset(root / "good_text_document", 200, docs=20)
    bad = make_dataset(root / "bad_text_document", 200, docs=20, max_id=700)  # ids up to 700 > vocab 200
    return {"tokenizer": str(tok), "datasets": [str(good)], "bad": str(bad), "root": root}


def load(ws, *overrides, path=TINY):
    from pretrain.config import load_config

    return load_config(path, run_overrides(ws, ws["root"] / "out") + list(overrides))


def error_of(fn, *args, **kw) -> str:
    from pretrain.config import ConfigError

    with pytest.raises(ConfigError) as e:
        fn(*args, **kw)
    return str(e.value)


def test_valid_config_and_overrides(ws):
    cfg = load(ws, "vffn.max_depth=4", "optimizer.lr=1e-3", "model.arch=dense", "parallel.zero_stage=2")
    assert cfg.vffn.max_depth == 4 and cfg.optimizer.lr == 1e-3 and cfg.parallel.zero_stage == 2
    assert cfg.vffn_or_none is None and cfg.to_dict()["vffn"] is None  # dense: the vffn section is ignored
    from pretrain.checks import preflight

    tok, vocab = preflight(cfg)
    assert vocab == 256 and tok.vocab_size == 200


def test_resolved_config_round_trips(ws, tmp_path):
    from pretrain.config import load_config

    cfg = load(ws, "vffn.top_k=1")
    saved = tmp_path / "config.yaml"
    saved.write_text(cfg.to_yaml())
    assert load_config(str(saved)) == cfg


def test_base_preset_chain(ws, tmp_path):
    child = tmp_path / "child.yaml"
    child.write_text(f"base: {TINY}\nmodel: {{num_layers: 3}}\n")
    cfg = load(ws, path=str(child))
    assert cfg.model.num_layers == 3 and cfg.model.hidden_size == 64  # the rest comes from tiny.yaml


@pytest.mark.parametrize("override, expected", [
    ("model.hiden_size=32", "unknown config key 'model.hiden_size'; did you mean 'model.hidden_size'?"),
    ("vffn.max_dept=2", "did you mean 'vffn.max_depth'?"),
    ("optimiser.lr=1", "unknown config key 'optimiser'; did you mean 'optimizer'?"),
])
def test_unknown_key(ws, override, expected):
    assert expected in error_of(load, ws, override)


@pytest.mark.parametrize("name, world", [("tiny", 2), ("tiny_dense", 2), ("paper_354m", 8), ("paper_720m", 8),
                                         ("paper_1b2", 8), ("large_multinode", 32)])
def test_presets_are_valid(name, world):
    from pretrain.config import load_config, validate
    from pretrain.engine import ds_config

    cfg = load_config(str(REPO / "configs" / f"{name}.yaml"))
    validate(cfg, world_size=world)
    ds = ds_config(cfg, world)
    assert ds["gradient_clipping"] == cfg.optimizer.grad_clip and ds["optimizer"]["params"]["torch_adam"] is True
    # the paper presets' shapes, recipe and parameter counts: tests/test_paper_presets.py


def test_unknown_key_in_yaml_file(ws, tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text(f"base: {TINY}\nschedule: {{train_step: 5}}\n")
    msg = error_of(load, ws, path=str(bad))
    assert "unknown config key 'schedule.train_step'; did you mean 'schedule.train_steps'?" in msg


@pytest.mark.parametrize("override, expected", [
    ("model.num_layers=two", "model.num_layers must be integer, got 'two'"),
    ("schedule.train_steps=1.5", "schedule.train_steps must be integer, got 1.5"),
    ("vffn.recompute=3", "vffn.recompute must be true/false, got 3"),
    ("optimizer.lr=fast", "optimizer.lr must be number, got 'fast'"),
    ("checkpoint.keep_last=[1]", "checkpoint.keep_last must be integer"),
])
def test_wrong_type(ws, override, expected):
    assert expected in error_of(load, ws, override)


def test_bad_choice(ws):
    assert "precision must be one of bf16, fp32; got 'fp16'" in error_of(load, ws, "precision=fp16")


def test_tp_must_divide_heads(ws):
    msg = error_of(load, ws, "parallel.tensor_model_parallel_size=3")
    assert "num_attention_heads (4) must be divisible by the tensor-parallel size (3)" in msg


def test_tp_must_divide_sub_experts(ws):
    msg = error_of(load, ws, "parallel.tensor_model_parallel_size=2", "vffn.num_experts=3")
    assert "vffn.num_experts (3) must be divisible by the tensor-parallel size (2)" in msg


def test_dense_model_does_not_need_vffn_divisibility(ws):
    load(ws, "parallel.tensor_model_parallel_size=2", "vffn.num_experts=3", "model.arch=dense")


def test_world_size_vs_batch_and_tp(ws):
    from pretrain.config import validate

    cfg = load(ws, "schedule.global_batch_size=6", "schedule.micro_batch_size=2")
    msg = error_of(validate, cfg, world_size=4)
    assert "global_batch_size (6) must be a multiple of schedule.micro_batch_size (2) x data-parallel size (4" in msg
    cfg = load(ws, "parallel.tensor_model_parallel_size=2")
    assert "must be a multiple of parallel.tensor_model_parallel_size (2)" in error_of(validate, cfg, world_size=3)


def test_missing_data_path(ws):
    from pretrain.checks import preflight

    cfg = load(ws, "data.datasets=[{path: /nonexistent/corpus_text_document}]")
    msg = error_of(preflight, cfg)
    assert "/nonexistent/corpus_text_document.bin" in msg and "not found" in msg and "preprocess_data.py" in msg


def test_missing_tokenizer(ws):
    from pretrain.checks import preflight

    msg = error_of(preflight, load(ws, "data.tokenizer=/nonexistent/tok"))
    assert "data.tokenizer: /nonexistent/tok does not exist" in msg and "train_tokenizer.py" in msg


def test_tokenizer_vocab_smaller_than_data_ids(ws):
    from pretrain.checks import preflight

    cfg = load(ws, f"data.datasets=[{{path: {ws['bad']}}}]")
    msg = error_of(preflight, cfg)
    assert "contains token id 700" in msg and "has only 200 tokens" in msg and "--tokenizer-model" in msg


def test_model_vocab_smaller_than_tokenizer(ws):
    from pretrain.checks import preflight

    msg = error_of(preflight, load(ws, "model.vocab_size=128"))
    assert "model.vocab_size (128) is smaller than the tokenizer's vocabulary (200" in msg


def test_resume_path_must_exist(ws):
    from pretrain.checkpoint import resolve_resume

    msg = error_of(resolve_resume, load(ws, "checkpoint.resume=/nonexistent/ckpt"))
    assert "checkpoint.resume: /nonexistent/ckpt is neither" in msg


def test_cli_fails_before_any_process_group(ws, tmp_path):
    out = tmp_path / "never"
    over = run_overrides(ws, out) + ["data.datasets=[{path: /nonexistent/x_text_document}]"]
    p = subprocess.run([sys.executable, "-m", "pretrain", "--config", TINY, *over], cwd=REPO, env=launch_env(),
                       capture_output=True, text=True, timeout=120)
    assert p.returncode == 2, p.stdout + p.stderr
    assert "config error: data.datasets[0].path: /nonexistent/x_text_document.bin" in p.stderr
    assert "Traceback" not in p.stderr
    assert not out.exists()  # nothing was started or written


def test_resume_into_a_different_model_is_refused(ws, tmp_path):
    from pretrain.checkpoint import ResumePoint, check_same_model

    saved = load(ws)
    step = tmp_path / "ckpt" / "step_00000010"
    step.mkdir(parents=True)
    (step / "config.yaml").write_text(saved.to_yaml())
    point = ResumePoint(str(tmp_path / "ckpt"), "step_00000010")
    check_same_model(point, load(ws, "vffn.tau_start=2.0", "optimizer.lr=1e-2"))  # hyper-parameters may change
    # the sections of other archs are unused: their defaults may change between versions (the MoE's did)
    check_same_model(point, load(ws, "moe.num_experts=4", "moe.shared_expert=false", "kloop.loops=5"))
    msg = error_of(check_same_model, point, load(ws, "model.hidden_size=128", "vffn.max_depth=2"))
    assert "model.hidden_size 64 -> 128" in msg and "vffn.max_depth 3 -> 2" in msg and "checkpoint.resume=none" in msg


# ------------------------------------------------------------------ baselines: model.arch kloop | moe
def test_baseline_archs_load(ws):
    cfg = load(ws, "model.arch=kloop", "kloop.loops=3")
    assert cfg.kloop_or_none.loops == 3 and cfg.vffn_or_none is None and cfg.moe_or_none is None
    cfg = load(ws, "model.arch=moe", "moe.num_experts=8", "moe.top_k=1")
    assert (cfg.moe_or_none.num_experts, cfg.moe_or_none.top_k) == (8, 1) and cfg.kloop_or_none is None
    paper = load(ws, "model.arch=moe").moe  # the paper's MoE by default
    assert (paper.num_experts, paper.top_k, paper.aux_loss_coeff, paper.shared_expert, paper.expert_ffn_hidden_size,
            paper.upcycle_experts) == (8, 2, 1e-5, True, None, "slices")
    switch = load(ws, "model.arch=moe", "moe.shared_expert=false", "moe.expert_ffn_hidden_size=128").moe
    assert (switch.shared_expert, switch.expert_hidden(128)) == (False, 128)
    assert cfg.to_dict()["vffn"] is None  # only the chosen FFN's section describes the model


def test_compare_preset_is_valid():
    from pretrain.config import load_config, validate

    for arch in ("dense", "kloop", "moe", "vffn"):
        validate(load_config(str(REPO / "configs" / "compare_tiny.yaml"), [f"model.arch={arch}"]), world_size=1)


@pytest.mark.parametrize("overrides, expected", [
    (["model.arch=mo"], "model.arch must be one of vffn, dense, kloop, moe; got 'mo'; did you mean 'moe'?"),
    (["model.arch=kloop", "kloop.loops=0"], "kloop.loops must be an integer >= 1, got 0"),
    (["model.arch=kloop", "kloop=null"], "model.arch is 'kloop' but the kloop section is null"),
    (["model.arch=moe", "moe.top_k=9"], "moe.top_k must satisfy 1 <= top_k <= num_experts (8), got 9"),
    (["model.arch=moe", "moe.num_experts=3"], "ffn_hidden_size (128) must be divisible by moe.num_experts (3)"),
    (["model.arch=moe", "moe.expert_ffn_hidden_size=0"], "moe.expert_ffn_hidden_size must be a positive integer"),
    (["model.arch=moe", "moe.expert_ffn_hidden_size=33", "parallel.tensor_model_parallel_size=2"],
     "the routed experts' hidden size (33) must be divisible by the tensor-parallel size (2)"),
    (["model.arch=moe", "parallel.tensor_model_parallel_size=2"],
     "model.arch=moe trains only at parallel.tensor_model_parallel_size=1 (got 2)"),
    (["model.arch=moe", "moe.upcycle_experts=copy"], "moe.upcycle_experts must be one of slices, fresh; got 'copy'"),
    (["checkpoint.init_from=' '"], "checkpoint.init_from must be a checkpoint path or null"),
    (["model.arch=moe", "moe.num_experts=0"], "moe.num_experts must be an integer >= 1, got 0"),
    (["model.arch=moe", "moe.aux_loss_coeff=-1"], "moe.aux_loss_coeff must be >= 0"),
    (["model.arch=moe", "moe=null"], "model.arch is 'moe' but the moe section is null"),
    (["kloop.lopps=2"], "unknown config key 'kloop.lopps'; did you mean 'kloop.loops'?"),
    (["moe.topk=2"], "unknown config key 'moe.topk'; did you mean 'moe.top_k'?"),
    (["kloop.loops=two"], "kloop.loops must be integer, got 'two'"),
])
def test_baseline_arch_errors(ws, overrides, expected):
    assert expected in error_of(load, ws, *overrides)


def test_baseline_sections_ignored_by_other_archs(ws):
    load(ws, "kloop.loops=0", "moe.top_k=9")  # arch vffn: the baselines' sections are not validated


# ------------------------------------------------------------------ data.split that rounds a split to 0 documents
def test_split_that_rounds_to_zero_documents_is_refused(ws):
    """megatron-core hangs forever (100% CPU) building a split of 0 documents: refuse it with the counts."""
    from pretrain.checks import preflight

    # 20 documents: 1% of them rounds to 0, even with eval_interval 0 (megatron still builds the split)
    msg = error_of(preflight, load(ws, "data.split=99,1,0"))
    assert "data.split '99,1,0' gives the validation split 1.00% of the 20 documents of data.datasets[0]" in msg
    assert "rounds to 0 documents" in msg and "data.split=92.5,7.5,0" in msg
    msg = error_of(preflight, load(ws, "data.split=99,0,1"))
    assert "the test split" in msg
    preflight(load(ws, "data.split=92.5,7.5,0"))  # the suggested split is accepted
    preflight(load(ws, "data.split=100,0,0"))  # a zero share builds nothing


def test_cli_check_refuses_an_empty_validation_split(ws):
    over = run_overrides(ws, ws["root"] / "out") + ["data.split=99.9,0.1,0", "schedule.eval_interval=5"]
    p = subprocess.run([sys.executable, "-m", "pretrain", "--config", TINY, *over, "--check"], cwd=REPO,
                       env=launch_env(), capture_output=True, text=True, timeout=120)
    assert p.returncode == 2 and "config OK" not in p.stdout, p.stdout + p.stderr
    assert "validation split" in p.stderr and "rounds to 0 documents" in p.stderr


# ------------------------------------------------------------------ data.datasets spellings, CLI argument order
@pytest.mark.parametrize("value, expected", [
    ("/d/a_text_document", [("/d/a_text_document", 1.0)]),
    ("[0.7, /d/a_text_document, 0.3, /d/b_text_document]", [("/d/a_text_document", 0.7), ("/d/b_text_document", 0.3)]),
    ("[/d/a_text_document, /d/b_text_document]", [("/d/a_text_document", 1.0), ("/d/b_text_document", 1.0)]),
    ("[{path: /d/a_text_document, weight: 2}]", [("/d/a_text_document", 2.0)]),
])
def test_datasets_accept_bare_path_and_megatron_list(ws, value, expected):
    cfg = load(ws, f"data.datasets={value}")
    assert [(e.path, e.weight) for e in cfg.data.datasets] == expected


def test_datasets_bad_megatron_list(ws):
    msg = error_of(load, ws, "data.datasets=[0.7, /d/a_text_document, 0.3]")
    assert "Megatron-style list alternating weight and path" in msg


def test_overrides_on_both_sides_of_a_flag(ws):
    from pretrain.__main__ import _parser

    args = _parser().parse_intermixed_args(["--config", TINY, "a.x=1", "--check", "b.y=2"])
    assert args.check and args.overrides == ["a.x=1", "b.y=2"]
