"""pretrain.engine's pure pieces: the LR schedule, AdamW parameter groups, the generated DeepSpeed config."""
import math

import pytest
import torch

from helpers.workspace import tiny_config


def test_lr_schedule_warmup_cosine_floor():
    from pretrain.engine import lr_lambda

    cfg = tiny_config("schedule.train_steps=110", "schedule.warmup_steps=10", "optimizer.lr=1e-3",
                      "optimizer.min_lr=1e-4")
    fn = lr_lambda(cfg)
    assert [fn(i) for i in range(3)] == pytest.approx([0.1, 0.2, 0.3])  # (step + 1) / warmup
    assert fn(9) == pytest.approx(1.0) and fn(10) == pytest.approx(1.0)  # peak at the end of warmup
    assert fn(60) == pytest.approx(0.1 + 0.9 * 0.5)  # half way down the cosine
    assert fn(110) == pytest.approx(0.1) and fn(10_000) == pytest.approx(0.1)  # the floor min_lr / lr
    values = [fn(i) for i in range(10, 111)]
    assert all(a >= b for a, b in zip(values, values[1:]))  # monotone decay


def test_lr_schedule_decay_steps_and_constant():
    from pretrain.engine import lr_lambda

    fn = lr_lambda(tiny_config("schedule.train_steps=100", "schedule.warmup_steps=0", "schedule.decay_steps=50",
                               "optimizer.lr=1e-3", "optimizer.min_lr=0"))
    assert fn(0) == pytest.approx(1.0) and fn(25) == pytest.approx(0.5) and fn(50) == 0.0 and fn(99) == 0.0
    const = lr_lambda(tiny_config("schedule.decay_style=constant", "schedule.warmup_steps=4"))
    assert const(1) == pytest.approx(0.5) and const(4) == 1.0 and const(10_000) == 1.0


def test_param_groups_no_decay_on_1d():
    from pretrain.engine import param_groups

    model = torch.nn.Sequential(torch.nn.Linear(4, 3), torch.nn.LayerNorm(3))
    model[0].bias.requires_grad_(False)  # frozen parameters are left out
    groups = param_groups(model, 0.1)
    assert groups[0]["weight_decay"] == 0.1 and [p.shape for p in groups[0]["params"]] == [(3, 4)]
    assert groups[1]["weight_decay"] == 0.0 and [p.shape for p in groups[1]["params"]] == [(3,), (3,)]
    only_2d = param_groups(torch.nn.Linear(2, 2, bias=False), 0.1)
    assert len(only_2d) == 1


def test_ds_config_batch_layout_and_explicit_clipping():
    from pretrain.engine import ds_config

    cfg = tiny_config("schedule.micro_batch_size=2", "schedule.global_batch_size=16", "optimizer.grad_clip=0",
                      "precision=bf16", "parallel.zero_stage=2", "parallel.tensor_model_parallel_size=2")
    conf = ds_config(cfg, world_size=4)  # TP 2 -> DP 2 -> accumulation 16 / (2 x 2) = 4
    assert conf["train_micro_batch_size_per_gpu"] == 2 and conf["gradient_accumulation_steps"] == 4
    assert conf["gradient_clipping"] == 0.0  # written even when 0: DeepSpeed's own default is 1.0
    assert conf["zero_optimization"] == {"stage": 2} and conf["bf16"]["enabled"]
    assert conf["data_types"] == {"grad_accum_dtype": "fp32"}
    assert conf["optimizer"]["params"]["torch_adam"] is True
    assert math.isclose(conf["optimizer"]["params"]["lr"], cfg.optimizer.lr)


def test_deepspeed_overrides_merge_into_the_generated_config():
    from pretrain.engine import check_deepspeed_overrides, ds_config

    cfg = tiny_config("parallel.zero_stage=2", "parallel.deepspeed_overrides.zero_optimization.reduce_bucket_size=1000",
                      "parallel.deepspeed_overrides={zero_optimization: {overlap_comm: false}, wall_clock_breakdown: "
                      "true}", "parallel.deepspeed_overrides.zero_optimization.reduce_bucket_size=1000")
    check_deepspeed_overrides(cfg, 2)  # DeepSpeed's own config parser accepts it
    conf = ds_config(cfg, 2)
    assert conf["zero_optimization"] == {"stage": 2, "overlap_comm": False, "reduce_bucket_size": 1000}
    assert conf["wall_clock_breakdown"] is True and conf["gradient_clipping"] == cfg.optimizer.grad_clip
    assert "checkpoint" not in conf and ds_config(cfg, 2, load_universal=True)["checkpoint"] == {"load_universal": True}


@pytest.mark.parametrize("override, message", [
    ("zero_optimization.stage=3", "parallel.deepspeed_overrides.zero_optimization.stage is set by the trainer from "
                                  "the run config: use parallel.zero_stage instead"),
    ("train_batch_size=64", "use schedule.global_batch_size instead"),
    ("gradient_clipping=0.5", "use optimizer.grad_clip instead"),
    ("optimizer={type: Adam}", "use the optimizer section"),
    ("bf16={enabled: true}", "use precision instead"),
])
def test_deepspeed_overrides_refuse_the_trainers_keys(override, message):
    from pretrain.config import ConfigError

    with pytest.raises(ConfigError) as e:
        tiny_config(f"parallel.deepspeed_overrides.{override}")
    assert message in str(e.value)


@pytest.mark.parametrize("override, message", [
    ("zero_optimization.reduce_bucket_siz=1000",
     "parallel.deepspeed_overrides.zero_optimization.reduce_bucket_siz: Extra inputs are not permitted"),
    ("zero_optimization.reduce_bucket_size=lots",
     "parallel.deepspeed_overrides.zero_optimization.reduce_bucket_size: Input should be a valid integer"),
    ("comunication_data_type=fp32", "parallel.deepspeed_overrides.comunication_data_type: DeepSpeed 0.19.8 does not "
                                    "read a config key 'comunication_data_type'"),
    ("communication_data_type=fp77", "parallel.deepspeed_overrides.communication_data_type: ValueError: Invalid "
                                     "communication_data_type"),
])
def test_deepspeed_overrides_unknown_or_invalid_keys_named(override, message):
    from pretrain.config import ConfigError
    from pretrain.engine import check_deepspeed_overrides

    with pytest.raises(ConfigError) as e:
        check_deepspeed_overrides(tiny_config(f"parallel.deepspeed_overrides.{override}"), 2)
    assert message in str(e.value)
