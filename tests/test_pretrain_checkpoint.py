"""pretrain.checkpoint's pure pieces: the step-directory names, the layout check, when a step is saved."""
import json

import pytest

from helpers.workspace import tiny_config


def test_tags_round_trip():
    from pretrain.checkpoint import step_of, tag_for

    assert tag_for(42) == "step_00000042" and step_of("step_00000042") == 42
    assert step_of("latest") is None and step_of("step_12x") is None


def test_check_layout_refuses_another_parallel_layout(tmp_path):
    from pretrain.checkpoint import ResumePoint, check_layout, layout
    from pretrain.config import ConfigError

    cfg = tiny_config("parallel.zero_stage=2")
    step = tmp_path / "step_00000010"
    step.mkdir()
    point = ResumePoint(str(tmp_path), step.name)
    check_layout(point, cfg, 2)  # no layout.json (an older checkpoint): nothing to compare
    (step / "layout.json").write_text(json.dumps(layout(cfg, 2)))
    check_layout(point, cfg, 2)
    with pytest.raises(ConfigError) as e:
        check_layout(point, cfg, 4)
    assert "data_parallel_size 2 -> 4" in str(e.value) and "ds_to_universal" in str(e.value)
    with pytest.raises(ConfigError) as e:
        check_layout(point, tiny_config("parallel.zero_stage=3"), 2)
    assert "zero_stage 2 -> 3" in str(e.value)


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
