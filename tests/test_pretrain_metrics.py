"""pretrain.metrics: routing statistics per layer, metrics.jsonl on resume."""
import json

import torch


def test_routing_stats_shares_and_mean_loops(megatron_tp1):
    from pretrain.metrics import routing_stats
    from helpers.block import build_block
    from vffn_megatron import VersatileFFNConfig

    blocks = torch.nn.ModuleList()
    for layer in (2, 1):
        b = build_block(VersatileFFNConfig(num_experts=4, top_k=2, max_depth=3), megatron_tp1)
        b.set_layer_number(layer)
        blocks.append(b)
    blocks[0].stats = {"depth_counts": torch.tensor([1, 1, 2]), "expert_counts": torch.tensor([4, 0, 2, 2])}
    blocks[1].stats = {"depth_counts": torch.tensor([4, 0, 0]), "expert_counts": torch.tensor([2, 2, 2, 2])}
    out = routing_stats(blocks, None)
    assert sorted(out) == [1, 2]
    assert out[2]["depth"] == [0.25, 0.25, 0.5] and out[2]["mean_loops"] == 2.25
    assert out[2]["experts"] == [0.5, 0.0, 0.25, 0.25]
    assert out[1]["mean_loops"] == 1.0
    assert routing_stats(blocks, None) == {}  # popped: nothing since the last call


def test_truncate_jsonl_keeps_steps_up_to_the_resumed_one(tmp_path):
    from pretrain.metrics import truncate_jsonl

    path = tmp_path / "metrics.jsonl"
    lines = [{"step": s, "loss": 1.0 / s} for s in range(1, 7)] + [{"step": 5, "valid_loss": 0.5}]
    path.write_text("".join(json.dumps(r) + "\n" for r in lines) + '{"step": 7, "lo')  # killed mid-write
    truncate_jsonl(str(path), 4)
    assert [json.loads(line)["step"] for line in path.read_text().splitlines()] == [1, 2, 3, 4]
    truncate_jsonl(str(path), 0)  # a fresh start in the same output_dir
    assert path.read_text() == ""
    truncate_jsonl(str(tmp_path / "missing.jsonl"), 3)  # nothing to do
