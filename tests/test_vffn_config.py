"""Every VersatileFFN / model config error is raised up front with a message naming the field and the fix."""
import dataclasses

import pytest

from vffn_megatron import GPTConfig, VersatileFFNConfig, VFFNConfigError


@pytest.mark.parametrize("overrides,ffn,tp,match", [
    ({}, 100, 1, r"ffn_hidden_size \(100\) must be divisible by vffn.num_experts \(8\)"),
    ({"top_k": 0}, 64, 1, r"vffn.top_k must satisfy 1 <= top_k <= num_experts \(8\), got 0"),
    ({"top_k": 9}, 64, 1, r"vffn.top_k must satisfy 1 <= top_k <= num_experts \(8\), got 9"),
    ({"max_depth": 0}, 64, 1, r"vffn.max_depth must be >= 1, got 0"),
    ({"num_experts": 6}, 96, 4, r"vffn.num_experts \(6\) must be divisible by the tensor-parallel size \(4\)"),
    ({"num_experts": 0}, 64, 1, r"vffn.num_experts must be >= 1"),
    ({"max_depth": 2.5}, 64, 1, r"vffn.max_depth must be an integer, got 2.5"),
    ({"tau_end": 0.0}, 64, 1, r"vffn.tau_end must be > 0"),
    ({"tau_start": 0.05}, 64, 1, r"vffn.tau_start \(0.05\) must be >= vffn.tau_end \(0.1\)"),
    ({"tau_decay": 1.5}, 64, 1, r"vffn.tau_decay must be in \(0, 1\]"),
    ({"aux_loss_coeff": -1.0}, 64, 1, r"vffn.aux_loss_coeff must be >= 0"),
    ({"aux_loss_coeff": float("nan")}, 64, 1, r"vffn.aux_loss_coeff must be a finite number"),
    ({"recompute": "yes"}, 64, 1, r"vffn.recompute must be true or false"),
])
def test_vffn_config_errors(overrides, ffn, tp, match):
    cfg = dataclasses.replace(VersatileFFNConfig(), **overrides)
    with pytest.raises(VFFNConfigError, match=match):
        cfg.validate(ffn_hidden_size=ffn, tensor_parallel_size=tp)


def test_valid_defaults():
    VersatileFFNConfig().validate(ffn_hidden_size=2816, tensor_parallel_size=8)


@pytest.mark.parametrize("overrides,tp,match", [
    ({"hidden_size": 66}, 1, r"model.hidden_size \(66\) must be divisible by model.num_attention_heads \(4\)"),
    ({"num_attention_heads": 6, "hidden_size": 48}, 4, r"num_attention_heads \(6\) must be divisible by the tensor"),
    ({"num_query_groups": 3}, 1, r"num_query_groups \(3\) must divide model.num_attention_heads \(4\)"),
    ({"ffn_hidden_size": 170}, 4, r"ffn_hidden_size \(170\) must be divisible by the tensor-parallel size \(4\)"),
    ({"vocab_size": 0}, 1, r"model.vocab_size must be a positive integer"),
    ({"hidden_size": 12, "num_attention_heads": 4}, 1, r"head dimension .* must be even for RoPE"),
])
def test_model_config_errors(overrides, tp, match):
    with pytest.raises(VFFNConfigError, match=match):
        dataclasses.replace(GPTConfig(), **overrides).validate(tp)


@pytest.mark.parametrize("tweak,match", [
    ({"add_bias_linear": True}, "set add_bias_linear=False"),
    ({"gated_linear_unit": False}, "set gated_linear_unit=True"),
    ({"recompute_granularity": "full", "recompute_method": "uniform", "recompute_num_layers": 1},
     "use vffn.recompute=true instead"),
])
def test_transformer_config_errors(megatron_tp1, tweak, match):
    from vffn_megatron import transformer_config
    from vffn_megatron.versatile_ffn import check_transformer_config

    tcfg = transformer_config(GPTConfig())
    for k, v in tweak.items():
        setattr(tcfg, k, v)
    with pytest.raises(VFFNConfigError, match=match):
        check_transformer_config(tcfg, VersatileFFNConfig())
