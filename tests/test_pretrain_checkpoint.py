"""pretrain.checkpoint's pure pieces: the step-directory names, the layout check, when a step is saved."""
import json

import pytest

from helpers.workspace import tiny_config


def test_tags_round_trip():
    from pretrain.checkpoint import step_of, tag_for

    assert tag_for(42) == "step_00000042" and step_of("step_00000042") == 42
    assert step_of("latest") is None and step_of("step_12x") is None


def test_check_layout_announces_a_layout_change_or_refuses_it(tmp_path):
    """DP / TP / ZeRO 1 <-> 2 changes are converted (pretrain/elastic.py: announced here, before any process group);
    ZeRO 0 and 3 are refused naming the saved layout and the way out."""
    from pretrain.checkpoint import ResumePoint, check_layout, layout
    from pretrain.config import ConfigError

    cfg = tiny_config("parallel.zero_stage=2")
    step = tmp_path / "step_00000010"
    step.mkdir()
    point = ResumePoint(str(tmp_path), step.name)
    assert check_layout(point, cfg, 2) is None  # no layout.json (an older checkpoint): nothing to compare
    (step / "layout.json").write_text(json.dumps(layout(cfg, 2)))
    assert check_layout(point, cfg, 2) is None  # the same layout: the exact, ordinary load
    assert check_layout(point, cfg, 4) == "a checkpoint written at DP=2 on DP=4"
    assert check_layout(point, tiny_config("parallel.zero_stage=1", "parallel.tensor_model_parallel_size=2"), 4) == \
        "a checkpoint written at TP=1, ZeRO-2 on TP=2, ZeRO-1"
    for stage, why in ((3, "loads a universal checkpoint into ZeRO-3 with the optimizer state off"),
                       (0, "ZeRO stage 0 writes none")):
        with pytest.raises(ConfigError) as e:
            check_layout(point, tiny_config(f"parallel.zero_stage={stage}"), 1)
        msg = str(e.value)
        assert f"written at DP=2, TP=1, ZeRO-2; this run is DP=1, TP=1, ZeRO-{stage}" in msg and why in msg
        assert "parallel.zero_stage=2" in msg and "2 processes" in msg and "tools/export_hf.py" in msg


@pytest.mark.parametrize("interval, save_at_end, expected", [
    (3, True, [3, 6, 9, 10]), (0, True, [10]), (5, False, [5, 10]), (0, False, []),
])
def test_should_save_interval_end_and_never_twice(monkeypatch, interval, save_at_end, expected):
    from pretrain import checkpoint

    monkeypatch.setattr(checkpoint.dist, "get_rank", lambda: 0)
    cfg = tiny_config(f"checkpoint.interval={interval}", f"checkpoint.save_at_end={str(save_at_end).lower()}")
    c = checkpoint.Checkpointer(cfg, 1)
    saved = []
    for step in range(1, 11):
        if c.should_save(step, last_step=step == 10):
            saved.append(step)
            c.last_saved = step
    assert saved == expected
    c.last_saved = 7
    assert c.should_save(8, forced=True) and not c.should_save(7, forced=True)  # a stop saves once
