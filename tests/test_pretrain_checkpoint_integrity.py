"""Checkpoint integrity (issue 15, cases 2, 4, 5, 12): the manifest written with every save, resume verifying it
(auto falls back with a warning, an explicit path fails with the fix), an empty ``latest`` never read as a fresh
start, saves through a temporary directory (never into an existing step directory) and a failed save (full
disk) removing its partial files on every rank. A DeepSpeed-shaped fake engine (tests/scripts/ckpt_save_ranks.py)
writes the files; the real engine's save/resume is covered bit-exactly by test_pretrain_run.py."""
import importlib.util
import json
import os
import subprocess
import sys

import pytest
import torch.distributed as dist

from helpers import REPO
from helpers.procs import launch_env, torchrun
from helpers.workspace import make_workspace, run_overrides, tiny_config

SCRIPT = REPO / "tests" / "scripts" / "ckpt_save_ranks.py"
_spec = importlib.util.spec_from_file_location("ckpt_save_ranks", SCRIPT)
ranks = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(ranks)


@pytest.fixture(scope="module")
def group():
    """A one-process gloo group (reused when the session already has one)."""
    if dist.is_initialized():
        yield
        return
    from vffn_megatron.device import free_port

    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{free_port()}", rank=0, world_size=1)
    yield
    dist.destroy_process_group()


def _cfg(ckpt, *over):
    return tiny_config(f"checkpoint.dir={ckpt}", *over)


def _save(ckpt, step, cfg=None, **engine):
    from pretrain.checkpoint import Checkpointer

    c = Checkpointer(cfg or _cfg(ckpt), 1)
    return c.save(ranks.FakeEngine(**engine), step, {"step": step})


def _resolve(ckpt, *over):
    from pretrain.checkpoint import resolve_resume

    return resolve_resume(_cfg(ckpt, *over))


def _flip(path, offset=-20):
    data = bytearray(path.read_bytes())
    data[offset] ^= 0x10
    path.write_bytes(bytes(data))


def test_save_writes_a_manifest_through_a_temporary_directory(group, tmp_path):
    from pretrain.checkpoint import verify_step

    ckpt = tmp_path / "ckpt"
    engine = ranks.FakeEngine()
    from pretrain.checkpoint import Checkpointer

    Checkpointer(_cfg(ckpt), 1).save(engine, 3, {"step": 3})
    assert os.path.dirname(engine.seen[0]) == str(ckpt) and os.path.basename(engine.seen[0]).startswith(".tmp_step_")
    d = ckpt / "step_00000003"
    files = json.loads((d / "manifest.json").read_text())["files"]
    assert set(files) == {"mp_rank_00_model_states.pt", "bf16_zero_pp_rank_0_mp_rank_00_optim_states.pt",
                          "config.yaml", "layout.json"}
    assert all(f["size"] == (d / n).stat().st_size and "crc32" in f for n, f in files.items())
    assert (ckpt / "latest").read_text() == "step_00000003" and (ckpt / "zero_to_fp32.py").is_file()
    assert sorted(p.name for p in ckpt.iterdir()) == ["latest", "step_00000003", "zero_to_fp32.py"]  # no tmp left
    assert verify_step(str(d)).verified


@pytest.mark.parametrize("content", [b"", b"  \n", b"\xff\xfe garbage"], ids=["empty", "whitespace", "binary"])
def test_case2_unusable_latest_is_never_a_fresh_start(group, tmp_path, content, capsys):
    ckpt = tmp_path / "ckpt"
    _save(ckpt, 3)
    _save(ckpt, 6)
    (ckpt / "latest").write_bytes(content)
    point = _resolve(ckpt)
    assert point is not None and point.tag == "step_00000006"  # before: None, the run restarted at step 1
    assert "latest" in point.warnings[0] and "WARNING" in capsys.readouterr().err
    from pretrain.config import ConfigError

    with pytest.raises(ConfigError) as e:  # an explicit checkpoint dir with such a latest: say so, with the fix
        _resolve(ckpt, f"checkpoint.resume={ckpt}")
    assert "step_00000003, step_00000006" in str(e.value) and "checkpoint.resume=auto" in str(e.value)


def test_case4_a_save_never_writes_into_the_existing_step_directory(group, tmp_path):
    """Resumed from an older step, the run saves the step ``latest`` names again: the good checkpoint stays intact
    until the new one is complete, and a failed (or killed) save leaves it as it was."""
    from pretrain.checkpoint import CheckpointSaveError, verify_step

    ckpt = tmp_path / "ckpt"
    _save(ckpt, 10, payload=1)
    good = {p.name: p.read_bytes() for p in (ckpt / "step_00000010").iterdir()}
    with pytest.raises(CheckpointSaveError) as e:
        _save(ckpt, 10, payload=2, fail=True)
    assert {p.name: p.read_bytes() for p in (ckpt / "step_00000010").iterdir()} == good  # before: 0-byte files
    assert (ckpt / "latest").read_text() == "step_00000010"
    assert not [p for p in ckpt.iterdir() if p.name.startswith(".tmp")]  # the partial save was removed
    msg = str(e.value)
    assert "No space left on device" in msg and "Free space on that disk" in msg and "checkpoint.dir" in msg
    assert "(the size of step_00000010)" in msg and "still names step_00000010" in msg
    _save(ckpt, 10, payload=3)  # a successful save replaces it whole
    assert verify_step(str(ckpt / "step_00000010")).verified
    assert sorted(p.name for p in ckpt.iterdir()) == ["latest", "step_00000010", "zero_to_fp32.py"]


def test_case4_a_save_killed_midway_leaves_the_checkpoint_alone(group, tmp_path):
    """A kill inside DeepSpeed's write: only the temporary directory holds partial files; the next save clears it."""
    ckpt = tmp_path / "ckpt"
    _save(ckpt, 10)
    before = {p.name: p.read_bytes() for p in (ckpt / "step_00000010").iterdir()}

    class Killed(BaseException):
        pass

    engine = ranks.FakeEngine()
    engine.checkpoint_engine.save = lambda sd, path: (open(path, "wb").close(), (_ for _ in ()).throw(Killed()))
    from pretrain.checkpoint import Checkpointer

    with pytest.raises(Killed):
        Checkpointer(_cfg(ckpt), 1).save(engine, 10, {"step": 10})
    assert {p.name: p.read_bytes() for p in (ckpt / "step_00000010").iterdir()} == before
    assert _resolve(ckpt).tag == "step_00000010" and not _resolve(ckpt).warnings
    _save(ckpt, 11)
    assert not [p for p in ckpt.iterdir() if p.name.startswith(".tmp")]


def test_case5_bit_flip_detected_auto_falls_back_explicit_fails(group, tmp_path):
    from pretrain.config import ConfigError

    ckpt = tmp_path / "ckpt"
    _save(ckpt, 3)
    _save(ckpt, 6)
    bad = ckpt / "step_00000006" / "bf16_zero_pp_rank_0_mp_rank_00_optim_states.pt"
    _flip(bad)
    point = _resolve(ckpt)
    assert point.tag == "step_00000003"  # before: step_00000006 loaded without error
    assert f"{bad} fails its checksum" in point.warnings[0] and "skipped" in point.warnings[0]
    with pytest.raises(ConfigError) as e:
        _resolve(ckpt, f"checkpoint.resume={ckpt / 'step_00000006'}")
    assert str(bad) in str(e.value) and "checkpoint.resume=auto" in str(e.value) and "step_00000003" in str(e.value)
    # checkpoint.verify=size: no checksums (huge checkpoints), sizes still checked
    assert _resolve(ckpt, "checkpoint.verify=size").tag == "step_00000006"
    with open(bad, "ab") as f:
        f.write(b"x")
    assert _resolve(ckpt, "checkpoint.verify=size").tag == "step_00000003"


@pytest.mark.parametrize("damage", ["truncated", "config_yaml", "layout_json", "manifest", "missing"])
def test_case12_damaged_files_fall_back_with_the_file_named(group, tmp_path, damage):
    from pretrain.checkpoint import check_layout, check_same_model

    ckpt = tmp_path / "ckpt"
    _save(ckpt, 3)
    _save(ckpt, 6)
    d = ckpt / "step_00000006"
    target = {"truncated": d / "mp_rank_00_model_states.pt", "config_yaml": d / "config.yaml",
              "layout_json": d / "layout.json", "manifest": d / "manifest.json",
              "missing": d / "mp_rank_00_model_states.pt"}[damage]
    if damage == "missing":
        target.unlink()
    elif damage == "truncated":
        target.write_bytes(target.read_bytes()[:100])
    else:
        target.write_bytes({"config_yaml": b"model: [unclosed\n", "layout_json": b"{\"tensor",
                            "manifest": b"\xff\xfe"}[damage])
    point = _resolve(ckpt)
    assert point.tag == "step_00000003" and str(target) in point.warnings[0]
    cfg = _cfg(ckpt)
    check_layout(point, cfg, 1)
    check_same_model(point, cfg)


def test_case12_old_checkpoint_without_manifest(group, tmp_path):
    """Written before manifests: still resumes (warned as unverified); damaged config / layout files give clear
    errors instead of YAML / JSON tracebacks."""
    from pretrain.checkpoint import ResumePoint, check_layout, check_same_model
    from pretrain.config import ConfigError

    ckpt = tmp_path / "ckpt"
    _save(ckpt, 3)
    d = ckpt / "step_00000003"
    (d / "manifest.json").unlink()
    point = _resolve(ckpt)
    assert point.tag == "step_00000003" and "unverified" in point.warnings[0]
    (d / "config.yaml").write_bytes(b"\xff\xfe\x00")
    (d / "layout.json").write_text("{")
    with pytest.raises(ConfigError, match="no usable checkpoint.*config.yaml is unreadable.*checkpoint.resume=none"):
        _resolve(ckpt)
    p = ResumePoint(str(ckpt), d.name)
    with pytest.raises(ConfigError, match=r"layout.json is unreadable \(JSONDecodeError"):
        check_layout(p, _cfg(ckpt), 1)
    with pytest.raises(ConfigError, match=r"config.yaml is unreadable \(UnicodeDecodeError"):
        check_same_model(p, _cfg(ckpt))
    (d / "mp_rank_00_model_states.pt").write_bytes(b"")
    with pytest.raises(ConfigError, match="0 bytes"):
        _resolve(ckpt)


def test_verify_flag_is_validated():
    from pretrain.config import ConfigError, validate

    with pytest.raises(ConfigError, match="checkpoint.verify"):
        validate(tiny_config("checkpoint.verify=fast"), world_size=1)


def test_export_refuses_a_corrupt_checkpoint(group, tmp_path):
    from vffn_hf.trainer_ckpt import CheckpointError, load_checkpoint

    ckpt = tmp_path / "ckpt"
    _save(ckpt, 3)
    bad = ckpt / "step_00000003" / "mp_rank_00_model_states.pt"
    _flip(bad)
    with pytest.raises(CheckpointError, match=f"{bad} fails its checksum.*--step"):
        load_checkpoint(ckpt)


def test_failed_save_is_agreed_by_every_rank(tmp_path):
    """Rank 1's disk is full: both ranks raise the same error (no hang), the partial directory is gone and
    ``latest`` still names the previous checkpoint."""
    ckpt = tmp_path / "ckpt"
    out = torchrun(str(SCRIPT), 2, str(ckpt), "1", timeout=120)
    lines = [line for line in out.splitlines() if "CheckpointSaveError" in line]
    assert len(lines) == 2 and "rank 1: writing" in lines[0] and "No space left on device" in lines[0], out[-3000:]
    assert lines[0].split(":", 1)[1] == lines[1].split(":", 1)[1]  # the same message on both ranks
    assert (ckpt / "latest").read_text() == "step_00000001"
    assert sorted(p.name for p in ckpt.iterdir()) == ["latest", "step_00000001", "zero_to_fp32.py"]
    files = json.loads((ckpt / "step_00000001" / "manifest.json").read_text())["files"]
    assert {"bf16_zero_pp_rank_0_mp_rank_00_optim_states.pt", "bf16_zero_pp_rank_1_mp_rank_00_optim_states.pt"} <= set(files)


def test_cli_refuses_a_corrupt_explicit_checkpoint_before_starting(group, tmp_path):
    """python -m pretrain with checkpoint.resume=<a damaged step>: exit 2, the file named, no traceback, before any
    process group or model (case 12: before, a raw traceback after the start-up)."""
    ws = make_workspace(tmp_path / "ws")
    ckpt = tmp_path / "out" / "checkpoints"
    _save(ckpt, 3)
    bad = ckpt / "step_00000003" / "mp_rank_00_model_states.pt"
    _flip(bad)
    over = run_overrides(ws, tmp_path / "out", checkpoint__resume=str(ckpt / "step_00000003"))
    p = subprocess.run([sys.executable, "-m", "pretrain", "--config", str(REPO / "configs" / "tiny.yaml"), *over],
                       cwd=REPO, env=launch_env(), capture_output=True, text=True, timeout=180)
    assert p.returncode == 2, p.stdout + p.stderr
    assert f"{bad} fails its checksum" in p.stderr and "Traceback" not in p.stderr
    assert not (tmp_path / "out" / "metrics.jsonl").exists()
